//! Fills a fresh Bulwark database with a generated population in a few set-based SQL
//! statements per table (a million users in about a minute, where the store's one-user calls
//! take half an hour). The rows are those the store writes, column for column; the schema is
//! the migrated one. Each user's row is written with the summary of their groups and second
//! factors that the store's triggers keep (migrations 0009 and 0010), so that the triggers,
//! which write a row only when its summary changes, leave it alone on PostgreSQL: every user
//! row is written once, in id order, as users signing up one by one leave them (a row
//! rewritten by an update is a new version elsewhere in the table, and a report walking users
//! by id then reads a page per row); the fill checks it. Audit events are written unsealed,
//! like the events of a database that predates the audit chain, and the store's own `migrate`
//! seals them into the chain afterwards.
//!
//! The population (user number `i`, from 1):
//! - groups: 1% `admins` + `internal` (`i % 100 == 0`, and user 1), 4% `finance` + `internal`,
//!   35% `portal` or `internal` by parity, the rest `internal`;
//! - every other user (even numbers, and user 1) has a confirmed authenticator and ten
//!   recovery codes, of which one user in ten of them has used eight. The authenticator
//!   secrets are placeholders under the server's current key id (so that `serve` accepts the
//!   database): no benchmark logs in with a code, and sealing a million secrets would measure
//!   the fill;
//! - one user in 100 (`i % 100 == 98`) is disabled;
//! - last logins spread over the last 200 days, one user in seven never logged in;
//! - one session for one user in ten (`i % 10 == 3`) and one audit event for one user in ten
//!   (`i % 10 == 7`).
//!
//! Odd users other than 1 have no second factor and are active: the logins of the benchmark
//! pick them. Every user's password is the one hash given.

use std::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const DAY: i64 = 86_400;

/// The login of user number `i`.
pub fn login_of(i: u64) -> String {
    format!("user{i:07}")
}

/// Fills the database at `url` (`sqlite://…` or `postgres://…`, already migrated and empty)
/// with `users` users; `hash` is every user's stored password hash, `key_id` the server key
/// the authenticators name, `now` the time of the run.
pub async fn fill(url: &str, users: u64, hash: &str, key_id: &str, now: i64) -> Res<()> {
    let n = i64::try_from(users)?;
    if url.starts_with("sqlite:") {
        fill_sqlite(url, n, [hash, key_id], now).await
    } else {
        fill_postgres(url, n, [hash, key_id], now).await
    }
}

/// The statement with its one text value (`:hash` or `:key`, if any) as `placeholder`, and
/// that value.
fn with_value<'a>(sql: &str, values: [&'a str; 2], placeholder: &str) -> (String, Option<&'a str>) {
    let [hash, key] = values;
    if sql.contains(":hash") {
        (sql.replace(":hash", placeholder), Some(hash))
    } else if sql.contains(":key") {
        (sql.replace(":key", placeholder), Some(key))
    } else {
        (sql.to_string(), None)
    }
}

/// The statements of one backend: `seq` is that backend's row source of the numbers 1..=n,
/// `login` its expression for user `i`'s login.
fn statements(
    seq: &str,
    login: &str,
    codes: &str,
    (yes, no): (&str, &str),
    now: i64,
) -> Vec<String> {
    let statements = vec![
        format!(
            "INSERT INTO users (id, login, email, email_lower, display_name, active, password_hash, \
             password_changed_at, must_change_password, created_at, last_login_at, group_list, \
             totp_confirmed, recovery_codes_left) \
             SELECT i, {login}, {login} || '@example.com', {login} || '@example.com', 'User ' || i, \
             CASE WHEN i % 100 = 98 THEN {no} ELSE {yes} END, :hash, :now - 20 * {DAY}, {no}, \
             :now - 400 * {DAY}, CASE WHEN i % 7 = 0 THEN NULL ELSE :now - (i % 200) * {DAY} END, \
             CASE WHEN i = 1 OR i % 100 = 0 THEN 'admins,internal' \
               WHEN i % 100 BETWEEN 1 AND 4 THEN 'finance,internal' \
               WHEN i % 100 BETWEEN 5 AND 39 AND i % 2 = 1 THEN 'portal' ELSE 'internal' END, \
             CASE WHEN i = 1 OR i % 2 = 0 THEN {yes} ELSE {no} END, \
             CASE WHEN i % 20 = 0 THEN 2 WHEN i = 1 OR i % 2 = 0 THEN 10 ELSE 0 END \
             FROM {seq}"
        ),
        // One statement, so that the triggers see each user's groups complete.
        format!(
            "INSERT INTO user_groups (user_id, group_name) \
             SELECT i, CASE WHEN i <> 1 AND i % 100 BETWEEN 5 AND 39 AND i % 2 = 1 \
             THEN 'portal' ELSE 'internal' END FROM {seq} \
             UNION ALL SELECT i, 'admins' FROM {seq} WHERE i = 1 OR i % 100 = 0 \
             UNION ALL SELECT i, 'finance' FROM {seq} WHERE i <> 1 AND i % 100 BETWEEN 1 AND 4"
        ),
        format!(
            "INSERT INTO totp_factors (user_id, secret_sealed, key_id, algorithm, digits, period, \
             created_at, confirmed_at, last_used_step) \
             SELECT i, 'generated', :key, 'SHA1', 6, 30, :now - 30 * {DAY}, \
             :now - 30 * {DAY}, NULL FROM {seq} WHERE i = 1 OR i % 2 = 0"
        ),
        format!(
            "INSERT INTO recovery_codes (user_id, code_hash, created_at, used_at) \
             SELECT i, 'generated-' || i || '-' || j, :now - 30 * {DAY}, \
             CASE WHEN i % 20 = 0 AND j < 8 THEN :now - {DAY} ELSE NULL END \
             FROM {seq} CROSS JOIN {codes} WHERE i = 1 OR i % 2 = 0"
        ),
        format!(
            "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, ip, user_agent, \
             stage, two_factor) \
             SELECT 'generated-' || i, i, :now, :now, '198.51.100.7', \
             'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0', 'full', {no} \
             FROM {seq} WHERE i % 10 = 3"
        ),
        format!(
            "INSERT INTO audit_log (at, actor, subject, event, outcome) \
             SELECT :now - 400 * {DAY}, 'cli', {login}, 'user_created', 'success' \
             FROM {seq} WHERE i % 10 = 7"
        ),
    ];
    // Only numbers go in as text; the hash is bound.
    statements
        .into_iter()
        .map(|s| s.replace(":now", &now.to_string()))
        .collect()
}

async fn fill_sqlite(url: &str, n: i64, values: [&str; 2], now: i64) -> Res<()> {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    let mut conn = SqliteConnectOptions::from_str(url)?
        .foreign_keys(true)
        .connect()
        .await?;
    let seq = format!(
        "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) \
         SELECT i FROM s)"
    );
    let codes = "(WITH RECURSIVE c(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM c WHERE j < 9) \
                 SELECT j FROM c)";
    let mut tx = conn.begin().await?;
    for sql in statements(&seq, "printf('user%07d', i)", codes, ("1", "0"), now) {
        let started = Instant::now();
        let (sql, value) = with_value(&sql, values, "?");
        let mut query = sqlx::query(&sql);
        if let Some(value) = value {
            query = query.bind(value);
        }
        query.execute(&mut *tx).await?;
        log_step(&sql, started);
    }
    tx.commit().await?;
    Ok(())
}

async fn fill_postgres(url: &str, n: i64, values: [&str; 2], now: i64) -> Res<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let seq = format!("generate_series(1::bigint, {n}::bigint) AS s(i)");
    let codes = "generate_series(0, 9) AS c(j)";
    let mut tx = conn.begin().await?;
    let login = "'user' || lpad(i::text, 7, '0')";
    for sql in statements(&seq, login, codes, ("TRUE", "FALSE"), now) {
        let started = Instant::now();
        let (sql, value) = with_value(&sql, values, "$1");
        let mut query = sqlx::query(&sql);
        if let Some(value) = value {
            query = query.bind(value);
        }
        query.execute(&mut *tx).await?;
        log_step(&sql, started);
    }
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users))",
    )
    .execute(&mut *tx)
    .await?;
    let rewritten: i64 =
        sqlx::query_scalar("SELECT pg_stat_get_xact_tuples_updated('users'::regclass)")
            .fetch_one(&mut *tx)
            .await?;
    if rewritten != 0 {
        return Err(format!(
            "the summary triggers rewrote {rewritten} user rows: the fill's summary of groups \
             and second factors differs from theirs"
        )
        .into());
    }
    tx.commit().await?;
    // What autovacuum does shortly after such a load: the planner needs statistics.
    sqlx::query("VACUUM ANALYZE").execute(&mut conn).await?;
    // And what the server does within minutes: write out the pages the load and the vacuum
    // dirtied, rather than while the measurements run (the logins, which write, would pay
    // for it against the small population's). A superuser's (or pg_checkpoint's) right.
    if let Err(e) = sqlx::query("CHECKPOINT").execute(&mut conn).await {
        eprintln!("    CHECKPOINT refused ({e}): measuring with the load's pages still to write");
    }
    Ok(())
}

/// Prints how long a statement took, named by its table.
fn log_step(sql: &str, started: Instant) {
    let table = sql.split_whitespace().nth(2).unwrap_or("?");
    eprintln!("    {table}: {:.1} s", started.elapsed().as_secs_f64());
}
