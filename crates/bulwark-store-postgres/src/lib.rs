//! PostgreSQL backend: the store several Bulwark nodes share.
//!
//! Same schema and semantics as the SQLite backend (the contract suite in `bulwark-store`
//! is the judge), written for many writers at once:
//!
//! - every "use once" method is one conditional `UPDATE … WHERE <still unused> [RETURNING]`:
//!   under READ COMMITTED a second writer waits for the first's row lock, re-checks the
//!   condition on the new row and matches nothing, so exactly one call wins;
//! - throttle counters are one `INSERT … ON CONFLICT … DO UPDATE … RETURNING`;
//! - audit ids follow commit order (an advisory lock held until commit around each append);
//! - `migrate` runs under a session advisory lock, so nodes starting together migrate once,
//!   and refuses a schema newer than this build.
//!
//! Connection failures (refused, reset, pool timeout, server shutting down) become
//! [`StoreError::Unavailable`], which the server answers with 503; the pool reconnects by
//! itself when the database is back.

use async_trait::async_trait;
use bulwark_core::account::{Email, GroupName, Login};
use bulwark_core::api_key::{ApiKeyDigest, Scopes};
use bulwark_core::password::hash::PasswordHash;
use bulwark_core::token::TokenHash;
use bulwark_core::UnixTime;
use bulwark_store::*;
use bulwark_store_pool::{Conn, Connections, Settings, IDLE_TIMEOUT};
use sqlx::postgres::{PgConnectOptions, PgRow, Postgres};
use sqlx::{Connection, PgConnection, Row};
use std::str::FromStr;
use std::time::Duration;

mod report_copy;
#[cfg(feature = "testing")]
pub mod testing;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Advisory lock key held while migrating ("bulwark" + 1).
const MIGRATE_LOCK: i64 = 0x6275_6c77_6172_6b01;
/// Advisory lock key held by an audit append that reads the head, until it commits
/// ("bulwark" + 2).
const AUDIT_LOCK: i64 = 0x6275_6c77_6172_6b02;
/// Advisory lock key held while seeding the settings ("bulwark" + 3).
const SETTINGS_LOCK: i64 = 0x6275_6c77_6172_6b03;

/// How the connection pool behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections this node opens.
    pub max_connections: u32,
    /// How long a request waits for a connection before the store answers `Unavailable`.
    pub acquire_timeout: Duration,
    /// How long the server lets one of the store's transactions sit without a statement
    /// before it ends it with its connection (`SET LOCAL idle_in_transaction_session_timeout`
    /// in each transaction's `BEGIN`; zero leaves the server's setting alone).
    ///
    /// Bulwark's transactions send their statements one after the other, with nothing to wait
    /// for in between. A transaction left open by a bug (a cancelled request, say: see the
    /// pool's cancelled-begin fix) would otherwise hold its locks until its connection's next
    /// use, or for ever: the audit chain's advisory lock among them, which every node's
    /// audited action waits for. The server ends it instead, and the pool replaces the
    /// connection. Set per transaction, not per connection, it needs no startup option (which
    /// connection poolers may refuse) and leaves any other session of the role as it is.
    pub idle_in_transaction_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(10),
        }
    }
}

/// A pooled connection idle this long is pinged before it is lent: a busy pool's are not
/// (a ping is a round trip to the server before every statement).
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// A Bulwark store on a PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: Connections<Postgres>,
    /// For the migration lock's own connection.
    options: PgConnectOptions,
    /// What starts a transaction (see [`PoolSettings::idle_in_transaction_timeout`]).
    begin: String,
    /// The audit chain's head as this store last wrote it (see `AuditHead`).
    audit_head: std::sync::Arc<AuditHead>,
}

impl PgStore {
    /// Parses a `postgres://` or `postgresql://` URL; the error says what is wrong with it
    /// (it never repeats the URL, which may hold a password).
    pub fn parse_url(url: &str) -> Result<PgConnectOptions, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("must start with postgres:// or postgresql://".into());
        }
        PgConnectOptions::from_str(url).map_err(|e| format!("not a valid PostgreSQL URL: {e}"))
    }

    /// Connects to the database at `url` (see [`PgStore::parse_url`]).
    pub async fn connect(url: &str, settings: PoolSettings) -> StoreResult<Self> {
        let options = Self::parse_url(url).map_err(StoreError::Backend)?;
        Self::connect_with(options, settings).await
    }

    /// Connects with parsed options. Fails with `Unavailable` if the server cannot be reached.
    pub async fn connect_with(
        options: PgConnectOptions,
        settings: PoolSettings,
    ) -> StoreResult<Self> {
        let options = options.application_name("bulwark");
        // A connection idle for a while may have been broken by a database restart: it is
        // pinged, and replaced if that fails, before use. One broken under load fails its
        // statement and is closed, not given back.
        let pool = Connections::open(
            options.clone(),
            Settings {
                max_connections: settings.max_connections,
                acquire_timeout: settings.acquire_timeout,
                ping_after_idle: Some(PING_AFTER_IDLE),
                idle_timeout: Some(IDLE_TIMEOUT),
                broken: connection_lost,
            },
        )
        .await
        .map_err(map_err)?;
        let begin = match settings.idle_in_transaction_timeout.as_millis() {
            0 => "BEGIN".to_string(),
            ms => format!("BEGIN; SET LOCAL idle_in_transaction_session_timeout = {ms}"),
        };
        Ok(Self {
            pool,
            options,
            begin,
            audit_head: std::sync::Arc::default(),
        })
    }

    /// Starts a transaction on `conn` (see [`PoolSettings::idle_in_transaction_timeout`]).
    async fn begin<'c>(
        &self,
        conn: &'c mut Conn<Postgres>,
    ) -> StoreResult<sqlx::Transaction<'c, Postgres>> {
        conn.begin_with(self.begin.clone()).await.map_err(map_err)
    }

    /// The migration versions this build knows, oldest first.
    pub fn migration_versions() -> Vec<i64> {
        MIGRATOR.iter().map(|m| m.version).collect()
    }

    /// The newest migration applied to the database, if any.
    pub async fn schema_version(&self) -> StoreResult<Option<i64>> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        applied_version(conn.connection().map_err(map_err)?).await
    }

    async fn migrate_locked(&self, conn: &mut PgConnection) -> StoreResult<()> {
        let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        if let Some(found) = applied_version(conn).await? {
            if found > known {
                return Err(StoreError::SchemaTooNew { found, known });
            }
        }
        MIGRATOR.run_direct(conn).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => map_err(e),
            other => StoreError::Backend(format!("migration failed: {other}")),
        })?;
        seal_audit_backlog(self).await
    }
}

/// The newest successfully applied migration, or None on an empty database.
async fn applied_version(conn: &mut PgConnection) -> StoreResult<Option<i64>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)
}

/// SQLSTATEs that mean "the database cannot serve right now", not "this query is wrong":
/// class 08 (connection exception), the server shutting down or starting up, too many
/// connections, and the server ending a connection that sat idle in a transaction (25P03,
/// see [`PoolSettings::idle_in_transaction_timeout`]) or idle at all (57P05, a server's
/// `idle_session_timeout`).
fn unavailable_code(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "57P05" | "53300" | "25P03"
        )
}

fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict("already exists")
        }
        // No connection to be had, or the one used is gone: a retry later may succeed.
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(e.to_string())
        }
        _ if connection_lost(&e) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

/// Whether an error means the connection it came from is gone: cut, closed by a server
/// shutting down, or broken mid-conversation (a protocol error: e.g. a TCP proxy in front of a
/// database that is down answers the handshake with a closed socket). The pool closes such a
/// connection rather than lend it again.
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| unavailable_code(&c)),
        _ => false,
    }
}

fn found(rows_affected: u64) -> StoreResult<()> {
    if rows_affected == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

fn stored_hash(s: String) -> StoreResult<PasswordHash> {
    PasswordHash::parse(&s)
        .map_err(|e| StoreError::Backend(format!("unreadable stored password hash: {e}")))
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(if n < 0 { 0 } else { u32::MAX })
}

/// The columns of a user row, before its groups.
macro_rules! user_columns {
    () => {
        "id, login, email, display_name, active, created_at, last_login_at, \
         password_changed_at, must_change_password, password_hash IS NOT NULL AS has_password, \
         device_account, allowed_networks, grace_started_at"
    };
}

/// A user, groups read from the source table (what sign-in and access decisions read).
const USER_COLUMNS: &str = concat!(
    user_columns!(),
    ", ARRAY(SELECT g.group_name FROM user_groups g WHERE g.user_id = users.id \
     ORDER BY g.group_name) AS groups"
);

/// A user and their second factors for the admin console's list, from the summary the
/// triggers of migration 0009 keep on the user's row (groups in the same order).
const SUMMARY_COLUMNS: &str = concat!(
    user_columns!(),
    ", coalesce(string_to_array(nullif(group_list, ''), ','), '{}') AS groups, \
     totp_confirmed AS totp_active, recovery_codes_left AS codes_left"
);

fn user_from_row(row: &PgRow) -> Result<UserRecord, sqlx::Error> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        login: row.try_get("login")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        active: row.try_get("active")?,
        groups: row.try_get("groups")?,
        created_at: row.try_get("created_at")?,
        last_login_at: row.try_get("last_login_at")?,
        password_changed_at: row.try_get("password_changed_at")?,
        must_change_password: row.try_get("must_change_password")?,
        has_password: row.try_get("has_password")?,
        device_account: row.try_get("device_account")?,
        allowed_networks: split_list(row.try_get("allowed_networks")?),
        grace_started_at: row.try_get("grace_started_at")?,
    })
}

/// What the reports over every user read of each ([`SecurityRow`]), with the summary the
/// triggers of migration 0009 keep on the user's row. [`report_copy`] reads them in this
/// order, in the binary form of the type each is cast to here (a cast to a column's own
/// type costs nothing): a column whose type changed still arrives as the reader expects.
const REPORT_COLUMNS: &str = "id::int8, login::text, email::text, display_name::text, \
     active::bool, created_at::int8, last_login_at::int8, password_changed_at::int8, \
     password_hash IS NOT NULL AS has_password, device_account::bool, \
     grace_started_at::int8, group_list::text AS groups, totp_confirmed::bool AS totp_active, \
     recovery_codes_left::int8 AS codes_left";

fn throttle_from_row(r: &PgRow) -> Result<ThrottleRecord, sqlx::Error> {
    Ok(ThrottleRecord {
        failures: count(r.try_get("failures")?),
        last_failure_at: r.try_get("last_failure_at")?,
        blocked_until: r.try_get("blocked_until")?,
    })
}

fn security_from_row(row: &PgRow) -> Result<UserSecurity, sqlx::Error> {
    Ok(UserSecurity {
        user: user_from_row(row)?,
        totp_active: row.try_get("totp_active")?,
        recovery_codes_left: count(row.try_get("codes_left")?),
    })
}

fn split_list(s: String) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

const SESSION_COLUMNS: &str = "id, user_id, stage, two_factor, created_at, last_seen_at, ip, \
    user_agent, coalesce(password_checked_at, created_at) AS password_checked_at";

fn session_from_row(row: &PgRow) -> Result<SessionRecord, sqlx::Error> {
    let stage: String = row.try_get("stage")?;
    Ok(SessionRecord {
        id: row.try_get("id")?,
        user: row.try_get("user_id")?,
        stage: SessionStage::from_stored(&stage),
        two_factor: row.try_get("two_factor")?,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        password_checked_at: row.try_get("password_checked_at")?,
    })
}

fn token_from_row(row: &PgRow) -> Result<OneTimeTokenRecord, sqlx::Error> {
    Ok(OneTimeTokenRecord {
        id: row.try_get("id")?,
        user: row.try_get("user_id")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

fn rows<T>(rows: &[PgRow], f: impl Fn(&PgRow) -> Result<T, sqlx::Error>) -> StoreResult<Vec<T>> {
    rows.iter()
        .map(f)
        .collect::<Result<_, _>>()
        .map_err(map_err)
}

/// Escapes LIKE wildcards so a search for `%` finds a literal percent sign.
fn like_pattern(search: &str) -> String {
    let mut out = String::from("%");
    for c in search.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[async_trait]
impl UserStore for PgStore {
    async fn insert_user(&self, user: &NewUser) -> StoreResult<UserRecord> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = self.begin(&mut conn).await?;
        let email = user.email.as_ref().map(|e| e.as_str().to_string());
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (login, email, email_lower, display_name, password_hash, password_changed_at, \
             must_change_password, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(user.login.as_str())
        .bind(&email)
        .bind(email.as_ref().map(|e| e.to_lowercase()))
        .bind(user.display_name.as_str())
        .bind(user.password_hash.as_ref().map(|h| h.as_str()))
        .bind(user.password_hash.as_ref().map(|_| user.created_at))
        .bind(user.must_change_password)
        .bind(user.created_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        for group in &user.groups {
            sqlx::query(
                "INSERT INTO user_groups (user_id, group_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(group.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        if let Some(hash) = &user.password_hash {
            sqlx::query(
                "INSERT INTO password_history (user_id, hash, created_at) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(hash.as_str())
            .bind(user.created_at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        self.get_user(id).await
    }

    async fn get_user(&self, id: UserId) -> StoreResult<UserRecord> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        user_from_row(&row).map_err(map_err)
    }

    async fn find_user_by_login(&self, login: &Login) -> StoreResult<Option<UserRecord>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE lower(login) = lower($1)");
        let row = sqlx::query(&sql)
            .bind(login.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(user_from_row).transpose().map_err(map_err)
    }

    async fn find_login_candidate(&self, login: &Login) -> StoreResult<Option<LoginCandidate>> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, password_hash, EXISTS (SELECT 1 FROM totp_factors t \
             WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL) AS totp_confirmed \
             FROM users WHERE lower(login) = lower($1)"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(login.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        let user = user_from_row(&row).map_err(map_err)?;
        let hash: Option<String> = row.try_get("password_hash").map_err(map_err)?;
        Ok(Some(LoginCandidate {
            user,
            password_hash: hash.map(stored_hash).transpose()?,
            totp_confirmed: row.try_get("totp_confirmed").map_err(map_err)?,
        }))
    }

    async fn find_users_by_email(&self, email: &Email) -> StoreResult<Vec<UserRecord>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email_lower = $1 ORDER BY login");
        let found = sqlx::query(&sql)
            .bind(email.as_str().to_lowercase())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows(&found, user_from_row)
    }

    async fn list_users(&self, filter: &UserFilter) -> StoreResult<Vec<UserRecord>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE \
             ($1::text IS NULL OR login LIKE $1 ESCAPE '\\' OR email_lower LIKE $1 ESCAPE '\\' \
              OR lower(display_name) LIKE $1 ESCAPE '\\') \
             AND ($2::text IS NULL OR EXISTS (SELECT 1 FROM user_groups g WHERE g.user_id = users.id AND g.group_name = $2)) \
             ORDER BY login LIMIT $3 OFFSET $4"
        );
        let found = sqlx::query(&sql)
            .bind(filter.search.as_deref().map(like_pattern))
            .bind(filter.group.as_deref())
            .bind(i64::from(filter.limit))
            .bind(i64::from(filter.offset))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows(&found, user_from_row)
    }

    async fn list_user_security(
        &self,
        after_id: UserId,
        up_to: UserId,
        limit: u32,
    ) -> StoreResult<SecurityPage> {
        use futures_util::TryStreamExt;
        let statement = report_copy::statement(after_id, up_to, limit);
        let rows =
            usize::try_from(limit).map_or(report_copy::ROOM_FOR, |n| n.min(report_copy::ROOM_FOR));
        let mut data = Vec::with_capacity(rows.saturating_mul(report_copy::BYTES_PER_ROW));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        // Closed rather than given back unless the answer is read to its end (cancelled
        // half-way, its rows would still be coming for the next borrower).
        let pg = conn.connection_for_whole().map_err(map_err)?;
        let read = async {
            let mut copy = pg.copy_out_raw(&statement).await?;
            while let Some(chunk) = copy.try_next().await? {
                data.extend_from_slice(&chunk);
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        conn.finished_whole(read.as_ref().err());
        drop(conn);
        read.map_err(map_err)?;
        let mut page = SecurityPage::with_capacity(rows);
        report_copy::read_page(&data, &mut page).map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(page)
    }

    async fn max_user_id(&self) -> StoreResult<UserId> {
        sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn list_users_for_admin(&self, f: &AdminUserFilter) -> StoreResult<Vec<UserSecurity>> {
        let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM users WHERE true");
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        let mut text: Vec<String> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        if let Some(search) = &f.search {
            let p = next();
            sql.push_str(&format!(
                " AND (login LIKE ${p} ESCAPE '\\' OR email_lower LIKE ${p} ESCAPE '\\' \
                 OR lower(display_name) LIKE ${p} ESCAPE '\\')"
            ));
            text.push(like_pattern(search));
        }
        if let Some(group) = &f.group {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM user_groups g \
                 WHERE g.user_id = users.id AND g.group_name = ${})",
                next()
            ));
            text.push(group.clone());
        }
        if let Some(after) = &f.after_login {
            sql.push_str(&format!(" AND login COLLATE \"C\" > ${}", next()));
            text.push(after.clone());
        }
        if let Some(on) = f.two_factor {
            sql.push_str(&format!(
                " AND {} EXISTS (SELECT 1 FROM totp_factors t \
                 WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL)",
                if on { "" } else { "NOT" }
            ));
        }
        if let Some(active) = f.active {
            sql.push_str(if active {
                " AND active"
            } else {
                " AND NOT active"
            });
        }
        if let Some(now) = f.locked_at {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM throttles th \
                 WHERE th.key = 'login:' || lower(users.login) AND th.blocked_until > ${})",
                next()
            ));
            numbers.push(now);
        }
        if let Some(since) = f.idle_since {
            sql.push_str(&format!(
                " AND coalesce(last_login_at, created_at) < ${}",
                next()
            ));
            numbers.push(since);
        }
        if let Some(before) = f.password_changed_before {
            sql.push_str(&format!(
                " AND password_hash IS NOT NULL AND password_changed_at < ${}",
                next()
            ));
            numbers.push(before);
        }
        sql.push_str(&format!(" ORDER BY login COLLATE \"C\" LIMIT ${}", next()));
        let mut query = sqlx::query(&sql);
        for t in &text {
            query = query.bind(t);
        }
        for v in numbers {
            query = query.bind(v);
        }
        let found = query
            .bind(i64::from(f.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows(&found, security_from_row)
    }

    async fn count_active_in_group(&self, group: &GroupName) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM users u JOIN user_groups g ON g.user_id = u.id WHERE g.group_name = $1 AND u.active",
        )
        .bind(group.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn update_profile(
        &self,
        id: UserId,
        email: Option<&Email>,
        display_name: &str,
    ) -> StoreResult<()> {
        let r = sqlx::query(
            "UPDATE users SET email = $1, email_lower = $2, display_name = $3 WHERE id = $4",
        )
        .bind(email.map(|e| e.as_str()))
        .bind(email.map(|e| e.as_str().to_lowercase()))
        .bind(display_name)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        found(r.rows_affected())
    }

    async fn update_active(&self, id: UserId, active: bool) -> StoreResult<()> {
        let r = sqlx::query("UPDATE users SET active = $1 WHERE id = $2")
            .bind(active)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        found(r.rows_affected())
    }

    async fn update_groups(&self, id: UserId, groups: &[GroupName]) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = self.begin(&mut conn).await?;
        // The user's row lock serialises concurrent replacements of their groups.
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        sqlx::query("DELETE FROM user_groups WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        for group in groups {
            sqlx::query(
                "INSERT INTO user_groups (user_id, group_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(group.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn delete_user(&self, id: UserId) -> StoreResult<()> {
        let r = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        found(r.rows_affected())
    }

    async fn find_password_hash(&self, id: UserId) -> StoreResult<Option<PasswordHash>> {
        let hash: Option<Option<String>> =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        hash.flatten().map(stored_hash).transpose()
    }

    async fn clear_password(&self, id: UserId) -> StoreResult<()> {
        let r = sqlx::query("UPDATE users SET password_hash = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn update_password(&self, change: &PasswordChange) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = self.begin(&mut conn).await?;
        // Updating the user first takes its row lock: concurrent changes queue here.
        let r = sqlx::query(
            "UPDATE users SET password_hash = $1, password_changed_at = $2, must_change_password = $3 WHERE id = $4",
        )
        .bind(change.hash.as_str())
        .bind(change.changed_at)
        .bind(change.must_change)
        .bind(change.user)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        found(r.rows_affected())?;
        sqlx::query("INSERT INTO password_history (user_id, hash, created_at) VALUES ($1, $2, $3)")
            .bind(change.user)
            .bind(change.hash.as_str())
            .bind(change.changed_at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let keep = i64::try_from(change.keep_history.max(1)).unwrap_or(i64::MAX);
        sqlx::query(
            "DELETE FROM password_history WHERE user_id = $1 AND id NOT IN \
             (SELECT id FROM password_history WHERE user_id = $1 ORDER BY id DESC LIMIT $2)",
        )
        .bind(change.user)
        .bind(keep)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn rehash_password(&self, id: UserId, hash: &PasswordHash) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = self.begin(&mut conn).await?;
        let r = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        found(r.rows_affected())?;
        sqlx::query(
            "UPDATE password_history SET hash = $1 \
             WHERE id = (SELECT max(id) FROM password_history WHERE user_id = $2)",
        )
        .bind(hash.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn list_password_history(
        &self,
        id: UserId,
        limit: usize,
    ) -> StoreResult<Vec<PasswordHash>> {
        let hashes: Vec<String> = sqlx::query_scalar(
            "SELECT hash FROM password_history WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        hashes.into_iter().map(stored_hash).collect()
    }

    async fn update_must_change_password(&self, id: UserId, must_change: bool) -> StoreResult<()> {
        let r = sqlx::query("UPDATE users SET must_change_password = $1 WHERE id = $2")
            .bind(must_change)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        found(r.rows_affected())
    }

    async fn update_last_login(&self, id: UserId, at: UnixTime) -> StoreResult<()> {
        let r = sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        found(r.rows_affected())
    }

    async fn update_device_account(
        &self,
        id: UserId,
        device: bool,
        networks: &[String],
    ) -> StoreResult<()> {
        let r = sqlx::query(
            "UPDATE users SET device_account = $1, allowed_networks = $2 WHERE id = $3",
        )
        .bind(device)
        .bind(networks.join(","))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        found(r.rows_affected())
    }

    async fn start_grace(&self, id: UserId, at: UnixTime) -> StoreResult<UnixTime> {
        let started: Option<Option<i64>> = sqlx::query_scalar(
            "UPDATE users SET grace_started_at = coalesce(grace_started_at, $1) WHERE id = $2 \
             RETURNING grace_started_at",
        )
        .bind(at)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        started.flatten().ok_or(StoreError::NotFound)
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn insert_session(&self, s: &NewSession) -> StoreResult<SessionRecord> {
        let row = sqlx::query(&format!(
            "INSERT INTO sessions (token_hash, user_id, stage, two_factor, created_at, last_seen_at, ip, user_agent) \
             VALUES ($1, $2, $3, $4, $5, $5, $6, $7) RETURNING {SESSION_COLUMNS}"
        ))
        .bind(s.token_hash.as_str())
        .bind(s.user)
        .bind(s.stage.as_str())
        .bind(s.two_factor)
        .bind(s.created_at)
        .bind(&s.ip)
        .bind(&s.user_agent)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        session_from_row(&row).map_err(map_err)
    }

    async fn update_session_password_checked(
        &self,
        id: SessionId,
        at: UnixTime,
    ) -> StoreResult<()> {
        let r = sqlx::query("UPDATE sessions SET password_checked_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn find_session(&self, hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = $1"
        ))
        .bind(hash.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref()
            .map(session_from_row)
            .transpose()
            .map_err(map_err)
    }

    async fn touch_session(&self, id: SessionId, at: UnixTime) -> StoreResult<()> {
        // Only ever forward, and no write at all when another node already wrote a later time.
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $1")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn delete_session(&self, id: SessionId) -> StoreResult<()> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn delete_user_sessions(
        &self,
        user: UserId,
        keep: Option<SessionId>,
    ) -> StoreResult<u64> {
        let r = sqlx::query(
            "DELETE FROM sessions WHERE user_id = $1 AND ($2::bigint IS NULL OR id <> $2)",
        )
        .bind(user)
        .bind(keep)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(r.rows_affected())
    }

    async fn list_user_sessions(&self, user: UserId) -> StoreResult<Vec<SessionRecord>> {
        let found = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows(&found, session_from_row)
    }

    async fn delete_expired_sessions(
        &self,
        idle_before: UnixTime,
        created_before: UnixTime,
    ) -> StoreResult<u64> {
        let r = sqlx::query("DELETE FROM sessions WHERE last_seen_at < $1 OR created_at < $2")
            .bind(idle_before)
            .bind(created_before)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(r.rows_affected())
    }
}

#[async_trait]
impl OneTimeTokenStore for PgStore {
    async fn insert_one_time_token(&self, t: &NewOneTimeToken) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO one_time_tokens (token_hash, purpose, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(t.hash.as_str())
        .bind(t.purpose.as_str())
        .bind(t.user)
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn find_one_time_token(
        &self,
        purpose: TokenPurpose,
        hash: &TokenHash,
        now: UnixTime,
    ) -> StoreResult<Option<OneTimeTokenRecord>> {
        let row = sqlx::query(
            "SELECT id, user_id, created_at, expires_at FROM one_time_tokens \
             WHERE purpose = $1 AND token_hash = $2 AND used_at IS NULL AND expires_at > $3",
        )
        .bind(purpose.as_str())
        .bind(hash.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref()
            .map(token_from_row)
            .transpose()
            .map_err(map_err)
    }

    async fn consume_one_time_token(
        &self,
        purpose: TokenPurpose,
        hash: &TokenHash,
        now: UnixTime,
    ) -> StoreResult<Option<OneTimeTokenRecord>> {
        let row = sqlx::query(
            "UPDATE one_time_tokens SET used_at = $3 \
             WHERE purpose = $1 AND token_hash = $2 AND used_at IS NULL AND expires_at > $3 \
             RETURNING id, user_id, created_at, expires_at",
        )
        .bind(purpose.as_str())
        .bind(hash.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref()
            .map(token_from_row)
            .transpose()
            .map_err(map_err)
    }

    async fn revoke_user_tokens(
        &self,
        user: UserId,
        purpose: TokenPurpose,
        now: UnixTime,
    ) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE one_time_tokens SET used_at = $1 WHERE user_id = $2 AND purpose = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(user)
        .bind(purpose.as_str())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(r.rows_affected())
    }
}

#[async_trait]
impl ThrottleStore for PgStore {
    async fn record_failure(&self, key: &str, now: UnixTime, window_secs: i64) -> StoreResult<u32> {
        let failures: i64 = sqlx::query_scalar(
            "INSERT INTO throttles (key, failures, last_failure_at, blocked_until) VALUES ($1, 1, $2, 0) \
             ON CONFLICT (key) DO UPDATE SET \
               failures = CASE WHEN $2 - throttles.last_failure_at > $3 THEN 1 ELSE throttles.failures + 1 END, \
               last_failure_at = $2 \
             RETURNING failures",
        )
        .bind(key)
        .bind(now)
        .bind(window_secs)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(count(failures))
    }

    async fn update_blocked_until(&self, key: &str, until: UnixTime) -> StoreResult<()> {
        sqlx::query(
            "UPDATE throttles SET blocked_until = GREATEST(blocked_until, $1) WHERE key = $2",
        )
        .bind(until)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn find_throttles(&self, keys: &[&str]) -> StoreResult<Vec<Option<ThrottleRecord>>> {
        let mut found = vec![None; keys.len()];
        if keys.is_empty() {
            return Ok(found);
        }
        let rows = sqlx::query(
            "SELECT key, failures, last_failure_at, blocked_until FROM throttles \
             WHERE key = ANY($1)",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        for row in &rows {
            let key: &str = row.try_get("key").map_err(map_err)?;
            let record = throttle_from_row(row).map_err(map_err)?;
            for (slot, _) in found.iter_mut().zip(keys).filter(|(_, k)| **k == key) {
                *slot = Some(record);
            }
        }
        Ok(found)
    }

    async fn delete_throttle(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM throttles WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

const AUDIT_COLUMNS: &str =
    "id, at, actor, subject, event, outcome, detail, ip, user_agent, prev_hash, hash";

fn audit_from_row(r: &PgRow) -> Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        subject: r.try_get("subject")?,
        event: r.try_get("event")?,
        outcome: r.try_get("outcome")?,
        detail: r.try_get("detail")?,
        ip: r.try_get("ip")?,
        user_agent: r.try_get("user_agent")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// The id and hash the next audit event follows: the newest event, else the newest
/// checkpoint (everything was pruned), else the genesis. Call under AUDIT_LOCK.
async fn chain_head(conn: &mut PgConnection) -> StoreResult<ChainHead> {
    let last: Option<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
    if let Some((id, hash)) = last {
        return Ok(ChainHead {
            id,
            hash: hash.unwrap_or_default(),
        });
    }
    let checkpoint: Option<(i64, String)> = sqlx::query_as(
        "SELECT last_id, last_hash FROM audit_checkpoints ORDER BY last_id DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    let (id, hash) = checkpoint.unwrap_or_else(|| (0, bulwark_core::audit::GENESIS.to_string()));
    Ok(ChainHead { id, hash })
}

/// Seals events written before the chain existed (migration 0005) into it, in id order.
async fn seal_audit_backlog(store: &PgStore) -> StoreResult<()> {
    loop {
        let mut conn = store.pool.acquire().await.map_err(map_err)?;
        let mut tx = store.begin(&mut conn).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let found = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE hash IS NULL ORDER BY id LIMIT 500"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let unsealed = rows(&found, audit_from_row)?;
        let Some(first) = unsealed.first() else {
            return Ok(());
        };
        let before: Option<Option<String>> =
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT 1")
                .bind(first.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let mut prev = before
            .flatten()
            .unwrap_or_else(|| bulwark_core::audit::GENESIS.to_string());
        for record in &unsealed {
            let hash = bulwark_core::audit::link_hash(&prev, &record.link_fields());
            sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE id = $3")
                .bind(&prev)
                .bind(&hash)
                .bind(record.id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            prev = hash;
        }
        tx.commit().await.map_err(map_err)?;
    }
}

impl PgStore {
    /// Appends `e` after the head of the chain, read under the audit lock.
    async fn append_audit_locked(&self, e: &NewAuditEvent) -> StoreResult<ChainHead> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = self.begin(&mut conn).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let last = chain_head(&mut tx).await?;
        let next = last.after(e);
        bind_audit(sqlx::query(AUDIT_APPEND), e, &last.hash, &next)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(next)
    }
}

/// Appends an event (under the audit lock, after reading the head), bound by `bind_audit`.
const AUDIT_APPEND: &str = "INSERT INTO audit_log \
     (id, at, actor, subject, event, outcome, detail, ip, user_agent, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// Appends an event bound by `bind_audit` only if the head it links to (id $12, hash $13)
/// is still the newest event (see `AuditHead`).
const AUDIT_LINK: &str = "INSERT INTO audit_log \
     (id, at, actor, subject, event, outcome, detail, ip, user_agent, prev_hash, hash) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
     WHERE (SELECT max(id) FROM audit_log) = $12 \
     AND (SELECT hash FROM audit_log WHERE id = $12) = $13";

/// Binds event `next.id` of the chain, after the event hashed `prev_hash`.
fn bind_audit<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    e: &'q NewAuditEvent,
    prev_hash: &'q str,
    next: &'q ChainHead,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(next.id)
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.subject)
        .bind(&e.event)
        .bind(&e.outcome)
        .bind(&e.detail)
        .bind(&e.ip)
        .bind(&e.user_agent)
        .bind(prev_hash)
        .bind(&next.hash)
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_audit(&self, e: &NewAuditEvent) -> StoreResult<i64> {
        let mut head = self.audit_head.lock().await;
        if let Some(link) = head.link(e) {
            let linked = bind_audit(sqlx::query(AUDIT_LINK), e, &link.head.hash, &link.next)
                .bind(link.head.id)
                .bind(&link.head.hash)
                .execute(&self.pool)
                .await;
            // Not inserted (another node appended), or failed: the locked append below reads
            // the head again (and reports a failure that persists).
            if linked.is_ok_and(|r| r.rows_affected() == 1) {
                return Ok(head.appended(link.next));
            }
        }
        // Locked appends are serialised by a transaction-level advisory lock. A linked append
        // of another node (which takes no lock) may still take the id first: the primary key
        // refuses the second, and the append reads the head again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.append_audit_locked(e).await {
                Err(StoreError::Conflict(_)) if attempts < 5 => continue,
                Err(e) => return Err(e),
                Ok(next) => return Ok(head.appended(next)),
            }
        }
    }

    async fn list_audit(&self, f: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE true");
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if f.subject.is_some() {
            sql.push_str(&format!(" AND subject = ${}", next()));
        }
        if f.event.is_some() {
            sql.push_str(&format!(" AND event = ${}", next()));
        }
        if f.since.is_some() {
            sql.push_str(&format!(" AND at >= ${}", next()));
        }
        if f.until.is_some() {
            sql.push_str(&format!(" AND at < ${}", next()));
        }
        if f.before_id.is_some() {
            sql.push_str(&format!(" AND id < ${}", next()));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", next()));
        let mut query = sqlx::query(&sql);
        for value in [&f.subject, &f.event].into_iter().flatten() {
            query = query.bind(value);
        }
        for value in [f.since, f.until, f.before_id].into_iter().flatten() {
            query = query.bind(value);
        }
        let found = query
            .bind(i64::from(f.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows(&found, audit_from_row)
    }

    async fn audit_chain(&self, after_id: i64, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        let found = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows(&found, audit_from_row)
    }

    async fn last_audit_before(&self, time: UnixTime) -> StoreResult<Option<AuditRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log \
             WHERE id = (SELECT max(id) FROM audit_log WHERE at < $1)"
        ))
        .bind(time)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref()
            .map(audit_from_row)
            .transpose()
            .map_err(map_err)
    }

    async fn prune_audit(&self, c: &AuditCheckpoint) -> StoreResult<u64> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = self.begin(&mut conn).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let hash: Option<Option<String>> =
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE id = $1")
                .bind(c.last_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        if hash.flatten().as_deref() != Some(c.last_hash.as_str()) {
            return Err(StoreError::Conflict(
                "the checkpoint does not name an audit event of the chain",
            ));
        }
        sqlx::query(
            "INSERT INTO audit_checkpoints (at, last_id, last_hash, pruned, key_id, signature) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(c.at)
        .bind(c.last_id)
        .bind(&c.last_hash)
        .bind(c.pruned)
        .bind(&c.key_id)
        .bind(&c.signature)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let removed = sqlx::query("DELETE FROM audit_log WHERE id <= $1")
            .bind(c.last_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        tx.commit().await.map_err(map_err)?;
        Ok(removed)
    }

    async fn list_audit_checkpoints(&self) -> StoreResult<Vec<AuditCheckpoint>> {
        let found = sqlx::query(
            "SELECT at, last_id, last_hash, pruned, key_id, signature \
             FROM audit_checkpoints ORDER BY last_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows(&found, |r| {
            Ok(AuditCheckpoint {
                at: r.try_get("at")?,
                last_id: r.try_get("last_id")?,
                last_hash: r.try_get("last_hash")?,
                pruned: r.try_get("pruned")?,
                key_id: r.try_get("key_id")?,
                signature: r.try_get("signature")?,
            })
        })
    }

    async fn count_audit_events(&self, event: &str, since: UnixTime) -> StoreResult<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE event = $1 AND at >= $2")
                .bind(event)
                .bind(since)
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn recent_login_clients(
        &self,
        subject: &str,
        limit: u32,
    ) -> StoreResult<Vec<(Option<String>, Option<String>)>> {
        sqlx::query_as(
            "SELECT DISTINCT ip, user_agent FROM (SELECT ip, user_agent FROM audit_log \
             WHERE subject = $1 AND event = 'login' AND outcome = 'success' \
             ORDER BY id DESC LIMIT $2) recent",
        )
        .bind(subject)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)
    }

    async fn login_client_seen(
        &self,
        subject: &str,
        ip: Option<&str>,
        user_agent: Option<&str>,
        limit: u32,
    ) -> StoreResult<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM (SELECT ip, user_agent FROM audit_log \
             WHERE subject = $1 AND event = 'login' AND outcome = 'success' \
             ORDER BY id DESC LIMIT $2) recent \
             WHERE ip IS NOT DISTINCT FROM $3 AND user_agent IS NOT DISTINCT FROM $4)",
        )
        .bind(subject)
        .bind(i64::from(limit))
        .bind(ip)
        .bind(user_agent)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)
    }
}

#[async_trait]
impl MailStore for PgStore {
    async fn enqueue_mail(&self, m: &NewMail) -> StoreResult<i64> {
        sqlx::query_scalar(
            "INSERT INTO mail_queue (recipient, subject, body_text, body_html, created_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
        )
        .bind(&m.to)
        .bind(&m.subject)
        .bind(&m.body_text)
        .bind(&m.body_html)
        .bind(m.created_at)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)
    }

    async fn count_mail(&self) -> StoreResult<(u64, u64)> {
        let (queued, failing): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE attempts > 0) FROM mail_queue")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        Ok((
            u64::try_from(queued).unwrap_or(0),
            u64::try_from(failing).unwrap_or(0),
        ))
    }

    async fn list_due_mail(&self, now: UnixTime, limit: u32) -> StoreResult<Vec<MailRecord>> {
        let found = sqlx::query(
            "SELECT id, recipient, subject, body_text, body_html, created_at, attempts, next_attempt_at \
             FROM mail_queue WHERE next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows(&found, |r| {
            Ok(MailRecord {
                id: r.try_get("id")?,
                to: r.try_get("recipient")?,
                subject: r.try_get("subject")?,
                body_text: r.try_get("body_text")?,
                body_html: r.try_get("body_html")?,
                created_at: r.try_get("created_at")?,
                attempts: count(r.try_get("attempts")?),
                next_attempt_at: r.try_get("next_attempt_at")?,
            })
        })
    }

    async fn delete_mail(&self, id: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM mail_queue WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn update_mail_failed(
        &self,
        id: i64,
        next_attempt_at: UnixTime,
        error: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE mail_queue SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 WHERE id = $3",
        )
        .bind(next_attempt_at)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}

const TOTP_COLUMNS: &str = "user_id, secret_sealed, key_id, algorithm, digits, period, created_at, confirmed_at, last_used_step";

fn totp_from_row(r: &PgRow) -> Result<TotpFactorRecord, sqlx::Error> {
    let digits: i64 = r.try_get("digits")?;
    let period: i64 = r.try_get("period")?;
    Ok(TotpFactorRecord {
        user: r.try_get("user_id")?,
        secret_sealed: r.try_get("secret_sealed")?,
        key_id: r.try_get("key_id")?,
        algorithm: r.try_get("algorithm")?,
        digits: u32::try_from(digits).unwrap_or(0),
        period: u32::try_from(period).unwrap_or(0),
        created_at: r.try_get("created_at")?,
        confirmed_at: r.try_get("confirmed_at")?,
        last_used_step: r.try_get("last_used_step")?,
    })
}

#[async_trait]
impl TwoFactorStore for PgStore {
    async fn upsert_pending_totp(&self, f: &NewTotpFactor) -> StoreResult<()> {
        // Replaces only an unconfirmed factor: the WHERE on the upsert leaves a confirmed one alone.
        let r = sqlx::query(
            "INSERT INTO totp_factors (user_id, secret_sealed, key_id, algorithm, digits, period, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (user_id) DO UPDATE SET secret_sealed = $2, key_id = $3, algorithm = $4, digits = $5, \
               period = $6, created_at = $7, last_used_step = NULL \
             WHERE totp_factors.confirmed_at IS NULL",
        )
        .bind(f.user)
        .bind(&f.secret_sealed)
        .bind(&f.key_id)
        .bind(&f.algorithm)
        .bind(i64::from(f.digits))
        .bind(i64::from(f.period))
        .bind(f.created_at)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict("a confirmed factor exists"));
        }
        Ok(())
    }

    async fn find_totp(&self, user: UserId) -> StoreResult<Option<TotpFactorRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {TOTP_COLUMNS} FROM totp_factors WHERE user_id = $1"
        ))
        .bind(user)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(totp_from_row).transpose().map_err(map_err)
    }

    async fn confirm_totp(&self, user: UserId, at: UnixTime, step: i64) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE totp_factors SET confirmed_at = $1, last_used_step = $2 \
             WHERE user_id = $3 AND confirmed_at IS NULL",
        )
        .bind(at)
        .bind(step)
        .bind(user)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn update_totp_step(&self, user: UserId, step: i64) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE totp_factors SET last_used_step = $1 WHERE user_id = $2 AND confirmed_at IS NOT NULL \
             AND (last_used_step IS NULL OR last_used_step < $1)",
        )
        .bind(step)
        .bind(user)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_totp(&self, user: UserId) -> StoreResult<bool> {
        let r = sqlx::query("DELETE FROM totp_factors WHERE user_id = $1")
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn list_totp_factors(&self) -> StoreResult<Vec<TotpFactorRecord>> {
        let found = sqlx::query(&format!(
            "SELECT {TOTP_COLUMNS} FROM totp_factors ORDER BY user_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows(&found, totp_from_row)
    }

    async fn totp_key_ids(&self) -> StoreResult<Vec<String>> {
        sqlx::query_scalar("SELECT DISTINCT key_id FROM totp_factors ORDER BY key_id")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn update_totp_secret(
        &self,
        user: UserId,
        sealed: &str,
        key_id: &str,
        old_key_id: &str,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE totp_factors SET secret_sealed = $1, key_id = $2 WHERE user_id = $3 AND key_id = $4",
        )
        .bind(sealed)
        .bind(key_id)
        .bind(user)
        .bind(old_key_id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn replace_recovery_codes(
        &self,
        user: UserId,
        hashes: &[String],
        at: UnixTime,
    ) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = self.begin(&mut conn).await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO recovery_codes (user_id, code_hash, created_at) \
             SELECT $1, h, $3 FROM unnest($2::text[]) AS h",
        )
        .bind(user)
        .bind(hashes)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn use_recovery_code(&self, user: UserId, hash: &str, at: UnixTime) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(at)
        .bind(user)
        .bind(hash)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn count_recovery_codes(&self, user: UserId) -> StoreResult<u32> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(count(n))
    }

    async fn delete_recovery_codes(&self, user: UserId) -> StoreResult<()> {
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn insert_email_code(
        &self,
        user: UserId,
        hash: &str,
        created_at: UnixTime,
        expires_at: UnixTime,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO email_codes (user_id, code_hash, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(user)
        .bind(hash)
        .bind(created_at)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn consume_email_code(
        &self,
        user: UserId,
        hash: &str,
        now: UnixTime,
    ) -> StoreResult<bool> {
        // The outer `used_at IS NULL` is re-checked on the locked row: of two concurrent
        // calls picking the same code, the second matches nothing once the first commits.
        let r = sqlx::query(
            "UPDATE email_codes SET used_at = $3 WHERE id = \
             (SELECT id FROM email_codes WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL \
              AND expires_at > $3 ORDER BY id LIMIT 1) \
             AND used_at IS NULL",
        )
        .bind(user)
        .bind(hash)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn count_email_codes_since(&self, user: UserId, since: UnixTime) -> StoreResult<u32> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM email_codes WHERE user_id = $1 AND created_at >= $2",
        )
        .bind(user)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(count(n))
    }
}

const DEVICE_COLUMNS: &str = "id, user_id, name, created_at, last_used_at, last_ip, expires_at";

fn device_from_row(r: &PgRow) -> Result<TrustedDeviceRecord, sqlx::Error> {
    Ok(TrustedDeviceRecord {
        id: r.try_get("id")?,
        user: r.try_get("user_id")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
        last_ip: r.try_get("last_ip")?,
        expires_at: r.try_get("expires_at")?,
    })
}

#[async_trait]
impl TrustedDeviceStore for PgStore {
    async fn insert_trusted_device(
        &self,
        d: &NewTrustedDevice,
    ) -> StoreResult<TrustedDeviceRecord> {
        let row = sqlx::query(&format!(
            "INSERT INTO trusted_devices (token_hash, user_id, name, created_at, last_used_at, last_ip, expires_at) \
             VALUES ($1, $2, $3, $4, $4, $5, $6) RETURNING {DEVICE_COLUMNS}"
        ))
        .bind(d.token_hash.as_str())
        .bind(d.user)
        .bind(&d.name)
        .bind(d.created_at)
        .bind(&d.ip)
        .bind(d.expires_at)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        device_from_row(&row).map_err(map_err)
    }

    async fn find_trusted_device(
        &self,
        hash: &TokenHash,
    ) -> StoreResult<Option<TrustedDeviceRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM trusted_devices WHERE token_hash = $1"
        ))
        .bind(hash.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref()
            .map(device_from_row)
            .transpose()
            .map_err(map_err)
    }

    async fn touch_trusted_device(
        &self,
        id: i64,
        at: UnixTime,
        ip: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE trusted_devices SET last_used_at = $1, last_ip = coalesce($2, last_ip) WHERE id = $3",
        )
        .bind(at)
        .bind(ip)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn list_user_trusted_devices(
        &self,
        user: UserId,
    ) -> StoreResult<Vec<TrustedDeviceRecord>> {
        let found = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM trusted_devices WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows(&found, device_from_row)
    }

    async fn delete_trusted_device(&self, user: UserId, id: i64) -> StoreResult<bool> {
        let r = sqlx::query("DELETE FROM trusted_devices WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_user_trusted_devices(&self, user: UserId) -> StoreResult<u64> {
        let r = sqlx::query("DELETE FROM trusted_devices WHERE user_id = $1")
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(r.rows_affected())
    }
}

const API_KEY_COLUMNS: &str =
    "id, user_id, name, display_prefix, scopes, created_at, expires_at, last_used_at, revoked_at";

fn api_key_from_row(row: &PgRow) -> Result<ApiKeyRecord, sqlx::Error> {
    let scopes: String = row.try_get("scopes")?;
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        user: row.try_get("user_id")?,
        name: row.try_get("name")?,
        display_prefix: row.try_get("display_prefix")?,
        scopes: Scopes::from_stored(&scopes),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

#[async_trait]
impl ApiKeyStore for PgStore {
    async fn insert_api_key(&self, k: &NewApiKey) -> StoreResult<ApiKeyRecord> {
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys (user_id, name, digest, display_prefix, scopes, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {API_KEY_COLUMNS}"
        ))
        .bind(k.user)
        .bind(k.name.as_str())
        .bind(k.digest.as_str())
        .bind(&k.display_prefix)
        .bind(k.scopes.to_stored())
        .bind(k.created_at)
        .bind(k.expires_at)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        api_key_from_row(&row).map_err(map_err)
    }

    async fn find_api_key(&self, digest: &ApiKeyDigest) -> StoreResult<Option<ApiKeyRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE digest = $1"
        ))
        .bind(digest.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref()
            .map(api_key_from_row)
            .transpose()
            .map_err(map_err)
    }

    async fn list_user_api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>> {
        let found = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows(&found, api_key_from_row)
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        let found = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY user_id, created_at DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows(&found, api_key_from_row)
    }

    async fn revoke_api_key(&self, user: UserId, id: i64, at: UnixTime) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .bind(user)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn revoke_user_api_keys(&self, user: UserId, at: UnixTime) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(user)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(r.rows_affected())
    }

    async fn update_api_keys_last_used(&self, uses: &[(i64, UnixTime)]) -> StoreResult<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let (ids, times): (Vec<i64>, Vec<i64>) = uses.iter().copied().unzip();
        // One statement; the newest time per key wins, and a time never moves backwards.
        sqlx::query(
            "UPDATE api_keys k SET last_used_at = u.at \
             FROM (SELECT id, max(at) AS at FROM unnest($1::bigint[], $2::bigint[]) AS t(id, at) GROUP BY id) u \
             WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
        )
        .bind(&ids)
        .bind(&times)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl SettingsStore for PgStore {
    async fn list_settings(&self) -> StoreResult<Vec<SettingRecord>> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT name, value, updated_at FROM settings ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|(name, value, updated_at)| SettingRecord {
                name,
                value,
                updated_at,
            })
            .collect())
    }

    async fn seed_settings(&self, initial: &[(String, String)], at: UnixTime) -> StoreResult<bool> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = self.begin(&mut conn).await?;
        // A second node starting at the same moment waits here, then finds the settings stored.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SETTINGS_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM settings")
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if stored > 0 {
            return Ok(false);
        }
        for (name, value) in initial {
            sqlx::query("INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(value)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn change_settings(&self, changes: &[SettingChange], at: UnixTime) -> StoreResult<bool> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = self.begin(&mut conn).await?;
        for c in changes {
            let done = match (&c.old, &c.new) {
                (None, Some(new)) => sqlx::query(
                    "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(&c.name)
                .bind(new)
                .bind(at)
                .execute(&mut *tx)
                .await,
                (Some(old), Some(new)) => sqlx::query(
                    "UPDATE settings SET value = $1, updated_at = $2 WHERE name = $3 AND value = $4",
                )
                .bind(new)
                .bind(at)
                .bind(&c.name)
                .bind(old)
                .execute(&mut *tx)
                .await,
                (Some(old), None) => sqlx::query("DELETE FROM settings WHERE name = $1 AND value = $2")
                    .bind(&c.name)
                    .bind(old)
                    .execute(&mut *tx)
                    .await,
                (None, None) => {
                    let absent: bool =
                        sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM settings WHERE name = $1)")
                            .bind(&c.name)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(map_err)?;
                    if !absent {
                        return Ok(false);
                    }
                    continue;
                }
            }
            .map_err(map_err)?;
            if done.rows_affected() != 1 {
                // Dropping the transaction rolls back the steps already taken.
                return Ok(false);
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> StoreResult<()> {
        // A session-level lock on a connection of its own: a node starting at the same time
        // waits here, then finds the schema up to date. Closing the connection releases the
        // lock even if this future is dropped halfway.
        let mut conn = PgConnection::connect_with(&self.options)
            .await
            .map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut conn)
            .await
            .map_err(map_err)?;
        let result = self.migrate_locked(&mut conn).await;
        // Closing the session is what releases the lock; an error closing it changes nothing.
        conn.close().await.ok();
        result
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[cfg(all(test, feature = "testing"))]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_transaction_left_open_is_ended_by_the_server_and_frees_the_audit_lock() {
        let url = testing::fresh_database_url().await;
        let settings = PoolSettings {
            idle_in_transaction_timeout: Duration::from_millis(500),
            ..PoolSettings::default()
        };
        let store = PgStore::connect(&url, settings).await.unwrap();
        store.migrate().await.unwrap();
        // A bug leaves a transaction open on one of the pool's connections, holding the
        // audit chain's lock.
        let mut leaked = store.pool.acquire().await.unwrap();
        let mut tx = store.begin(&mut leaked).await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *tx)
            .await
            .unwrap();
        // Nothing rolls it back (as after the cancelled begins the pool now closes).
        std::mem::forget(tx);

        // Another node's audited action waits for the lock only until the server ends the
        // abandoned transaction.
        let other = PgStore::connect(&url, PoolSettings::default())
            .await
            .unwrap();
        let event = NewAuditEvent {
            at: 1_700_000_000,
            actor: Some("cli".into()),
            subject: Some("alice".into()),
            event: "user_disabled".into(),
            outcome: "success".into(),
            detail: None,
            ip: None,
            user_agent: None,
        };
        let appended = tokio::time::timeout(Duration::from_secs(20), other.append_audit(&event))
            .await
            .expect("the audit append still waits for the abandoned lock");
        appended.unwrap();

        // The abandoned connection is gone, and a use of it says so.
        let err = sqlx::query("SELECT 1")
            .execute(leaked.connection().unwrap())
            .await
            .unwrap_err();
        assert!(connection_lost(&err), "{err}");
        drop(leaked);
        // The store goes on with a new connection.
        store.append_audit(&event).await.unwrap();
    }
}
