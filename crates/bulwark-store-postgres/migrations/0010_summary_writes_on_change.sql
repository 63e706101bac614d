-- The summary triggers of 0009 rewrote every user row a statement touched, even when the
-- summary stayed the same (an authenticator added but not yet confirmed, a group list set to
-- what it was). In PostgreSQL each such write is a new version of the row, placed wherever
-- there is room, often pages away from its neighbours by id; the reports that walk users in
-- id order then read a page of the table per row. The triggers now write a user's row only
-- when its summary changes. The summary itself is computed by one function per column, the
-- same expression as before.

CREATE FUNCTION user_group_list(uid BIGINT) RETURNS TEXT LANGUAGE sql STABLE AS $$
    SELECT coalesce(string_agg(group_name, ',' ORDER BY group_name), '')
    FROM user_groups WHERE user_id = uid
$$;

CREATE FUNCTION user_totp_confirmed(uid BIGINT) RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM totp_factors WHERE user_id = uid AND confirmed_at IS NOT NULL)
$$;

CREATE FUNCTION user_recovery_codes_left(uid BIGINT) RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT count(*) FROM recovery_codes WHERE user_id = uid AND used_at IS NULL
$$;

CREATE OR REPLACE FUNCTION users_refresh_group_list() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE users SET group_list = user_group_list(id)
        WHERE id IN (SELECT user_id FROM new_rows) AND group_list <> user_group_list(id);
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE users SET group_list = user_group_list(id)
        WHERE id IN (SELECT user_id FROM old_rows) AND group_list <> user_group_list(id);
    ELSE
        UPDATE users SET group_list = user_group_list(id)
        WHERE id IN (SELECT user_id FROM old_rows UNION SELECT user_id FROM new_rows)
          AND group_list <> user_group_list(id);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION users_refresh_totp_confirmed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE users SET totp_confirmed = user_totp_confirmed(id)
        WHERE id IN (SELECT user_id FROM new_rows) AND totp_confirmed <> user_totp_confirmed(id);
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE users SET totp_confirmed = user_totp_confirmed(id)
        WHERE id IN (SELECT user_id FROM old_rows) AND totp_confirmed <> user_totp_confirmed(id);
    ELSE
        UPDATE users SET totp_confirmed = user_totp_confirmed(id)
        WHERE id IN (SELECT user_id FROM old_rows UNION SELECT user_id FROM new_rows)
          AND totp_confirmed <> user_totp_confirmed(id);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION users_refresh_recovery_codes_left() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE users SET recovery_codes_left = user_recovery_codes_left(id)
        WHERE id IN (SELECT user_id FROM new_rows)
          AND recovery_codes_left <> user_recovery_codes_left(id);
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE users SET recovery_codes_left = user_recovery_codes_left(id)
        WHERE id IN (SELECT user_id FROM old_rows)
          AND recovery_codes_left <> user_recovery_codes_left(id);
    ELSE
        UPDATE users SET recovery_codes_left = user_recovery_codes_left(id)
        WHERE id IN (SELECT user_id FROM old_rows UNION SELECT user_id FROM new_rows)
          AND recovery_codes_left <> user_recovery_codes_left(id);
    END IF;
    RETURN NULL;
END $$;
