//! Reads over every user (the compliance report and export, the reminders) through a
//! connection of their own.
//!
//! sqlx runs SQLite on a worker thread and hands each row to the async side with a copy of
//! every value: about 14 µs a row on two cores, 14 s for a million users before Bulwark has
//! looked at one. This synchronous connection to the same file (the same SQLite library,
//! opened read-only) reads a page of rows on a blocking thread at about 3 µs a row with
//! decoding, and pages of disjoint id ranges on several connections at once. It serves
//! database files only; an in-memory database is read through sqlx.

use crate::REPORT_COLUMNS;
use bulwark_store::{SecurityPage, SecurityRow, StoreError, StoreResult, UserId};
use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Read-only connections to the store's database file, opened when first needed: one per
/// page being read at the same moment, kept for the next pages.
pub(crate) struct BulkReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Connections kept open between reads.
const MAX_IDLE: usize = 4;

/// SQLite's page cache of each connection, as `PRAGMA cache_size` (negative: in KiB).
const BULK_CACHE_KIB: i64 = -256;

impl std::fmt::Debug for BulkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl BulkReader {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Users with `after < id <= up_to`, in id order, at most `limit`, with their second
    /// factors.
    pub(crate) async fn user_security(
        self: &Arc<Self>,
        after: UserId,
        up_to: UserId,
        limit: u32,
    ) -> StoreResult<SecurityPage> {
        let reader = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            reader.with_connection(|c| read_page(c, after, up_to, limit))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("the user read stopped: {e}")))?
    }

    /// Runs `read` on an idle connection, or a new one. A connection whose read failed is
    /// closed, so that the next read starts from a fresh one.
    fn with_connection<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> StoreResult<T> {
        // A panic while reading leaves nothing half-written: the connections only read.
        let idle = || self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = idle().pop();
        let conn = match taken {
            Some(c) => c,
            None => open(&self.path).map_err(map_err)?,
        };
        let result = read(&conn).map_err(map_err);
        if result.is_ok() {
            let mut idle = idle();
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        result
    }
}

fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // A walk reads each page of the user table once, an hour or more apart: SQLite's default
    // cache of 2 MB per connection would only hold on to memory (up to MAX_IDLE of them).
    conn.pragma_update(None, "cache_size", BULK_CACHE_KIB)?;
    Ok(conn)
}

fn read_page(
    conn: &Connection,
    after: UserId,
    up_to: UserId,
    limit: u32,
) -> rusqlite::Result<SecurityPage> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REPORT_COLUMNS} FROM users WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3"
    ))?;
    // Columns by name once per page, by position for every row.
    let at = |name: &str| stmt.column_index(name);
    let c = [
        at("id")?,
        at("login")?,
        at("email")?,
        at("display_name")?,
        at("active")?,
        at("created_at")?,
        at("last_login_at")?,
        at("password_changed_at")?,
        at("has_password")?,
        at("device_account")?,
        at("grace_started_at")?,
        at("groups")?,
        at("totp_active")?,
        at("codes_left")?,
    ];
    let mut rows = stmt.query((after, up_to, i64::from(limit)))?;
    let mut page = SecurityPage::with_capacity(usize::try_from(limit).unwrap_or(0).min(10_000));
    while let Some(r) = rows.next()? {
        let codes: i64 = r.get(c[13])?;
        page.push(SecurityRow {
            id: r.get(c[0])?,
            login: r.get_ref(c[1])?.as_str()?,
            email: r.get_ref(c[2])?.as_str_or_null()?,
            display_name: r.get_ref(c[3])?.as_str()?,
            active: r.get(c[4])?,
            created_at: r.get(c[5])?,
            last_login_at: r.get(c[6])?,
            password_changed_at: r.get(c[7])?,
            has_password: r.get(c[8])?,
            device_account: r.get(c[9])?,
            grace_started_at: r.get(c[10])?,
            groups: r.get_ref(c[11])?.as_str_or_null()?.unwrap_or(""),
            totp_active: r.get(c[12])?,
            recovery_codes_left: u32::try_from(codes).unwrap_or(0),
        });
    }
    Ok(page)
}

fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{CannotOpen, DatabaseBusy, DatabaseLocked};
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | CannotOpen) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}
