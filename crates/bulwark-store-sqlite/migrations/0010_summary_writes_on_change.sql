-- The summary triggers of 0009 rewrote a user's row on every change to their groups,
-- authenticators or recovery codes, even when the summary stayed the same (an authenticator
-- added but not yet confirmed, a group list set to what it was). They now write the row only
-- when its summary changes, as PostgreSQL's do (there each write is a new version of the row,
-- see that backend's migration of the same number); the summary is the same expression.

DROP TRIGGER user_groups_summary_insert;
DROP TRIGGER user_groups_summary_delete;
DROP TRIGGER user_groups_summary_update;
DROP TRIGGER totp_factors_summary_insert;
DROP TRIGGER totp_factors_summary_update;
DROP TRIGGER totp_factors_summary_delete;
DROP TRIGGER recovery_codes_summary_insert;
DROP TRIGGER recovery_codes_summary_delete;
DROP TRIGGER recovery_codes_summary_update;

CREATE TRIGGER user_groups_summary_insert AFTER INSERT ON user_groups
BEGIN
    UPDATE users SET group_list = coalesce((SELECT group_concat(group_name, ',')
        FROM user_groups g WHERE g.user_id = users.id), '')
    WHERE id = NEW.user_id AND group_list <> coalesce((SELECT group_concat(group_name, ',')
        FROM user_groups g WHERE g.user_id = users.id), '');
END;
CREATE TRIGGER user_groups_summary_delete AFTER DELETE ON user_groups
BEGIN
    UPDATE users SET group_list = coalesce((SELECT group_concat(group_name, ',')
        FROM user_groups g WHERE g.user_id = users.id), '')
    WHERE id = OLD.user_id AND group_list <> coalesce((SELECT group_concat(group_name, ',')
        FROM user_groups g WHERE g.user_id = users.id), '');
END;
CREATE TRIGGER user_groups_summary_update AFTER UPDATE ON user_groups
BEGIN
    UPDATE users SET group_list = coalesce((SELECT group_concat(group_name, ',')
        FROM user_groups g WHERE g.user_id = users.id), '')
    WHERE id IN (OLD.user_id, NEW.user_id) AND group_list <> coalesce((SELECT
        group_concat(group_name, ',') FROM user_groups g WHERE g.user_id = users.id), '');
END;

CREATE TRIGGER totp_factors_summary_insert AFTER INSERT ON totp_factors
BEGIN
    UPDATE users SET totp_confirmed = EXISTS (SELECT 1 FROM totp_factors t
        WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL)
    WHERE id = NEW.user_id AND totp_confirmed <> EXISTS (SELECT 1 FROM totp_factors t
        WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL);
END;
CREATE TRIGGER totp_factors_summary_update AFTER UPDATE ON totp_factors
BEGIN
    UPDATE users SET totp_confirmed = EXISTS (SELECT 1 FROM totp_factors t
        WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL)
    WHERE id IN (OLD.user_id, NEW.user_id) AND totp_confirmed <> EXISTS (SELECT 1
        FROM totp_factors t WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL);
END;
CREATE TRIGGER totp_factors_summary_delete AFTER DELETE ON totp_factors
BEGIN
    UPDATE users SET totp_confirmed = EXISTS (SELECT 1 FROM totp_factors t
        WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL)
    WHERE id = OLD.user_id AND totp_confirmed <> EXISTS (SELECT 1 FROM totp_factors t
        WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL);
END;

CREATE TRIGGER recovery_codes_summary_insert AFTER INSERT ON recovery_codes
BEGIN
    UPDATE users SET recovery_codes_left = (SELECT count(*) FROM recovery_codes r
        WHERE r.user_id = users.id AND r.used_at IS NULL)
    WHERE id = NEW.user_id AND recovery_codes_left <> (SELECT count(*) FROM recovery_codes r
        WHERE r.user_id = users.id AND r.used_at IS NULL);
END;
CREATE TRIGGER recovery_codes_summary_delete AFTER DELETE ON recovery_codes
BEGIN
    UPDATE users SET recovery_codes_left = (SELECT count(*) FROM recovery_codes r
        WHERE r.user_id = users.id AND r.used_at IS NULL)
    WHERE id = OLD.user_id AND recovery_codes_left <> (SELECT count(*) FROM recovery_codes r
        WHERE r.user_id = users.id AND r.used_at IS NULL);
END;
CREATE TRIGGER recovery_codes_summary_update AFTER UPDATE ON recovery_codes
BEGIN
    UPDATE users SET recovery_codes_left = (SELECT count(*) FROM recovery_codes r
        WHERE r.user_id = users.id AND r.used_at IS NULL)
    WHERE id IN (OLD.user_id, NEW.user_id) AND recovery_codes_left <> (SELECT count(*)
        FROM recovery_codes r WHERE r.user_id = users.id AND r.used_at IS NULL);
END;
