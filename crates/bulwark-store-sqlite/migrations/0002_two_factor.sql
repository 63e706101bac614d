-- Two-factor authentication: TOTP factors (secret encrypted by the server, never in clear),
-- recovery codes and e-mailed codes (keyed hashes), trusted devices (token hashes),
-- session stages, device accounts and the enforcement grace clock.

ALTER TABLE sessions ADD COLUMN stage TEXT NOT NULL DEFAULT 'full';

ALTER TABLE users ADD COLUMN device_account BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN allowed_networks TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN grace_started_at INTEGER;

CREATE TABLE totp_factors (
    user_id          INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret_sealed    TEXT NOT NULL,
    key_id           TEXT NOT NULL,
    algorithm        TEXT NOT NULL,
    digits           INTEGER NOT NULL,
    period           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    confirmed_at     INTEGER,
    last_used_step   INTEGER
);

CREATE TABLE recovery_codes (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    used_at    INTEGER,
    UNIQUE (user_id, code_hash)
);

CREATE TABLE email_codes (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX email_codes_user ON email_codes (user_id, created_at);

CREATE TABLE trusted_devices (
    id           INTEGER PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    last_ip      TEXT,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX trusted_devices_user ON trusted_devices (user_id);
