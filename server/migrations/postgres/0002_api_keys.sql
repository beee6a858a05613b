-- API keys of `avap serve` (PostgreSQL dialect of sqlite/0002_api_keys.sql).
-- Only the SHA-256 of a key is stored (hex); a revoked key keeps its row
-- with `revoked_at` set. Timestamps are RFC 3339 text.

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT,
    key_hash   TEXT NOT NULL UNIQUE,
    scopes     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
