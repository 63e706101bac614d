-- API keys: only the SHA-256 digest of each key is stored (the key is shown once), with a
-- short display prefix for listings. Revoked keys stay, marked, for the owner's history.

CREATE TABLE api_keys (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    digest         TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER,
    last_used_at   INTEGER,
    revoked_at     INTEGER
);
-- Every check is one lookup by digest.
CREATE UNIQUE INDEX api_keys_digest ON api_keys (digest);
CREATE INDEX api_keys_user ON api_keys (user_id, created_at);
-- A name picks one key of its owner (the CLI revokes by name), until that key is revoked.
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (user_id, name) WHERE revoked_at IS NULL;
