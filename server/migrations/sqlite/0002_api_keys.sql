-- API keys of `avap serve`. Only the SHA-256 of a key is stored (hex); the
-- key itself is shown once, when `avap apikey create` makes it. `scopes` is
-- a comma-separated list (`admin`, `execute`). A revoked key keeps its row
-- (for the audit trail) with `revoked_at` set. Timestamps are RFC 3339 text.

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT,
    key_hash   TEXT NOT NULL UNIQUE,
    scopes     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
