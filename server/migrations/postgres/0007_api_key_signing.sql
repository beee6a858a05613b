-- Request signing (PostgreSQL dialect of sqlite/0007_api_key_signing.sql):
-- the sealed signing secret of a key created with `avap apikey create
-- --signed` (`v1.<secrets key id>.<base64 nonce + ciphertext>`); NULL for
-- a key without request signing.

ALTER TABLE api_keys ADD COLUMN signing_secret TEXT;
