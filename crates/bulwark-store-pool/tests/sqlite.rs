//! The pool on SQLite database files.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use bulwark_store_pool::{Connections, Settings};
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteJournalMode};
use std::time::Duration;

fn settings(max: u32, timeout_ms: u64) -> Settings {
    Settings {
        max_connections: max,
        acquire_timeout: Duration::from_millis(timeout_ms),
        ping_after_idle: None,
        idle_timeout: None,
        broken: |e| matches!(e, sqlx::Error::WorkerCrashed),
    }
}

async fn pool_with(settings: Settings) -> (Connections<Sqlite>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("t.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // A write lock left behind shows at once.
        .busy_timeout(Duration::from_millis(200));
    let pool = Connections::open(options, settings).await.unwrap();
    sqlx::query("CREATE TABLE t (v INTEGER)")
        .execute(&pool)
        .await
        .unwrap();
    (pool, dir)
}

async fn pool_of(max: u32, timeout_ms: u64) -> (Connections<Sqlite>, tempfile::TempDir) {
    pool_with(settings(max, timeout_ms)).await
}

async fn rows(pool: &Connections<Sqlite>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(pool)
        .await
        .unwrap()
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
    assert_eq!(pool.idle_count(), 1);
    assert_eq!(pool.free_count(), 4);
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
    assert_eq!(pool.idle_count(), 1);
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
    // An error the store does not count as broken: given back.
    conn.observe(Some(&sqlx::Error::RowNotFound));
    drop(conn);
    assert_eq!(pool.idle_count(), 1);
    let mut conn = pool.acquire().await.unwrap();
    conn.observe(Some(&sqlx::Error::WorkerCrashed));
    drop(conn);
    assert_eq!(pool.idle_count(), 0);
    assert_eq!(pool.free_count(), 1);
    // The next borrower gets a new connection.
    assert_eq!(rows(&pool).await, 0);
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_idle_past_the_timeout_are_closed_but_the_last() {
    let (pool, _dir) = pool_with(Settings {
        idle_timeout: Some(Duration::from_millis(300)),
        ..settings(4, 1000)
    })
    .await;
    // A burst: three connections at once.
    let burst: Vec<_> = futures_util::future::join_all((0..3).map(|_| pool.acquire()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    drop(burst);
    assert_eq!(pool.idle_count(), 3);
    // Light use afterwards keeps one of them busy; the two others are closed once idle for
    // the timeout (checked every half of it).
    let started = std::time::Instant::now();
    while pool.idle_count() > 1 {
        assert!(started.elapsed() < Duration::from_secs(10), "never closed");
        assert_eq!(rows(&pool).await, 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Nothing at all for several timeouts: the last one stays open.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(pool.idle_count(), 1);
    assert_eq!(rows(&pool).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begins_cancelled_at_every_point_leave_no_lock_behind() {
    let (pool, _dir) = pool_of(2, 2000).await;
    for i in 0..80u64 {
        let begin = async {
            let mut conn = pool.acquire().await?;
            let _tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            std::future::pending::<()>().await;
            Ok::<_, sqlx::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_micros(5 * i), begin).await;
    }
    // Every connection the pool holds can take the write lock and commit.
    let mut conns = vec![pool.acquire().await.unwrap(), pool.acquire().await.unwrap()];
    for conn in &mut conns {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO t (v) VALUES (1)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    drop(conns);
    assert_eq!(rows(&pool).await, 2);
}
