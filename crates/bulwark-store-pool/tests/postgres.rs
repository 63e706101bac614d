//! The pool on a PostgreSQL server (`TEST_POSTGRES_URL`, see `scripts/test`): what a local
//! file never needs, work queued on a connection that goes back idle.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use bulwark_store_pool::{Conn, Connections, Settings};
use bulwark_store_postgres::testing::server_url;
use bulwark_store_postgres::PgStore;
use sqlx::postgres::Postgres;
use sqlx::{ConnectOptions, Connection};
use std::time::{Duration, Instant};

async fn pool() -> Connections<Postgres> {
    let options = PgStore::parse_url(&server_url()).unwrap();
    Connections::open(
        options,
        Settings {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
            ping_after_idle: Some(Duration::from_secs(1)),
            idle_timeout: None,
            broken: |_| false,
        },
    )
    .await
    .unwrap()
}

/// A lock key of this test run's own, apart from other tests on the same server.
fn lock_key() -> i64 {
    0x706f_6f6c_0000_0000 | i64::from(std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_unfinished_releases_its_locks_at_once() {
    let pool = pool().await;
    let key = lock_key();
    {
        // A request that took a lock in a transaction and went away before committing.
        let mut conn = pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    // Another session gets the lock without anyone using the pool again: the rollback was
    // sent as the connection went back, not left queued until its next use.
    let mut other = PgStore::parse_url(&server_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut other)
            .await
            .unwrap();
        if got {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the dropped transaction still holds its lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.close().await.unwrap();
    // And the connection went back to the pool, usable and out of the transaction.
    while pool.idle_count() < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pool.free_count(), 2);
    // A savepoint needs a transaction block: refused, so none is open.
    let err = sqlx::query("SAVEPOINT s").execute(&pool).await.unwrap_err();
    let code = err.as_database_error().and_then(|e| e.code());
    assert_eq!(code.as_deref(), Some("25P01"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_statement_is_drained_apart_from_the_next_borrower() {
    let pool = pool().await;
    // A slow statement whose request went away: the server still runs it to the end.
    let slow = sqlx::query("SELECT pg_sleep(5)").execute(&pool);
    let _ = tokio::time::timeout(Duration::from_millis(200), slow).await;
    // The next statement does not wait behind it on the same connection.
    let started = Instant::now();
    let n: i64 = sqlx::query_scalar("SELECT 42::int8")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 42);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "waited {:?} for the cancelled statement",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_cancelled_half_way_leave_the_connections_usable() {
    let pool = pool().await;
    for i in 0..50u64 {
        let rows = sqlx::query("SELECT g FROM pg_sleep(0.002), generate_series(1, 2000) g")
            .fetch_all(&pool);
        let _ = tokio::time::timeout(Duration::from_micros(100 * i), rows).await;
    }
    let n: i64 = sqlx::query_scalar("SELECT 42::int8")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 42);
    // Every connection drained and back, none lost.
    let started = Instant::now();
    while pool.free_count() < 2 || pool.idle_count() == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n: i64 = sqlx::query_scalar("SELECT 43::int8")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 43);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begins_cancelled_at_every_point_leave_no_transaction_open() {
    let pool = pool().await;
    // A begin whose answer is slow to come (the server sleeps after BEGIN), cancelled while
    // it waits, and begins cancelled at other points.
    for (statement, wait_ms) in [
        ("BEGIN; SELECT pg_sleep(0.2)", 50),
        ("BEGIN; SELECT pg_sleep(0.2)", 50),
        ("BEGIN", 0),
        ("BEGIN", 1),
        ("BEGIN", 2),
    ] {
        let begin = async {
            let mut conn = pool.acquire().await?;
            let _tx = conn.begin_with(statement).await?;
            std::future::pending::<()>().await;
            Ok::<_, sqlx::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_millis(wait_ms), begin).await;
    }
    let started = Instant::now();
    while pool.free_count() < 2 {
        assert!(started.elapsed() < Duration::from_secs(5), "not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every connection the pool holds is out of a transaction: a savepoint is refused.
    let mut conns = vec![pool.acquire().await.unwrap(), pool.acquire().await.unwrap()];
    for conn in &mut conns {
        let err = sqlx::query("SAVEPOINT s")
            .execute(conn.connection().unwrap())
            .await
            .unwrap_err();
        let code = err.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("25P01"), "{err}");
    }
}

/// Whether an error means the connection is gone (the stores' own test is the same kind).
fn lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("57P")),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_connection_is_found_broken_the_idle_ones_are_checked_before_use() {
    let name = format!("bulwark-pool-break-{}", std::process::id());
    let pool = named_pool(&name, 4).await;
    // Four connections, all used, then idle in the pool.
    drop(used_connections(&pool, 4).await);
    let started = Instant::now();
    while pool.idle_count() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The server ends every one of them (a restart, a failover).
    end_every_backend(&name, 4).await;

    // The first statement finds out; the three other connections are checked before they
    // are lent, not each found broken by a statement of its own.
    let mut failed = 0;
    for _ in 0..4 {
        if sqlx::query("SELECT 1").execute(&pool).await.is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "statements that met a broken connection");
}

/// Ends the `expected` server processes of the connections named `name` (as a restart or a
/// failover would), and waits until they are gone.
async fn end_every_backend(name: &str, expected: i64) {
    let mut admin = PgStore::parse_url(&server_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(ended, expected);
    let started = Instant::now();
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{left} left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin.close().await.unwrap();
}

/// A pool of at most `max_connections`, named `name` on the server, whose errors say whether
/// a connection is gone ([`lost`]), never pinged for being idle.
async fn named_pool(name: &str, max_connections: u32) -> Connections<Postgres> {
    let options = PgStore::parse_url(&server_url())
        .unwrap()
        .application_name(name);
    Connections::<Postgres>::open(
        options,
        Settings {
            max_connections,
            acquire_timeout: Duration::from_secs(5),
            // Never idle long enough to be pinged for that.
            ping_after_idle: Some(Duration::from_secs(3600)),
            idle_timeout: None,
            broken: lost,
        },
    )
    .await
    .unwrap()
}

/// `n` connections borrowed at once, each of which has run a statement.
async fn used_connections(pool: &Connections<Postgres>, n: usize) -> Vec<Conn<Postgres>> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SELECT 1")
            .execute(conn.connection().unwrap())
            .await
            .unwrap();
        held.push(conn);
    }
    held
}

/// Three statements through the pool, each answered with its own value.
async fn answers_three_statements(pool: &Connections<Postgres>) {
    for i in 0..3i64 {
        let n: i64 = sqlx::query_scalar("SELECT $1::int8")
            .bind(i)
            .fetch_one(pool)
            .await
            .expect("a statement through the pool failed");
        assert_eq!(n, i);
    }
}

/// The server process behind the connection `pid`, if it still runs.
async fn backend_runs(pool: &Connections<Postgres>, pid: i32) -> bool {
    sqlx::query_scalar("SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The server process behind a connection.
async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_stopped_half_way_closes_its_connection_and_a_whole_one_gives_it_back() {
    use futures_util::TryStreamExt;
    let pool = pool().await;
    // Far more rows than the sockets between here and the server can hold, whatever their
    // buffers: each stopped COPY is still sending when it is stopped. (In the select list
    // the series streams; in FROM the server would write all of it out before the first.)
    let copy = "COPY (SELECT generate_series(1, 1000000000)) TO STDOUT";
    // Read to its end: the connection goes back and serves the next statement.
    let mut conn = pool.acquire().await.unwrap();
    let pg = conn.connection_for_whole().unwrap();
    let whole = backend_pid(pg).await;
    let rows = pg
        .copy_out_raw("COPY (SELECT g FROM generate_series(1, 1000) g) TO STDOUT")
        .await
        .unwrap();
    assert_eq!(rows.try_collect::<Vec<_>>().await.unwrap().len(), 1000);
    conn.finished_whole(None);
    drop(conn);
    let mut conn = pool.acquire().await.unwrap();
    let again = backend_pid(conn.connection().unwrap()).await;
    assert_eq!(
        again, whole,
        "the connection of a whole COPY was not given back"
    );
    drop(conn);

    // Stopped after its first row, twice: each borrower after gets an answer to its own
    // statement, not the rest of the rows.
    for _ in 0..2 {
        let mut conn = pool.acquire().await.unwrap();
        let pg = conn.connection_for_whole().unwrap();
        let pid = backend_pid(pg).await;
        let mut rows = pg.copy_out_raw(copy).await.unwrap();
        assert_eq!(rows.try_next().await.unwrap().unwrap().as_ref(), b"1\n");
        drop(rows);
        drop(conn);
        answers_three_statements(&pool).await;
        // And the server stops sending: the stopped COPY's backend ends.
        let started = Instant::now();
        while backend_runs(&pool, pid).await {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the COPY still runs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Ended by an error half-way (its server process terminated): the connection is closed,
    // not lent again, and the next borrowers are served.
    let mut conn = pool.acquire().await.unwrap();
    let pg = conn.connection_for_whole().unwrap();
    let pid = backend_pid(pg).await;
    let mut rows = pg.copy_out_raw(copy).await.unwrap();
    rows.try_next().await.unwrap().unwrap();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(terminated);
    let error = loop {
        match rows.try_next().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the COPY ran to its end although its backend was terminated"),
            Err(e) => break e,
        }
    };
    drop(rows);
    conn.finished_whole(Some(&error));
    drop(conn);
    for i in 0..3i64 {
        let (n, on): (i64, i32) = sqlx::query_as("SELECT $1::int8, pg_backend_pid()")
            .bind(i)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, i);
        assert_ne!(on, pid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_ended_by_a_lost_connection_makes_the_idle_ones_suspect() {
    use futures_util::TryStreamExt;
    let name = format!("bulwark-pool-copy-break-{}", std::process::id());
    let pool = named_pool(&name, 3).await;
    // Three connections used; two go back idle, the third streams a COPY.
    let mut held = used_connections(&pool, 3).await;
    let mut copying = held.pop().unwrap();
    drop(held);
    let pg = copying.connection_for_whole().unwrap();
    let mut rows = pg
        .copy_out_raw("COPY (SELECT generate_series(1, 1000000000)) TO STDOUT")
        .await
        .unwrap();
    rows.try_next().await.unwrap().unwrap();

    // The server ends all three (a restart, a failover): the COPY is the first to find out.
    end_every_backend(&name, 3).await;
    let error = loop {
        match rows.try_next().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the COPY ran to its end although its backend was terminated"),
            Err(e) => break e,
        }
    };
    assert!(lost(&error), "{error:?}");
    drop(rows);
    copying.finished_whole(Some(&error));
    drop(copying);

    // The two idle connections are checked before they are lent: no statement meets them.
    answers_three_statements(&pool).await;
}
