-- The script registry: one row per stored script, one per version of it.
-- Plain SQL that PostgreSQL also accepts (with BLOB spelled BYTEA in its
-- own migration directory). Timestamps are RFC 3339 text written by the
-- server, so both backends store the same thing.

CREATE TABLE scripts (
    name            TEXT PRIMARY KEY,
    current_version INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE script_versions (
    name            TEXT NOT NULL,
    version         INTEGER NOT NULL,
    source          TEXT NOT NULL,
    source_sha256   TEXT NOT NULL,
    artifact        BLOB NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
