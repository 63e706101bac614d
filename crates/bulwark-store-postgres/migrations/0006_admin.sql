-- The admin console: when the session's user last proved their password. Sensitive acts ask
-- for it again when that is too long ago. Empty means "at login" (the session's creation).

ALTER TABLE sessions ADD COLUMN password_checked_at BIGINT;
