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

#[cfg(unix)]
#[tokio::test]
async fn a_new_database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bulwark.db");
    let store = SqliteStore::open(&path, 2).await.expect("open sqlite");
    store.migrate().await.expect("migrate");
    for name in ["bulwark.db", "bulwark.db-wal"] {
        let mode = std::fs::metadata(dir.path().join(name))
            .expect(name)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} has mode {:o}", mode & 0o777);
    }
}

#[tokio::test]
async fn the_audit_log_refuses_updates_and_deletes() {
    use bulwark_store::{AuditStore, NewAuditEvent};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bulwark.db");
    let store = SqliteStore::open(&path, 2).await.expect("open sqlite");
    store.migrate().await.expect("migrate");
    store
        .append_audit(&NewAuditEvent {
            at: 1_700_000_000,
            actor: Some("root".into()),
            subject: Some("alice".into()),
            event: "login".into(),
            outcome: "failure".into(),
            detail: Some("wrong password".into()),
            ip: None,
            user_agent: None,
        })
        .await
        .expect("append");
    // Someone with the database file in hand, going around the store.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("raw pool");
    for sql in [
        "UPDATE audit_log SET outcome = 'success'",
        "DELETE FROM audit_log",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM audit_log")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(outcome, "failure");
}
