//! The shared store contract, run against a fresh SQLite file per test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use bulwark_store::Store;
use bulwark_store_sqlite::SqliteStore;

async fn fresh_store() -> SqliteStore {
    let dir = tempfile::tempdir().expect("temp dir");
    // Keep the directory alive for the whole test process; each test gets its own.
    let path = dir.keep().join("bulwark.db");
    let store = SqliteStore::open(&path, 4).await.expect("open sqlite");
    store.migrate().await.expect("migrate");
    store
}

bulwark_store::store_contract_tests!(fresh_store());

#[test]
fn migration_versions_are_ordered() {
    let v = SqliteStore::migration_versions();
    assert!(!v.is_empty());
    assert!(v.windows(2).all(|w| w[0] < w[1]));
}
