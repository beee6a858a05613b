-- The audit trail (PostgreSQL dialect of sqlite/0003_audit_log.sql): who
-- stored, deleted, rolled back or ran which script version, when, and how
-- it ended. `id` is generated (SQLite's INTEGER PRIMARY KEY does the same),
-- so inserts never name it. `at` is RFC 3339 UTC text.

CREATE TABLE audit_log (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              TEXT NOT NULL,
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL,
    script          TEXT,
    version         BIGINT,
    artifact_sha256 TEXT,
    outcome         TEXT NOT NULL,
    request_id      TEXT
);

CREATE INDEX audit_log_script_at ON audit_log (script, at);
CREATE INDEX audit_log_at ON audit_log (at);
