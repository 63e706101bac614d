//! The stores' connections to their database: at most `max_connections` open, each lent for
//! one statement (or one transaction) and given back as it is.
//!
//! sqlx's own pool pings every connection given back to it: one more round trip after every
//! statement, to the SQLite connection's worker thread or to the PostgreSQL server. A login
//! paid it six times over (bench_login on SQLite: 48–59 thread switches per login with sqlx's
//! pool, 31–33 with this one; on PostgreSQL 36–37 against 22–23). The ping exists for three
//! things, each handled here without it:
//!
//! - **Work left queued.** A transaction dropped unfinished queues its rollback. SQLite's
//!   worker runs it at once; PostgreSQL's connection keeps it in its write buffer until its
//!   next use, the transaction's locks held meanwhile. A connection with something queued
//!   (`should_flush`), or given back by a statement cancelled before its answer came, is
//!   flushed and drained by a task of its own, holding its permit, before it goes back: the
//!   next borrower neither waits for a cancelled statement nor runs inside its transaction.
//!   A begin cancelled before its answer came closes the connection: sqlx has not counted
//!   the transaction yet, so nothing would roll it back.
//! - **A connection that broke while in use** (its socket cut, the server shut down, a
//!   SQLite worker thread that stopped): the statement fails, and an error the store's
//!   `broken` test recognises closes the connection instead of giving it back.
//! - **A connection that broke while idle** (a database restart): one idle for at least
//!   `ping_after_idle` is pinged before it is lent, and replaced if the ping fails. A busy
//!   pool's connections are not (that would be a round trip before every statement), but
//!   once one connection is found broken, every connection that was idle then is pinged
//!   before its next use: a restart ends them all, and one statement finds out, not one
//!   per connection.
//!
//! Idle connections unused for `idle_timeout` are closed, all but the most recently used one.

use either::Either;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::{ConnectOptions, Connection, Database, Describe, Execute, Executor, Transaction};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long the stores keep an idle connection unused (`Settings::idle_timeout`): after a
/// burst, the connections no longer needed go (on SQLite, each with a page cache of up to
/// 2 MiB), the one in use stays.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How a pool behaves.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Most connections open at once.
    pub max_connections: u32,
    /// How long a borrower waits for a connection (`PoolTimedOut`), opening one included.
    pub acquire_timeout: Duration,
    /// A connection idle at least this long is pinged before it is lent; `None`: never
    /// (a local file does not go stale). So is every connection that was idle when another
    /// was found broken: a server that restarts ends them all at once, and without the ping
    /// each would fail one statement of a busy pool (whose connections are never idle long).
    pub ping_after_idle: Option<Duration>,
    /// Idle connections unused this long are closed, but for the most recently used one;
    /// `None`: kept open.
    pub idle_timeout: Option<Duration>,
    /// Whether an error means the connection itself can no longer be used.
    pub broken: fn(&sqlx::Error) -> bool,
}

/// A bounded set of connections to one database (see the crate doc); clones share it.
pub struct Connections<DB: Database>(Arc<Shared<DB>>);

struct Shared<DB: Database> {
    options: <DB::Connection as Connection>::Options,
    /// Oldest given back first.
    idle: Mutex<Vec<Idle<DB::Connection>>>,
    permits: Arc<Semaphore>,
    settings: Settings,
    /// Connections found broken so far.
    breaks: AtomicU64,
}

struct Idle<C> {
    conn: C,
    since: Instant,
    /// `breaks` when it was given back: a break since makes it suspect.
    breaks: u64,
}

impl<DB: Database> Clone for Connections<DB> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<DB: Database> std::fmt::Debug for Connections<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("database", &DB::NAME)
            .field("free", &self.0.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl<DB: Database> Connections<DB> {
    /// Opens the first connection now, so that a database that cannot be reached is an error
    /// at startup rather than at the first request.
    pub async fn open(
        options: <DB::Connection as Connection>::Options,
        settings: Settings,
    ) -> Result<Self, sqlx::Error> {
        let first = tokio::time::timeout(settings.acquire_timeout, options.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        let shared = Arc::new(Shared {
            options,
            idle: Mutex::new(vec![Idle {
                conn: first,
                since: Instant::now(),
                breaks: 0,
            }]),
            permits: Arc::new(Semaphore::new(settings.max_connections.max(1) as usize)),
            settings,
            breaks: AtomicU64::new(0),
        });
        if let Some(timeout) = settings.idle_timeout {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(close_idle_while_open(Arc::downgrade(&shared), timeout));
            }
        }
        Ok(Self(shared))
    }

    /// Borrows a connection: the most recently given back, or a new one if none is idle.
    /// Waits at most the acquire timeout (`PoolTimedOut`).
    pub async fn acquire(&self) -> Result<Conn<DB>, sqlx::Error> {
        let shared = &self.0;
        tokio::time::timeout(shared.settings.acquire_timeout, async {
            let permit = Arc::clone(&shared.permits)
                .acquire_owned()
                .await
                .map_err(|_| sqlx::Error::PoolClosed)?;
            let conn = shared.take_or_connect().await?;
            Ok(Conn {
                conn: Some(conn),
                broken: false,
                busy: false,
                whole: false,
                home: Arc::clone(shared),
                permit: Some(permit),
            })
        })
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    /// How many connections are idle (for tests and diagnostics).
    pub fn idle_count(&self) -> usize {
        self.0.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    /// How many more connections could be lent right now.
    pub fn free_count(&self) -> usize {
        self.0.permits.available_permits()
    }
}

impl<DB: Database> Shared<DB> {
    async fn take_or_connect(&self) -> Result<DB::Connection, sqlx::Error> {
        loop {
            // The most recently given back: its caches are warm, and the others grow idle
            // long enough to be closed.
            let next = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let Some(Idle {
                mut conn,
                since,
                breaks,
            }) = next
            else {
                break;
            };
            let suspect = breaks != self.breaks.load(Ordering::Relaxed);
            match self.settings.ping_after_idle {
                Some(after) if suspect || since.elapsed() >= after => {
                    if conn.ping().await.is_ok() {
                        return Ok(conn);
                    }
                    // Broken while idle: dropped (closed), and the next one tried.
                }
                _ => return Ok(conn),
            }
        }
        self.options.connect().await
    }

    /// Whether `e` means its connection is broken (the store's `broken` test); such a break
    /// is counted ([`Shared::broke`]).
    fn breaks_on(&self, e: &sqlx::Error) -> bool {
        let broken = (self.settings.broken)(e);
        if broken {
            self.broke();
        }
        broken
    }

    /// Counts a connection found broken: the connections idle now become suspect, pinged
    /// before their next use.
    fn broke(&self) {
        self.breaks.fetch_add(1, Ordering::Relaxed);
    }

    fn give_back(&self, conn: DB::Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Idle {
                conn,
                since: Instant::now(),
                breaks: self.breaks.load(Ordering::Relaxed),
            });
        }
    }

    /// Takes out the connections idle for `timeout`, oldest first, leaving at least one.
    fn take_stale(&self, timeout: Duration) -> Vec<DB::Connection> {
        let Ok(mut idle) = self.idle.lock() else {
            return Vec::new();
        };
        let stale = idle
            .iter()
            .take_while(|i| i.since.elapsed() >= timeout)
            .count()
            .min(idle.len().saturating_sub(1));
        idle.drain(..stale).map(|i| i.conn).collect()
    }
}

/// Closes idle connections unused for `timeout`, checking every half of it, until the pool
/// is gone.
async fn close_idle_while_open<DB: Database>(pool: Weak<Shared<DB>>, timeout: Duration) {
    let mut tick = tokio::time::interval((timeout / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = pool.upgrade() else {
            return;
        };
        let stale = shared.take_stale(timeout);
        let limit = shared.settings.acquire_timeout;
        drop(shared);
        for conn in stale {
            let _ = tokio::time::timeout(limit, conn.close()).await;
        }
    }
}

/// A borrowed connection, given back when dropped.
pub struct Conn<DB: Database> {
    /// Always `Some` until dropped.
    conn: Option<DB::Connection>,
    /// Closed rather than given back.
    broken: bool,
    /// A statement through the pool started and has not ended (it was cancelled if the
    /// connection is dropped so).
    busy: bool,
    /// Lent by [`Conn::connection_for_whole`] and not finished yet: closed if dropped so.
    whole: bool,
    home: Arc<Shared<DB>>,
    /// Released after `drop` has given the connection back, so the next borrower finds it.
    permit: Option<OwnedSemaphorePermit>,
}

impl<DB: Database> Conn<DB> {
    /// The connection, for APIs that take one (migrations). Statements run on it this way
    /// count as unfinished: the connection is drained before it is lent again.
    pub fn connection(&mut self) -> Result<&mut DB::Connection, sqlx::Error> {
        self.busy = true;
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// The connection for work the pool cannot drain if it stops half-way: a PostgreSQL
    /// `COPY … TO STDOUT`, whose rows keep coming after a cancel or an error and which sqlx
    /// does not count as a statement to wait for. The connection is closed, not given back,
    /// unless [`Conn::finished_whole`] says the work ran to its end.
    pub fn connection_for_whole(&mut self) -> Result<&mut DB::Connection, sqlx::Error> {
        self.whole = true;
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// The work begun on [`Conn::connection_for_whole`] ended: run to its end (`None`), the
    /// connection goes back to the pool as usual; stopped by `error`, it is closed, and an
    /// error that says the connection broke makes the idle ones suspect, as after any
    /// statement.
    pub fn finished_whole(&mut self, error: Option<&sqlx::Error>) {
        match error {
            None => self.whole = false,
            Some(e) => self.observe(Some(e)),
        }
    }

    /// Notes what an error says about the connection itself.
    pub fn observe(&mut self, error: Option<&sqlx::Error>) {
        if !self.broken && error.is_some_and(|e| self.home.breaks_on(e)) {
            self.broken = true;
        }
    }

    /// Ends a statement of the pool's `Executor`, run on `connection()`.
    fn finish(&mut self, error: Option<&sqlx::Error>) {
        self.busy = false;
        self.observe(error);
    }

    /// Starts a transaction (`BEGIN`). Dropped without a commit, it rolls back before the
    /// connection is lent again.
    pub async fn begin(&mut self) -> Result<Transaction<'_, DB>, sqlx::Error> {
        self.begin_with("BEGIN").await
    }

    /// Starts a transaction with the given statement (on SQLite `BEGIN IMMEDIATE`: take the
    /// write lock first; on PostgreSQL `BEGIN; SET LOCAL …`).
    pub async fn begin_with(
        &mut self,
        statement: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Result<Transaction<'_, DB>, sqlx::Error> {
        let Conn {
            conn, broken, home, ..
        } = self;
        let conn = conn.as_mut().ok_or(sqlx::Error::PoolClosed)?;
        // Closed, not given back, if this is cancelled: sqlx counts the transaction only once
        // the server has answered, so a begin cancelled after it was sent would leave the
        // connection inside a transaction nobody rolls back (and, on SQLite, holding the
        // write lock).
        *broken = true;
        match Connection::begin_with(conn, statement).await {
            Ok(tx) => {
                *broken = false;
                Ok(tx)
            }
            Err(e) => {
                *broken = home.breaks_on(&e);
                Err(e)
            }
        }
    }
}

impl<DB: Database> Drop for Conn<DB> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.broken || self.whole {
            return;
        }
        if !self.busy && !conn.should_flush() {
            self.home.give_back(conn);
            return;
        }
        // Something queued and not sent yet (the rollback of a transaction dropped
        // unfinished), or the answer of a cancelled statement still to come: sent and read
        // now, by a task that gives the connection back after, holding its permit until then.
        // Without a runtime the connection is closed, which ends either on the server too.
        let home = Arc::clone(&self.home);
        let permit = self.permit.take();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let limit = home.settings.acquire_timeout;
                match tokio::time::timeout(limit, conn.flush()).await {
                    Ok(Ok(())) => home.give_back(conn),
                    // The connection failed: in a transaction whose statements the pool did
                    // not see, say. The others idle may have failed with it.
                    Ok(Err(_)) => home.broke(),
                    Err(_) => {}
                }
                drop(permit);
            });
        }
    }
}

/// Statements on the pool borrow a connection for the statement. Result rows are gathered
/// before the connection goes back (the stores read no result set they could not hold).
impl<'p, DB: Database> Executor<'p> for &'p Connections<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<DB::QueryResult, DB::Row>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, DB>,
    {
        Box::pin(
            futures_util::stream::once(async move {
                let mut conn = self.acquire().await?;
                let all: Vec<_> = conn.connection()?.fetch_many(query).collect().await;
                let error = all.iter().find_map(|r| r.as_ref().err());
                conn.finish(error);
                Ok::<_, sqlx::Error>(futures_util::stream::iter(all))
            })
            .try_flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<DB::Row>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, DB>,
    {
        Box::pin(async move {
            let mut conn = self.acquire().await?;
            let row = conn.connection()?.fetch_optional(query).await;
            conn.finish(row.as_ref().err());
            row
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, Result<DB::Statement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        Box::pin(async move {
            let mut conn = self.acquire().await?;
            let prepared = conn.connection()?.prepare_with(sql, parameters).await;
            conn.finish(prepared.as_ref().err());
            prepared
        })
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<Describe<DB>, sqlx::Error>>
    where
        'p: 'e,
    {
        Box::pin(async move {
            let mut conn = self.acquire().await?;
            let described = conn.connection()?.describe(sql).await;
            conn.finish(described.as_ref().err());
            described
        })
    }
}
