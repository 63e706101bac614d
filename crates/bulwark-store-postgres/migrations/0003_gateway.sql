-- Gateway: whether a session passed a second factor (access rules may ask for one).

ALTER TABLE sessions ADD COLUMN two_factor BOOLEAN NOT NULL DEFAULT FALSE;

-- Sessions from before this column: a user with a confirmed authenticator passed it to log in.
UPDATE sessions SET two_factor = TRUE
 WHERE stage = 'full'
   AND user_id IN (SELECT user_id FROM totp_factors WHERE confirmed_at IS NOT NULL);
