-- What an administrative row is about, where it is not a script: the API
-- key id of `apikey_create`/`apikey_revoke`, the backup's SHA-256 of
-- `restore`. Null on script rows (store, delete, rollback, run).

ALTER TABLE audit_log ADD COLUMN subject TEXT;
