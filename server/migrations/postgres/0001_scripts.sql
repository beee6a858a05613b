-- The script registry (PostgreSQL dialect of sqlite/0001_scripts.sql):
-- one row per stored script, one per version of it. Integers are BIGINT and
-- the artifact BYTEA, so the server reads the same i64 and bytes from both
-- backends. Timestamps are RFC 3339 text written by the server, as in SQLite.

CREATE TABLE scripts (
    name            TEXT PRIMARY KEY,
    current_version BIGINT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE script_versions (
    name            TEXT NOT NULL,
    version         BIGINT NOT NULL,
    source          TEXT NOT NULL,
    source_sha256   TEXT NOT NULL,
    artifact        BYTEA NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
