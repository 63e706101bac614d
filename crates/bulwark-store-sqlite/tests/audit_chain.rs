//! What the SQLite schema itself guarantees about the audit chain: sealed events cannot be
//! changed or deleted (only pruned behind a checkpoint), and events written before the chain
//! existed are sealed into it on upgrade.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use bulwark_core::audit::ChainVerifier;
use bulwark_store::{AuditStore, NewAuditEvent, Store};
use bulwark_store_sqlite::SqliteStore;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::SqlitePool;
use std::path::Path;

fn event(at: i64, subject: &str) -> NewAuditEvent {
    NewAuditEvent {
        at,
        actor: None,
        subject: Some(subject.into()),
        event: "login".into(),
        outcome: "success".into(),
        detail: None,
        ip: Some("192.0.2.1".into()),
        user_agent: None,
    }
}

async fn raw_pool(path: &Path) -> SqlitePool {
    SqlitePool::connect_with(SqliteConnectOptions::new().filename(path))
        .await
        .unwrap()
}

async fn chain_len(store: &SqliteStore) -> u64 {
    let mut v = ChainVerifier::from_genesis();
    for r in store.audit_chain(0, 1000).await.unwrap() {
        v.push(&r.link_fields(), r.prev_hash.as_deref(), r.hash.as_deref())
            .unwrap();
    }
    v.checked()
}

#[tokio::test]
async fn sealed_events_cannot_be_changed_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulwark.db");
    let store = SqliteStore::open(&path, 2).await.unwrap();
    store.migrate().await.unwrap();
    for i in 0..3 {
        store.append_audit(&event(i, "alice")).await.unwrap();
    }
    let pool = raw_pool(&path).await;
    for sql in [
        "UPDATE audit_log SET outcome = 'failure' WHERE id = 2",
        "UPDATE audit_log SET hash = NULL WHERE id = 2",
        "DELETE FROM audit_log WHERE id = 2",
        "DELETE FROM audit_log",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(chain_len(&store).await, 3);
}

#[tokio::test]
async fn events_written_before_the_chain_are_sealed_on_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulwark.db");
    // A database as the previous release left it: migrations up to 0004, events unhashed.
    {
        let store = SqliteStore::open(&path, 1).await.unwrap();
        drop(store);
        let pool = raw_pool(&path).await;
        let mut old = sqlx::migrate::Migrator::new(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations"
        )))
        .await
        .unwrap();
        old.migrations = old
            .migrations
            .iter()
            .filter(|m| m.version <= 4)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        old.run(&pool).await.unwrap();
        for i in 0..4 {
            sqlx::query(
                "INSERT INTO audit_log (at, subject, event, outcome, ip) \
                 VALUES (?, 'alice', 'login', 'success', '192.0.2.1')",
            )
            .bind(i)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    }
    let store = SqliteStore::open(&path, 2).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(
        chain_len(&store).await,
        4,
        "the old events are sealed in order"
    );
    store.append_audit(&event(10, "bob")).await.unwrap();
    assert_eq!(chain_len(&store).await, 5, "and new ones follow them");
    // Sealing happens once; a second start changes nothing.
    let before = store.audit_chain(0, 10).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.audit_chain(0, 10).await.unwrap(), before);
}
