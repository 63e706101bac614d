//! Fresh databases for tests (feature `testing`): each test gets a database of its own on
//! the server named by `TEST_POSTGRES_URL`, which `scripts/test` starts and exports.
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test that calls them"
)]

use crate::{PgStore, PoolSettings};
use bulwark_store::Store;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// The environment variable naming the test server (any database on it; tests create theirs).
pub const URL_VAR: &str = "TEST_POSTGRES_URL";

/// The test server's URL. Panics with instructions when it is not set: a PostgreSQL test
/// that silently passed without a database would prove nothing.
pub fn server_url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{URL_VAR} is not set: the PostgreSQL tests need a server. Run `scripts/test`, or \
             `scripts/with-postgres cargo test …`, which start a throwaway one and set it"
        ),
    }
}

/// Creates an empty, uniquely named database on the test server and returns its URL.
pub async fn fresh_database_url() -> String {
    let server = server_url();
    let options: PgConnectOptions =
        PgStore::parse_url(&server).unwrap_or_else(|e| panic!("{URL_VAR}: {e}"));
    // Unique across the tests of this process (counter) and across processes and runs on
    // the same server (process id, start time).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "bulwark_test_{}_{:x}_{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut admin = options
        .clone()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server ({URL_VAR}): {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    admin.close().await.ok();
    options.database(&name).to_url_lossy().to_string()
}

/// A migrated store on a fresh database.
pub async fn fresh_store() -> PgStore {
    fresh_store_with_url().await.0
}

/// A migrated store on a fresh database, and that database's URL.
pub async fn fresh_store_with_url() -> (PgStore, String) {
    let url = fresh_database_url().await;
    let store = PgStore::connect(
        &url,
        PoolSettings {
            max_connections: 4,
            ..PoolSettings::default()
        },
    )
    .await
    .expect("connect to the fresh test database");
    store
        .migrate()
        .await
        .expect("migrate the fresh test database");
    (store, url)
}
