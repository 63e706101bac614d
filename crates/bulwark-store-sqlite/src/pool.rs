//! The store's connections to its database file: at most `max` open, each lent for one
//! statement (or one transaction) and given back as it is.
//!
//! sqlx's own pool pings every connection given back to it: on SQLite that is one more round
//! trip to the connection's worker thread after every statement, two thread wake-ups that a
//! login paid six times over (bench_login: 48–59 thread switches per login with sqlx's pool,
//! 31–33 with this one). The ping exists for connections that go stale or are left half-way through a
//! protocol exchange; neither happens here. A connection to a local file does not go stale,
//! and its worker runs commands strictly in order, so whatever a dropped statement or
//! transaction left queued (a transaction dropped unfinished queues its rollback) runs before
//! the next borrower's first statement. The one failure that outlives a statement, a worker
//! thread that stopped (`WorkerCrashed`), closes the connection instead of giving it back.
//!
//! Idle connections stay open (no idle timeout): the pool is small and a reopened connection
//! would lose its statement cache.

use either::Either;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteQueryResult, SqliteRow, SqliteStatement,
    SqliteTypeInfo,
};
use sqlx::{ConnectOptions, Connection, Describe, Execute, Executor, Transaction};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// A bounded set of connections to one database (see the module doc); clones share it.
#[derive(Clone)]
pub(crate) struct Connections(Arc<Shared>);

struct Shared {
    options: SqliteConnectOptions,
    idle: Mutex<Vec<SqliteConnection>>,
    permits: Semaphore,
    acquire_timeout: Duration,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("filename", &self.0.options.get_filename())
            .field("free", &self.0.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// Opens the first connection now, so that a database that cannot be opened is an error
    /// at startup rather than at the first request.
    pub(crate) async fn open(
        options: SqliteConnectOptions,
        max: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let first = options.connect().await?;
        Ok(Self(Arc::new(Shared {
            options,
            idle: Mutex::new(vec![first]),
            permits: Semaphore::new(max.max(1) as usize),
            acquire_timeout,
        })))
    }

    /// Borrows a connection, opening one if none is idle; waits at most the acquire timeout
    /// for a free one (`PoolTimedOut`).
    pub(crate) async fn acquire(&self) -> Result<Conn<'_>, sqlx::Error> {
        let shared = &*self.0;
        tokio::time::timeout(shared.acquire_timeout, async {
            let permit = shared
                .permits
                .acquire()
                .await
                .map_err(|_| sqlx::Error::PoolClosed)?;
            // The most recently used first: its worker thread and page cache are warm.
            let idle = shared.idle.lock().ok().and_then(|mut idle| idle.pop());
            let conn = match idle {
                Some(conn) => conn,
                None => shared.options.connect().await?,
            };
            Ok(Conn {
                conn: Some(conn),
                broken: false,
                home: shared,
                _permit: permit,
            })
        })
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
    }
}

/// A borrowed connection, given back when dropped.
pub(crate) struct Conn<'a> {
    /// Always `Some` until dropped.
    conn: Option<SqliteConnection>,
    /// The worker thread stopped: close it rather than give it back.
    broken: bool,
    home: &'a Shared,
    // Released after `drop` has given the connection back, so the next borrower finds it.
    _permit: SemaphorePermit<'a>,
}

impl Conn<'_> {
    /// The connection, for APIs that take one (migrations).
    pub(crate) fn connection(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// Notes what an error says about the connection itself.
    fn observe(&mut self, error: Option<&sqlx::Error>) {
        self.broken |= error.is_some_and(worker_stopped);
    }

    /// Starts a transaction (`BEGIN`).
    pub(crate) async fn begin(&mut self) -> Result<Transaction<'_, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN").await
    }

    /// Starts a transaction with the given statement (`BEGIN IMMEDIATE`: take the write
    /// lock first). Dropped without a commit, it rolls back before the connection's next use.
    pub(crate) async fn begin_with(
        &mut self,
        statement: &'static str,
    ) -> Result<Transaction<'_, Sqlite>, sqlx::Error> {
        let conn = self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)?;
        match Connection::begin_with(conn, statement).await {
            Ok(tx) => Ok(tx),
            Err(e) => {
                // Not `observe`: the transaction's borrow of `conn` reaches into this arm.
                self.broken |= worker_stopped(&e);
                Err(e)
            }
        }
    }
}

/// Whether an error means the connection's worker thread has stopped: the one failure that
/// outlives a statement.
fn worker_stopped(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::WorkerCrashed)
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !self.broken {
                if let Ok(mut idle) = self.home.idle.lock() {
                    idle.push(conn);
                }
            }
        }
    }
}

/// Statements on the pool borrow a connection for the statement. Result rows are gathered
/// before the connection goes back (the store reads no result set it could not hold; the
/// reports over every user go through `bulk`).
impl<'p> Executor<'p> for &'p Connections {
    type Database = Sqlite;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<SqliteQueryResult, SqliteRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        Box::pin(
            futures_util::stream::once(async move {
                let mut conn = self.acquire().await?;
                let all: Vec<_> = conn.connection()?.fetch_many(query).collect().await;
                let error = all.iter().find_map(|r| r.as_ref().err());
                conn.observe(error);
                Ok::<_, sqlx::Error>(futures_util::stream::iter(all))
            })
            .try_flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<SqliteRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        Box::pin(async move {
            let mut conn = self.acquire().await?;
            let row = conn.connection()?.fetch_optional(query).await;
            conn.observe(row.as_ref().err());
            row
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [SqliteTypeInfo],
    ) -> BoxFuture<'e, Result<SqliteStatement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        Box::pin(async move {
            let mut conn = self.acquire().await?;
            let prepared = conn.connection()?.prepare_with(sql, parameters).await;
            conn.observe(prepared.as_ref().err());
            prepared
        })
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Sqlite>, sqlx::Error>>
    where
        'p: 'e,
    {
        Box::pin(async move {
            let mut conn = self.acquire().await?;
            let described = conn.connection()?.describe(sql).await;
            conn.observe(described.as_ref().err());
            described
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use sqlx::sqlite::SqliteJournalMode;

    async fn pool_of(max: u32, timeout_ms: u64) -> (Connections, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = Connections::open(options, max, Duration::from_millis(timeout_ms))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (v INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        (pool, dir)
    }

    async fn rows(pool: &Connections) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    fn idle(pool: &Connections) -> usize {
        pool.0.idle.lock().unwrap().len()
    }

    #[tokio::test]
    async fn statements_give_the_connection_back() {
        let (pool, _dir) = pool_of(4, 1000).await;
        for v in 0..10 {
            sqlx::query("INSERT INTO t (v) VALUES (?)")
                .bind(v)
                .execute(&pool)
                .await
                .unwrap();
        }
        assert_eq!(rows(&pool).await, 10);
        // One connection served them all, one after the other.
        assert_eq!(idle(&pool), 1);
        assert_eq!(pool.0.permits.available_permits(), 4);
    }

    #[tokio::test]
    async fn an_unfinished_transaction_is_rolled_back_before_the_next_borrower() {
        let (pool, _dir) = pool_of(1, 1000).await;
        {
            let mut conn = pool.acquire().await.unwrap();
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query("INSERT INTO t (v) VALUES (1)")
                .execute(&mut *tx)
                .await
                .unwrap();
            // Dropped without a commit, its connection given back at once.
        }
        assert_eq!(idle(&pool), 1);
        assert_eq!(rows(&pool).await, 0);
        // Not inside the old transaction: a new one can begin and commit.
        let mut conn = pool.acquire().await.unwrap();
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO t (v) VALUES (2)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        drop(conn);
        assert_eq!(rows(&pool).await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_borrower_leaves_the_connection_usable() {
        let (pool, _dir) = pool_of(1, 2000).await;
        // A transaction cancelled half-way, as a request is when its client goes away.
        let (began, mut wait) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let pool = pool.clone();
            async move {
                let mut conn = pool.acquire().await.unwrap();
                let mut tx = conn.begin().await.unwrap();
                sqlx::query("INSERT INTO t (v) VALUES (1)")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let _ = began.send(());
                std::future::pending::<()>().await;
            }
        });
        (&mut wait).await.unwrap();
        task.abort();
        let _ = task.await;
        // Statements cancelled at every point of their exchange with the worker.
        for _ in 0..50 {
            let insert = sqlx::query("INSERT INTO t (v) VALUES (2)").execute(&pool);
            let _ = tokio::time::timeout(Duration::from_micros(50), insert).await;
        }
        let inserted = rows(&pool).await;
        assert!(inserted <= 50, "{inserted}");
        sqlx::query("INSERT INTO t (v) VALUES (3)")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(rows(&pool).await, inserted + 1);
        let ones: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE v = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(ones, 0, "the cancelled transaction was rolled back");
    }

    #[tokio::test]
    async fn a_full_pool_times_out() {
        let (pool, _dir) = pool_of(1, 100).await;
        let held = pool.acquire().await.unwrap();
        let waited = pool.acquire().await;
        assert!(matches!(waited, Err(sqlx::Error::PoolTimedOut)));
        drop(held);
        assert_eq!(rows(&pool).await, 0);
    }

    #[tokio::test]
    async fn a_broken_connection_is_closed_not_given_back() {
        let (pool, _dir) = pool_of(1, 1000).await;
        let mut conn = pool.acquire().await.unwrap();
        conn.observe(Some(&sqlx::Error::WorkerCrashed));
        drop(conn);
        assert_eq!(idle(&pool), 0);
        // The next borrower gets a new connection.
        assert_eq!(rows(&pool).await, 0);
        assert_eq!(idle(&pool), 1);
    }
}
