-- Reports over every user (the compliance export, the console's list) need each user's
-- groups, whether an authenticator is confirmed and how many recovery codes are left. Read
-- as three lookups per user they cost seconds per million users before a byte is sent; kept
-- on the user's row by the triggers below they cost nothing more than reading the row.
-- The tables stay the source of truth: sign-in and access decisions read them, and every
-- trigger recomputes its column from them rather than adding and subtracting.

ALTER TABLE users ADD COLUMN group_list TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN totp_confirmed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN recovery_codes_left BIGINT NOT NULL DEFAULT 0;

UPDATE users SET
    group_list = coalesce((SELECT string_agg(group_name, ',' ORDER BY group_name) FROM user_groups g
                           WHERE g.user_id = users.id), ''),
    totp_confirmed = EXISTS (SELECT 1 FROM totp_factors t
                             WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL),
    recovery_codes_left = (SELECT count(*) FROM recovery_codes r
                           WHERE r.user_id = users.id AND r.used_at IS NULL);

-- Statement-level triggers: a statement that writes many rows (a new set of recovery codes,
-- a bulk import) refreshes each user it touched once, from the rows it changed.
CREATE FUNCTION users_refresh_group_list() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE users SET group_list = coalesce((SELECT string_agg(group_name, ',' ORDER BY group_name)
            FROM user_groups g WHERE g.user_id = users.id), '')
        WHERE id IN (SELECT user_id FROM new_rows);
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE users SET group_list = coalesce((SELECT string_agg(group_name, ',' ORDER BY group_name)
            FROM user_groups g WHERE g.user_id = users.id), '')
        WHERE id IN (SELECT user_id FROM old_rows);
    ELSE
        UPDATE users SET group_list = coalesce((SELECT string_agg(group_name, ',' ORDER BY group_name)
            FROM user_groups g WHERE g.user_id = users.id), '')
        WHERE id IN (SELECT user_id FROM old_rows UNION SELECT user_id FROM new_rows);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER user_groups_summary_insert AFTER INSERT ON user_groups
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION users_refresh_group_list();
CREATE TRIGGER user_groups_summary_delete AFTER DELETE ON user_groups
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION users_refresh_group_list();
CREATE TRIGGER user_groups_summary_update AFTER UPDATE ON user_groups
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION users_refresh_group_list();

CREATE FUNCTION users_refresh_totp_confirmed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE users SET totp_confirmed = EXISTS (SELECT 1 FROM totp_factors t
            WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL)
        WHERE id IN (SELECT user_id FROM new_rows);
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE users SET totp_confirmed = EXISTS (SELECT 1 FROM totp_factors t
            WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL)
        WHERE id IN (SELECT user_id FROM old_rows);
    ELSE
        UPDATE users SET totp_confirmed = EXISTS (SELECT 1 FROM totp_factors t
            WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL)
        WHERE id IN (SELECT user_id FROM old_rows UNION SELECT user_id FROM new_rows);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER totp_factors_summary_insert AFTER INSERT ON totp_factors
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION users_refresh_totp_confirmed();
CREATE TRIGGER totp_factors_summary_delete AFTER DELETE ON totp_factors
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION users_refresh_totp_confirmed();
CREATE TRIGGER totp_factors_summary_update AFTER UPDATE ON totp_factors
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION users_refresh_totp_confirmed();

CREATE FUNCTION users_refresh_recovery_codes_left() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE users SET recovery_codes_left = (SELECT count(*) FROM recovery_codes r
            WHERE r.user_id = users.id AND r.used_at IS NULL)
        WHERE id IN (SELECT user_id FROM new_rows);
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE users SET recovery_codes_left = (SELECT count(*) FROM recovery_codes r
            WHERE r.user_id = users.id AND r.used_at IS NULL)
        WHERE id IN (SELECT user_id FROM old_rows);
    ELSE
        UPDATE users SET recovery_codes_left = (SELECT count(*) FROM recovery_codes r
            WHERE r.user_id = users.id AND r.used_at IS NULL)
        WHERE id IN (SELECT user_id FROM old_rows UNION SELECT user_id FROM new_rows);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER recovery_codes_summary_insert AFTER INSERT ON recovery_codes
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION users_refresh_recovery_codes_left();
CREATE TRIGGER recovery_codes_summary_delete AFTER DELETE ON recovery_codes
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION users_refresh_recovery_codes_left();
CREATE TRIGGER recovery_codes_summary_update AFTER UPDATE ON recovery_codes
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION users_refresh_recovery_codes_left();
