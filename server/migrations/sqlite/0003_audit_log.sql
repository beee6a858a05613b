-- The audit trail: who (API key id, or 'anonymous') stored, deleted, rolled
-- back or ran which script version, when, and how it ended. Registry writes
-- add their row in the same transaction as the change; runs are written in
-- batches by a background task (a full queue drops rows rather than slowing
-- a run, counted in avap_audit_dropped_total). `at` is RFC 3339 UTC text.

CREATE TABLE audit_log (
    id              INTEGER PRIMARY KEY,
    at              TEXT NOT NULL,
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL,
    script          TEXT,
    version         INTEGER,
    artifact_sha256 TEXT,
    outcome         TEXT NOT NULL,
    request_id      TEXT
);

CREATE INDEX audit_log_script_at ON audit_log (script, at);
CREATE INDEX audit_log_at ON audit_log (at);
