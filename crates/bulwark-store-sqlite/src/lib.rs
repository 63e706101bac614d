//! SQLite backend: one file in the data directory, WAL mode, zero setup.

use async_trait::async_trait;
use bulwark_core::account::{Email, GroupName, Login};
use bulwark_core::api_key::{ApiKeyDigest, Scopes};
use bulwark_core::audit;
use bulwark_core::password::hash::PasswordHash;
use bulwark_core::token::TokenHash;
use bulwark_core::UnixTime;
use bulwark_store::*;
use bulwark_store_pool::{Connections, Settings, IDLE_TIMEOUT};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

mod bulk;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A Bulwark store on one SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: Connections<Sqlite>,
    /// Reads over every user, for a database file (not an in-memory database).
    bulk: Option<Arc<bulk::BulkReader>>,
    /// The audit chain's head as this store last wrote it (see `AuditHead`).
    audit_head: Arc<AuditHead>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or `sqlite::memory:`).
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        Self::connect_with_timeout(url, max_connections, Duration::from_secs(10)).await
    }

    /// Like [`SqliteStore::connect`], waiting at most `acquire_timeout` for a free connection.
    pub async fn connect_with_timeout(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // sqlx names an in-memory database like a file (`file:sqlx-in-memory-…`): no file.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            create_private_file(options.get_filename())?;
        }
        let bulk = (!in_memory)
            .then(|| Arc::new(bulk::BulkReader::new(options.get_filename().to_path_buf())));
        let pool = Connections::open(
            options,
            Settings {
                max_connections,
                acquire_timeout,
                // A local file does not go stale.
                ping_after_idle: None,
                idle_timeout: Some(IDLE_TIMEOUT),
                // The one failure that outlives a statement.
                broken: |e| matches!(e, sqlx::Error::WorkerCrashed),
            },
        )
        .await
        .map_err(map_err)?;
        Ok(Self {
            pool,
            bulk,
            audit_head: Arc::default(),
        })
    }

    /// Opens the database file at `path`.
    pub async fn open(path: &Path, max_connections: u32) -> StoreResult<Self> {
        Self::connect(&format!("sqlite://{}", path.display()), max_connections).await
    }

    /// The migration versions this build knows, oldest first.
    pub fn migration_versions() -> Vec<i64> {
        MIGRATOR.iter().map(|m| m.version).collect()
    }

    /// Writes a consistent copy of the whole database to `dest`, a path that must not exist
    /// yet, while other connections (a running server) keep reading and writing. The copy is
    /// created readable by its owner only and needs no journal file beside it.
    pub async fn backup_into(&self, dest: &Path) -> StoreResult<()> {
        if dest.exists() {
            return Err(StoreError::Conflict("the backup file exists already"));
        }
        let dest_text = dest
            .to_str()
            .ok_or_else(|| StoreError::Backend("the backup path is not valid UTF-8".into()))?;
        // An empty private file first: SQLite fills it and keeps its mode.
        create_private_file(dest)?;
        let result = sqlx::query("VACUUM INTO ?")
            .bind(dest_text)
            .execute(&self.pool)
            .await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(dest);
            return Err(map_err(e));
        }
        Ok(())
    }

    /// Checks a database file without changing it: SQLite's integrity check, and that it is
    /// a Bulwark database this build can run on. Returns its schema version.
    pub async fn check_file(path: &Path) -> StoreResult<i64> {
        let bad = |what: String| StoreError::Backend(format!("{}: {what}", path.display()));
        if !path.is_file() {
            return Err(bad("no such file".into()));
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .immutable(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| bad(format!("cannot open it as a database ({e})")))?;
        let checked = async {
            let problems: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_all(&pool)
                .await
                .map_err(|e| bad(format!("not a readable database ({e})")))?;
            if problems != ["ok"] {
                return Err(bad(format!(
                    "the integrity check failed: {}",
                    problems.join("; ")
                )));
            }
            let (version, failed): (Option<i64>, i64) = sqlx::query_as(
                "SELECT max(version), coalesce(sum(NOT success), 0) FROM _sqlx_migrations",
            )
            .fetch_one(&pool)
            .await
            .map_err(|_| bad("not a Bulwark database (it has no schema history)".into()))?;
            let version = version.ok_or_else(|| bad("its schema history is empty".into()))?;
            if failed > 0 {
                return Err(bad("a schema migration in it did not finish".into()));
            }
            let known = Self::migration_versions().last().copied().unwrap_or(0);
            if version > known {
                return Err(bad(format!(
                    "its schema version {version} is newer than this build knows ({known}): use a newer bulwark"
                )));
            }
            Ok(version)
        }
        .await;
        pool.close().await;
        checked
    }

    /// The newest migration applied to the database, if any.
    pub async fn schema_version(&self) -> StoreResult<Option<i64>> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        if !exists {
            return Ok(None);
        }
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }
}

/// Creates a missing database file readable by its owner only (it holds password hashes);
/// SQLite gives its journal files the same mode. An existing file is left as it is.
fn create_private_file(path: &Path) -> StoreResult<()> {
    if path == Path::new(":memory:") || path.as_os_str().is_empty() || path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create database file {}: {e}",
            path.display()
        ))),
    }
}

const AUDIT_COLUMNS: &str =
    "id, at, actor, subject, event, outcome, detail, ip, user_agent, prev_hash, hash";

fn audit_record(r: &SqliteRow) -> StoreResult<AuditRecord> {
    (|| -> Result<AuditRecord, sqlx::Error> {
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
    })()
    .map_err(map_err)
}

/// The id and hash the next audit event follows: the newest event, else the newest
/// checkpoint (everything was pruned), else the genesis.
async fn chain_head(conn: &mut sqlx::SqliteConnection) -> StoreResult<ChainHead> {
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
    let (id, hash) = checkpoint.unwrap_or_else(|| (0, audit::GENESIS.to_string()));
    Ok(ChainHead { id, hash })
}

/// Appends an event (under the write lock, after reading the head), bound by `bind_audit`.
const AUDIT_APPEND: &str = "INSERT INTO audit_log \
     (id, at, actor, subject, event, outcome, detail, ip, user_agent, prev_hash, hash) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Appends an event bound by `bind_audit` only if the head it links to (id, id, hash,
/// bound after it) is still the newest event (see `AuditHead`).
const AUDIT_LINK: &str = "INSERT INTO audit_log \
     (id, at, actor, subject, event, outcome, detail, ip, user_agent, prev_hash, hash) \
     SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? \
     WHERE (SELECT max(id) FROM audit_log) = ? AND (SELECT hash FROM audit_log WHERE id = ?) = ?";

/// Binds event `next.id` of the chain, after the event hashed `prev_hash`.
fn bind_audit<'q>(
    q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    e: &'q NewAuditEvent,
    prev_hash: &'q str,
    next: &'q ChainHead,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
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

/// Seals events written before the chain existed (migration 0005) into it, in id order.
async fn seal_audit_backlog(pool: &Connections<Sqlite>) -> StoreResult<()> {
    loop {
        let mut conn = pool.acquire().await.map_err(map_err)?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE hash IS NULL ORDER BY id LIMIT 500"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let first_id: i64 = first.try_get("id").map_err(map_err)?;
        let before: Option<Option<String>> =
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE id < ? ORDER BY id DESC LIMIT 1")
                .bind(first_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let mut prev = before
            .flatten()
            .unwrap_or_else(|| audit::GENESIS.to_string());
        for row in &rows {
            let record = audit_record(row)?;
            let hash = audit::link_hash(&prev, &record.link_fields());
            sqlx::query("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE id = ?")
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

fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict("already exists")
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
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
    ", (SELECT group_concat(group_name, ',') FROM user_groups g WHERE g.user_id = users.id) \
     AS groups"
);

/// What the reports over every user read of each ([`SecurityRow`]), with the summary the
/// triggers of migration 0009 keep on the user's row.
pub(crate) const REPORT_COLUMNS: &str = "id, login, email, display_name, active, created_at, \
     last_login_at, password_changed_at, password_hash IS NOT NULL AS has_password, \
     device_account, grace_started_at, group_list AS groups, totp_confirmed AS totp_active, \
     recovery_codes_left AS codes_left";

/// A user and their second factors for the admin console's list, from the summary the
/// triggers of migration 0009 keep on the user's row.
pub(crate) const SUMMARY_COLUMNS: &str = concat!(
    user_columns!(),
    ", group_list AS groups, totp_confirmed AS totp_active, recovery_codes_left AS codes_left"
);

fn report_row(row: &SqliteRow) -> Result<SecurityRow<'_>, sqlx::Error> {
    let codes: i64 = row.try_get("codes_left")?;
    Ok(SecurityRow {
        id: row.try_get("id")?,
        login: row.try_get("login")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        active: row.try_get("active")?,
        created_at: row.try_get("created_at")?,
        last_login_at: row.try_get("last_login_at")?,
        password_changed_at: row.try_get("password_changed_at")?,
        has_password: row.try_get("has_password")?,
        device_account: row.try_get("device_account")?,
        grace_started_at: row.try_get("grace_started_at")?,
        groups: row.try_get::<Option<&str>, _>("groups")?.unwrap_or(""),
        totp_active: row.try_get("totp_active")?,
        recovery_codes_left: u32::try_from(codes).unwrap_or(0),
    })
}

fn throttle_from_row(r: &SqliteRow) -> Result<ThrottleRecord, sqlx::Error> {
    let failures: i64 = r.try_get("failures")?;
    Ok(ThrottleRecord {
        failures: u32::try_from(failures).unwrap_or(u32::MAX),
        last_failure_at: r.try_get("last_failure_at")?,
        blocked_until: r.try_get("blocked_until")?,
    })
}

fn user_from_row(row: &SqliteRow) -> Result<UserRecord, sqlx::Error> {
    let groups: Option<&str> = row.try_get("groups")?;
    let groups = split_groups(groups.unwrap_or_default());
    Ok(UserRecord {
        id: row.try_get("id")?,
        login: row.try_get("login")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        active: row.try_get("active")?,
        groups,
        created_at: row.try_get("created_at")?,
        last_login_at: row.try_get("last_login_at")?,
        password_changed_at: row.try_get("password_changed_at")?,
        must_change_password: row.try_get("must_change_password")?,
        has_password: row.try_get("has_password")?,
        device_account: row.try_get("device_account")?,
        allowed_networks: split_list(row.try_get::<&str, _>("allowed_networks")?),
        grace_started_at: row.try_get("grace_started_at")?,
    })
}

/// A comma-separated list of group names, sorted.
fn split_groups(list: &str) -> Vec<String> {
    let mut groups: Vec<String> = list
        .split(',')
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect();
    groups.sort();
    groups
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn session_from_row(row: &SqliteRow) -> Result<SessionRecord, sqlx::Error> {
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

fn token_from_row(row: &SqliteRow) -> Result<OneTimeTokenRecord, sqlx::Error> {
    Ok(OneTimeTokenRecord {
        id: row.try_get("id")?,
        user: row.try_get("user_id")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
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
impl UserStore for SqliteStore {
    async fn insert_user(&self, user: &NewUser) -> StoreResult<UserRecord> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = conn.begin().await.map_err(map_err)?;
        let email = user.email.as_ref().map(|e| e.as_str().to_string());
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (login, email, email_lower, display_name, password_hash, password_changed_at, \
             must_change_password, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
            sqlx::query("INSERT OR IGNORE INTO user_groups (user_id, group_name) VALUES (?, ?)")
                .bind(id)
                .bind(group.as_str())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        if let Some(hash) = &user.password_hash {
            sqlx::query(
                "INSERT INTO password_history (user_id, hash, created_at) VALUES (?, ?, ?)",
            )
            .bind(id)
            .bind(hash.as_str())
            .bind(user.created_at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        // Given back before the read below: a pool of one would wait for itself.
        drop(conn);
        self.get_user(id).await
    }

    async fn get_user(&self, id: UserId) -> StoreResult<UserRecord> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        user_from_row(&row).map_err(map_err)
    }

    async fn find_user_by_login(&self, login: &Login) -> StoreResult<Option<UserRecord>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE login = ?");
        let row = sqlx::query(&sql)
            .bind(login.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(user_from_row).transpose().map_err(map_err)
    }

    async fn find_users_by_email(&self, email: &Email) -> StoreResult<Vec<UserRecord>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email_lower = ? ORDER BY login");
        let rows = sqlx::query(&sql)
            .bind(email.as_str().to_lowercase())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(user_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn list_users(&self, filter: &UserFilter) -> StoreResult<Vec<UserRecord>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE \
             (?1 IS NULL OR login LIKE ?1 ESCAPE '\\' OR email_lower LIKE ?1 ESCAPE '\\' \
              OR lower(display_name) LIKE ?1 ESCAPE '\\') \
             AND (?2 IS NULL OR EXISTS (SELECT 1 FROM user_groups g WHERE g.user_id = users.id AND g.group_name = ?2)) \
             ORDER BY login LIMIT ?3 OFFSET ?4"
        );
        let rows = sqlx::query(&sql)
            .bind(filter.search.as_deref().map(like_pattern))
            .bind(filter.group.as_deref())
            .bind(i64::from(filter.limit))
            .bind(i64::from(filter.offset))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(user_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn count_active_in_group(&self, group: &GroupName) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM users u JOIN user_groups g ON g.user_id = u.id WHERE g.group_name = ? AND u.active",
        )
        .bind(group.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list_user_security(
        &self,
        after_id: UserId,
        up_to: UserId,
        limit: u32,
    ) -> StoreResult<SecurityPage> {
        if let Some(bulk) = &self.bulk {
            return bulk.user_security(after_id, up_to, limit).await;
        }
        let sql = format!(
            "SELECT {REPORT_COLUMNS} FROM users WHERE id > ? AND id <= ? ORDER BY id LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(after_id)
            .bind(up_to)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        let mut page = SecurityPage::with_capacity(rows.len());
        for r in &rows {
            page.push(report_row(r).map_err(map_err)?);
        }
        Ok(page)
    }

    async fn max_user_id(&self) -> StoreResult<UserId> {
        sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn list_users_for_admin(&self, f: &AdminUserFilter) -> StoreResult<Vec<UserSecurity>> {
        let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM users WHERE 1 = 1");
        let mut text: Vec<String> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        if let Some(search) = &f.search {
            sql.push_str(
                " AND (login LIKE ? ESCAPE '\\' OR email_lower LIKE ? ESCAPE '\\' \
                 OR lower(display_name) LIKE ? ESCAPE '\\')",
            );
            let pattern = like_pattern(search);
            text.extend([pattern.clone(), pattern.clone(), pattern]);
        }
        if let Some(group) = &f.group {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM user_groups g \
                 WHERE g.user_id = users.id AND g.group_name = ?)",
            );
            text.push(group.clone());
        }
        if let Some(after) = &f.after_login {
            sql.push_str(" AND login > ?");
            text.push(after.clone());
        }
        if let Some(on) = f.two_factor {
            sql.push_str(if on {
                " AND EXISTS (SELECT 1 FROM totp_factors t \
                 WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL)"
            } else {
                " AND NOT EXISTS (SELECT 1 FROM totp_factors t \
                 WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL)"
            });
        }
        if let Some(active) = f.active {
            sql.push_str(if active {
                " AND active"
            } else {
                " AND NOT active"
            });
        }
        if let Some(now) = f.locked_at {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM throttles th \
                 WHERE th.key = 'login:' || users.login AND th.blocked_until > ?)",
            );
            numbers.push(now);
        }
        if let Some(since) = f.idle_since {
            sql.push_str(" AND coalesce(last_login_at, created_at) < ?");
            numbers.push(since);
        }
        if let Some(before) = f.password_changed_before {
            sql.push_str(" AND password_hash IS NOT NULL AND password_changed_at < ?");
            numbers.push(before);
        }
        sql.push_str(" ORDER BY login LIMIT ?");
        let mut query = sqlx::query(&sql);
        for t in &text {
            query = query.bind(t);
        }
        for n in numbers {
            query = query.bind(n);
        }
        let rows = query
            .bind(i64::from(f.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| -> Result<UserSecurity, sqlx::Error> {
                let codes: i64 = r.try_get("codes_left")?;
                Ok(UserSecurity {
                    user: user_from_row(r)?,
                    totp_active: r.try_get("totp_active")?,
                    recovery_codes_left: u32::try_from(codes).unwrap_or(0),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn update_profile(
        &self,
        id: UserId,
        email: Option<&Email>,
        display_name: &str,
    ) -> StoreResult<()> {
        let r = sqlx::query(
            "UPDATE users SET email = ?, email_lower = ?, display_name = ? WHERE id = ?",
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
        let r = sqlx::query("UPDATE users SET active = ? WHERE id = ?")
            .bind(active)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        found(r.rows_affected())
    }

    async fn update_groups(&self, id: UserId, groups: &[GroupName]) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = conn.begin().await.map_err(map_err)?;
        // The first statement writes, so the transaction takes the write lock at once.
        sqlx::query("DELETE FROM user_groups WHERE user_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        for group in groups {
            sqlx::query("INSERT OR IGNORE INTO user_groups (user_id, group_name) VALUES (?, ?)")
                .bind(id)
                .bind(group.as_str())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn delete_user(&self, id: UserId) -> StoreResult<()> {
        let r = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        found(r.rows_affected())
    }

    async fn find_password_hash(&self, id: UserId) -> StoreResult<Option<PasswordHash>> {
        let hash: Option<Option<String>> =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        hash.flatten().map(stored_hash).transpose()
    }

    async fn find_login_candidate(&self, login: &Login) -> StoreResult<Option<LoginCandidate>> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, password_hash, EXISTS (SELECT 1 FROM totp_factors t \
             WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL) AS totp_confirmed \
             FROM users WHERE login = ?"
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

    async fn clear_password(&self, id: UserId) -> StoreResult<()> {
        let r = sqlx::query("UPDATE users SET password_hash = NULL WHERE id = ?")
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
        let mut tx = conn.begin().await.map_err(map_err)?;
        let r = sqlx::query("UPDATE users SET password_hash = ?, password_changed_at = ?, must_change_password = ? WHERE id = ?")
            .bind(change.hash.as_str())
            .bind(change.changed_at)
            .bind(change.must_change)
            .bind(change.user)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        found(r.rows_affected())?;
        sqlx::query("INSERT INTO password_history (user_id, hash, created_at) VALUES (?, ?, ?)")
            .bind(change.user)
            .bind(change.hash.as_str())
            .bind(change.changed_at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let keep = i64::try_from(change.keep_history.max(1)).unwrap_or(i64::MAX);
        sqlx::query(
            "DELETE FROM password_history WHERE user_id = ?1 AND id NOT IN \
             (SELECT id FROM password_history WHERE user_id = ?1 ORDER BY id DESC LIMIT ?2)",
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
        let mut tx = conn.begin().await.map_err(map_err)?;
        let r = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(hash.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        found(r.rows_affected())?;
        sqlx::query(
            "UPDATE password_history SET hash = ?1 WHERE id = (SELECT max(id) FROM password_history WHERE user_id = ?2)",
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
            "SELECT hash FROM password_history WHERE user_id = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        hashes.into_iter().map(stored_hash).collect()
    }

    async fn update_must_change_password(&self, id: UserId, must_change: bool) -> StoreResult<()> {
        let r = sqlx::query("UPDATE users SET must_change_password = ? WHERE id = ?")
            .bind(must_change)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        found(r.rows_affected())
    }

    async fn update_last_login(&self, id: UserId, at: UnixTime) -> StoreResult<()> {
        let r = sqlx::query("UPDATE users SET last_login_at = ? WHERE id = ?")
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
        let r =
            sqlx::query("UPDATE users SET device_account = ?, allowed_networks = ? WHERE id = ?")
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
            "UPDATE users SET grace_started_at = coalesce(grace_started_at, ?) WHERE id = ? RETURNING grace_started_at",
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
impl SessionStore for SqliteStore {
    async fn insert_session(&self, s: &NewSession) -> StoreResult<SessionRecord> {
        let row = sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, stage, two_factor, created_at, last_seen_at, ip, user_agent) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id, user_id, stage, two_factor, created_at, last_seen_at, ip, user_agent, coalesce(password_checked_at, created_at) AS password_checked_at",
        )
        .bind(s.token_hash.as_str())
        .bind(s.user)
        .bind(s.stage.as_str())
        .bind(s.two_factor)
        .bind(s.created_at)
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
        let r = sqlx::query("UPDATE sessions SET password_checked_at = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        found(r.rows_affected())
    }

    async fn find_session(&self, hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query("SELECT id, user_id, stage, two_factor, created_at, last_seen_at, ip, user_agent, coalesce(password_checked_at, created_at) AS password_checked_at FROM sessions WHERE token_hash = ?")
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
        sqlx::query("UPDATE sessions SET last_seen_at = max(last_seen_at, ?) WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn delete_session(&self, id: SessionId) -> StoreResult<()> {
        sqlx::query("DELETE FROM sessions WHERE id = ?")
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
        let r = sqlx::query("DELETE FROM sessions WHERE user_id = ? AND (? IS NULL OR id <> ?)")
            .bind(user)
            .bind(keep)
            .bind(keep)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(r.rows_affected())
    }

    async fn list_user_sessions(&self, user: UserId) -> StoreResult<Vec<SessionRecord>> {
        let rows = sqlx::query(
            "SELECT id, user_id, stage, two_factor, created_at, last_seen_at, ip, user_agent, coalesce(password_checked_at, created_at) AS password_checked_at FROM sessions WHERE user_id = ? \
             ORDER BY created_at DESC, id DESC",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(session_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn delete_expired_sessions(
        &self,
        idle_before: UnixTime,
        created_before: UnixTime,
    ) -> StoreResult<u64> {
        let r = sqlx::query("DELETE FROM sessions WHERE last_seen_at < ? OR created_at < ?")
            .bind(idle_before)
            .bind(created_before)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(r.rows_affected())
    }
}

#[async_trait]
impl OneTimeTokenStore for SqliteStore {
    async fn insert_one_time_token(&self, t: &NewOneTimeToken) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO one_time_tokens (token_hash, purpose, user_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
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
             WHERE purpose = ? AND token_hash = ? AND used_at IS NULL AND expires_at > ?",
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
            "UPDATE one_time_tokens SET used_at = ?3 \
             WHERE purpose = ?1 AND token_hash = ?2 AND used_at IS NULL AND expires_at > ?3 \
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
        let r = sqlx::query("UPDATE one_time_tokens SET used_at = ? WHERE user_id = ? AND purpose = ? AND used_at IS NULL")
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
impl ThrottleStore for SqliteStore {
    async fn record_failure(&self, key: &str, now: UnixTime, window_secs: i64) -> StoreResult<u32> {
        let failures: i64 = sqlx::query_scalar(
            "INSERT INTO throttles (key, failures, last_failure_at, blocked_until) VALUES (?1, 1, ?2, 0) \
             ON CONFLICT (key) DO UPDATE SET \
               failures = CASE WHEN ?2 - throttles.last_failure_at > ?3 THEN 1 ELSE throttles.failures + 1 END, \
               last_failure_at = ?2 \
             RETURNING failures",
        )
        .bind(key)
        .bind(now)
        .bind(window_secs)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(u32::try_from(failures).unwrap_or(u32::MAX))
    }

    async fn update_blocked_until(&self, key: &str, until: UnixTime) -> StoreResult<()> {
        sqlx::query("UPDATE throttles SET blocked_until = max(blocked_until, ?) WHERE key = ?")
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
        let sql = format!(
            "SELECT key, failures, last_failure_at, blocked_until FROM throttles \
             WHERE key IN ({})",
            vec!["?"; keys.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for key in keys {
            query = query.bind(*key);
        }
        for row in query.fetch_all(&self.pool).await.map_err(map_err)? {
            let key: &str = row.try_get("key").map_err(map_err)?;
            let record = throttle_from_row(&row).map_err(map_err)?;
            for (slot, _) in found.iter_mut().zip(keys).filter(|(_, k)| **k == key) {
                *slot = Some(record);
            }
        }
        Ok(found)
    }

    async fn delete_throttle(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM throttles WHERE key = ?")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, e: &NewAuditEvent) -> StoreResult<i64> {
        let mut head = self.audit_head.lock().await;
        if let Some(link) = head.link(e) {
            let linked = bind_audit(sqlx::query(AUDIT_LINK), e, &link.head.hash, &link.next)
                .bind(link.head.id)
                .bind(link.head.id)
                .bind(&link.head.hash)
                .execute(&self.pool)
                .await;
            // Not inserted, or failed: the locked append below reads the head again (and
            // reports a failure that persists).
            if linked.is_ok_and(|r| r.rows_affected() == 1) {
                return Ok(head.appended(link.next));
            }
        }
        // BEGIN IMMEDIATE takes the write lock before reading the head, so appends from any
        // number of connections and processes form one chain.
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
        let last = chain_head(&mut tx).await?;
        let next = last.after(e);
        bind_audit(sqlx::query(AUDIT_APPEND), e, &last.hash, &next)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(head.appended(next))
    }

    async fn list_audit(&self, f: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        // Conditions are added only when set: `(? IS NULL OR subject = ?)` would keep SQLite
        // from using the (subject, id) index and scan the whole log. With a subject, the other
        // conditions are checked on that subject's rows (`+event`, `+at` keep the planner on
        // the subject index); without one, on the event index, else on the time index.
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1");
        let indexed = if f.subject.is_some() { "+" } else { "" };
        if f.subject.is_some() {
            sql.push_str(" AND subject = ?");
        }
        if f.event.is_some() {
            sql.push_str(if f.subject.is_some() {
                " AND +event = ?"
            } else {
                " AND event = ?"
            });
        }
        let indexed = if f.event.is_some() { "+" } else { indexed };
        if f.since.is_some() {
            sql.push_str(&format!(" AND {indexed}at >= ?"));
        }
        if f.until.is_some() {
            sql.push_str(&format!(" AND {indexed}at < ?"));
        }
        if f.before_id.is_some() {
            sql.push_str(" AND id < ?");
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        let mut query = sqlx::query(&sql);
        for value in [&f.subject, &f.event].into_iter().flatten() {
            query = query.bind(value);
        }
        for value in [f.since, f.until, f.before_id].into_iter().flatten() {
            query = query.bind(value);
        }
        let rows = query
            .bind(i64::from(f.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(audit_record).collect()
    }

    async fn audit_chain(&self, after_id: i64, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id > ? ORDER BY id LIMIT ?"
        ))
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(audit_record).collect()
    }

    async fn last_audit_before(&self, time: UnixTime) -> StoreResult<Option<AuditRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log \
             WHERE id = (SELECT max(id) FROM audit_log WHERE at < ?)"
        ))
        .bind(time)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(audit_record).transpose()
    }

    async fn prune_audit(&self, c: &AuditCheckpoint) -> StoreResult<u64> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
        let hash: Option<Option<String>> =
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE id = ?")
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
             VALUES (?, ?, ?, ?, ?, ?)",
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
        let removed = sqlx::query("DELETE FROM audit_log WHERE id <= ?")
            .bind(c.last_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        tx.commit().await.map_err(map_err)?;
        Ok(removed)
    }

    async fn count_audit_events(&self, event: &str, since: UnixTime) -> StoreResult<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE event = ? AND +at >= ?")
                .bind(event)
                .bind(since)
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list_audit_checkpoints(&self) -> StoreResult<Vec<AuditCheckpoint>> {
        let rows = sqlx::query(
            "SELECT at, last_id, last_hash, pruned, key_id, signature \
             FROM audit_checkpoints ORDER BY last_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| -> Result<AuditCheckpoint, sqlx::Error> {
                Ok(AuditCheckpoint {
                    at: r.try_get("at")?,
                    last_id: r.try_get("last_id")?,
                    last_hash: r.try_get("last_hash")?,
                    pruned: r.try_get("pruned")?,
                    key_id: r.try_get("key_id")?,
                    signature: r.try_get("signature")?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn recent_login_clients(
        &self,
        subject: &str,
        limit: u32,
    ) -> StoreResult<Vec<(Option<String>, Option<String>)>> {
        sqlx::query_as(
            "SELECT DISTINCT ip, user_agent FROM (SELECT ip, user_agent FROM audit_log \
             WHERE subject = ? AND +event = 'login' AND +outcome = 'success' \
             ORDER BY id DESC LIMIT ?)",
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
        // The inner query runs as a co-routine: EXISTS stops at the first matching row.
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM (SELECT ip, user_agent FROM audit_log \
             WHERE subject = ? AND +event = 'login' AND +outcome = 'success' \
             ORDER BY id DESC LIMIT ?) WHERE ip IS ? AND user_agent IS ?)",
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
impl MailStore for SqliteStore {
    async fn enqueue_mail(&self, m: &NewMail) -> StoreResult<i64> {
        sqlx::query_scalar(
            "INSERT INTO mail_queue (recipient, subject, body_text, body_html, created_at, next_attempt_at) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&m.to)
        .bind(&m.subject)
        .bind(&m.body_text)
        .bind(&m.body_html)
        .bind(m.created_at)
        .bind(m.created_at)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)
    }

    async fn count_mail(&self) -> StoreResult<(u64, u64)> {
        let (queued, failing): (i64, i64) =
            sqlx::query_as("SELECT count(*), coalesce(sum(attempts > 0), 0) FROM mail_queue")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        Ok((
            u64::try_from(queued).unwrap_or(0),
            u64::try_from(failing).unwrap_or(0),
        ))
    }

    async fn list_due_mail(&self, now: UnixTime, limit: u32) -> StoreResult<Vec<MailRecord>> {
        let rows = sqlx::query(
            "SELECT id, recipient, subject, body_text, body_html, created_at, attempts, next_attempt_at \
             FROM mail_queue WHERE next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| -> Result<MailRecord, sqlx::Error> {
                let attempts: i64 = r.try_get("attempts")?;
                Ok(MailRecord {
                    id: r.try_get("id")?,
                    to: r.try_get("recipient")?,
                    subject: r.try_get("subject")?,
                    body_text: r.try_get("body_text")?,
                    body_html: r.try_get("body_html")?,
                    created_at: r.try_get("created_at")?,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    next_attempt_at: r.try_get("next_attempt_at")?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn delete_mail(&self, id: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM mail_queue WHERE id = ?")
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
        sqlx::query("UPDATE mail_queue SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?")
            .bind(next_attempt_at)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

fn totp_from_row(r: &SqliteRow) -> Result<TotpFactorRecord, sqlx::Error> {
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

const TOTP_COLUMNS: &str = "user_id, secret_sealed, key_id, algorithm, digits, period, created_at, confirmed_at, last_used_step";

#[async_trait]
impl TwoFactorStore for SqliteStore {
    async fn upsert_pending_totp(&self, f: &NewTotpFactor) -> StoreResult<()> {
        // Replaces only an unconfirmed factor: the WHERE on the upsert leaves a confirmed one alone.
        let r = sqlx::query(
            "INSERT INTO totp_factors (user_id, secret_sealed, key_id, algorithm, digits, period, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (user_id) DO UPDATE SET secret_sealed = ?2, key_id = ?3, algorithm = ?4, digits = ?5, \
               period = ?6, created_at = ?7, last_used_step = NULL \
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
        let sql = format!("SELECT {TOTP_COLUMNS} FROM totp_factors WHERE user_id = ?");
        let row = sqlx::query(&sql)
            .bind(user)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(totp_from_row).transpose().map_err(map_err)
    }

    async fn confirm_totp(&self, user: UserId, at: UnixTime, step: i64) -> StoreResult<bool> {
        let r = sqlx::query("UPDATE totp_factors SET confirmed_at = ?, last_used_step = ? WHERE user_id = ? AND confirmed_at IS NULL")
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
            "UPDATE totp_factors SET last_used_step = ?1 WHERE user_id = ?2 AND confirmed_at IS NOT NULL \
             AND (last_used_step IS NULL OR last_used_step < ?1)",
        )
        .bind(step)
        .bind(user)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_totp(&self, user: UserId) -> StoreResult<bool> {
        let r = sqlx::query("DELETE FROM totp_factors WHERE user_id = ?")
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn list_totp_factors(&self) -> StoreResult<Vec<TotpFactorRecord>> {
        let sql = format!("SELECT {TOTP_COLUMNS} FROM totp_factors ORDER BY user_id");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(totp_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
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
        let r = sqlx::query("UPDATE totp_factors SET secret_sealed = ?, key_id = ? WHERE user_id = ? AND key_id = ?")
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
        let mut tx = conn.begin().await.map_err(map_err)?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = ?")
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        for hash in hashes {
            sqlx::query(
                "INSERT INTO recovery_codes (user_id, code_hash, created_at) VALUES (?, ?, ?)",
            )
            .bind(user)
            .bind(hash)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn use_recovery_code(&self, user: UserId, hash: &str, at: UnixTime) -> StoreResult<bool> {
        let r = sqlx::query("UPDATE recovery_codes SET used_at = ? WHERE user_id = ? AND code_hash = ? AND used_at IS NULL")
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
            "SELECT count(*) FROM recovery_codes WHERE user_id = ? AND used_at IS NULL",
        )
        .bind(user)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    async fn delete_recovery_codes(&self, user: UserId) -> StoreResult<()> {
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = ?")
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
        sqlx::query("INSERT INTO email_codes (user_id, code_hash, created_at, expires_at) VALUES (?, ?, ?, ?)")
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
        let r = sqlx::query(
            "UPDATE email_codes SET used_at = ?3 WHERE id = \
             (SELECT id FROM email_codes WHERE user_id = ?1 AND code_hash = ?2 AND used_at IS NULL AND expires_at > ?3 LIMIT 1) \
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
            "SELECT count(*) FROM email_codes WHERE user_id = ? AND created_at >= ?",
        )
        .bind(user)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(u32::try_from(n).unwrap_or(0))
    }
}

fn device_from_row(r: &SqliteRow) -> Result<TrustedDeviceRecord, sqlx::Error> {
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
impl TrustedDeviceStore for SqliteStore {
    async fn insert_trusted_device(
        &self,
        d: &NewTrustedDevice,
    ) -> StoreResult<TrustedDeviceRecord> {
        let row = sqlx::query(
            "INSERT INTO trusted_devices (token_hash, user_id, name, created_at, last_used_at, last_ip, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id, user_id, name, created_at, last_used_at, last_ip, expires_at",
        )
        .bind(d.token_hash.as_str())
        .bind(d.user)
        .bind(&d.name)
        .bind(d.created_at)
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
        let row = sqlx::query(
            "SELECT id, user_id, name, created_at, last_used_at, last_ip, expires_at FROM trusted_devices WHERE token_hash = ?",
        )
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
        sqlx::query("UPDATE trusted_devices SET last_used_at = ?, last_ip = coalesce(?, last_ip) WHERE id = ?")
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
        let rows = sqlx::query(
            "SELECT id, user_id, name, created_at, last_used_at, last_ip, expires_at FROM trusted_devices \
             WHERE user_id = ? ORDER BY created_at DESC, id DESC",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(device_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn delete_trusted_device(&self, user: UserId, id: i64) -> StoreResult<bool> {
        let r = sqlx::query("DELETE FROM trusted_devices WHERE id = ? AND user_id = ?")
            .bind(id)
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_user_trusted_devices(&self, user: UserId) -> StoreResult<u64> {
        let r = sqlx::query("DELETE FROM trusted_devices WHERE user_id = ?")
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(r.rows_affected())
    }
}

const API_KEY_COLUMNS: &str =
    "id, user_id, name, display_prefix, scopes, created_at, expires_at, last_used_at, revoked_at";

fn api_key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord, sqlx::Error> {
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
impl ApiKeyStore for SqliteStore {
    async fn insert_api_key(&self, k: &NewApiKey) -> StoreResult<ApiKeyRecord> {
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys (user_id, name, digest, display_prefix, scopes, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {API_KEY_COLUMNS}"
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
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE digest = ?"
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
        let rows = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = ? ORDER BY created_at DESC, id DESC"
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(api_key_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY user_id, created_at DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(api_key_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn revoke_api_key(&self, user: UserId, id: i64, at: UnixTime) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
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
            "UPDATE api_keys SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
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
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = conn.begin().await.map_err(map_err)?;
        for (id, at) in uses {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = ? \
                 WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            )
            .bind(at)
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

#[async_trait]
impl SettingsStore for SqliteStore {
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
        // BEGIN IMMEDIATE: a second node starting at the same moment waits, then finds the
        // settings stored.
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM settings")
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if stored > 0 {
            return Ok(false);
        }
        for (name, value) in initial {
            sqlx::query("INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?)")
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
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
        for c in changes {
            let done = match (&c.old, &c.new) {
                (None, Some(new)) => {
                    sqlx::query(
                        "INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?) \
                     ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(&c.name)
                    .bind(new)
                    .bind(at)
                    .execute(&mut *tx)
                    .await
                }
                (Some(old), Some(new)) => sqlx::query(
                    "UPDATE settings SET value = ?, updated_at = ? WHERE name = ? AND value = ?",
                )
                .bind(new)
                .bind(at)
                .bind(&c.name)
                .bind(old)
                .execute(&mut *tx)
                .await,
                (Some(old), None) => {
                    sqlx::query("DELETE FROM settings WHERE name = ? AND value = ?")
                        .bind(&c.name)
                        .bind(old)
                        .execute(&mut *tx)
                        .await
                }
                (None, None) => {
                    let absent: bool = sqlx::query_scalar(
                        "SELECT NOT EXISTS (SELECT 1 FROM settings WHERE name = ?)",
                    )
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
impl Store for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        if let Some(found) = self.schema_version().await? {
            if found > known {
                return Err(StoreError::SchemaTooNew { found, known });
            }
        }
        {
            let mut conn = self.pool.acquire().await.map_err(map_err)?;
            MIGRATOR
                .run_direct(conn.connection().map_err(map_err)?)
                .await
                .map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        }
        seal_audit_backlog(&self.pool).await
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}
