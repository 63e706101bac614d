//! The shared store contract, run against a fresh SQLite file per test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use bulwark_store::{Store, UserStore};
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

/// The whole contract again on a store of one connection: no operation may wait for a
/// second connection while it holds the first (it would wait for itself until the acquire
/// timeout and fail).
mod one_connection {
    use super::*;

    async fn store_of_one() -> SqliteStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.keep().join("bulwark.db");
        let store = SqliteStore::connect_with_timeout(
            &format!("sqlite://{}", path.display()),
            1,
            std::time::Duration::from_secs(3),
        )
        .await
        .expect("open sqlite");
        store.migrate().await.expect("migrate");
        store
    }

    bulwark_store::store_contract_tests!(store_of_one());
}

/// Two stores on one file, as a server and a CLI command are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_appends_of_two_stores_on_one_file_form_one_chain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bulwark.db");
    let a = SqliteStore::open(&path, 4).await.expect("open sqlite");
    a.migrate().await.expect("migrate");
    let b = SqliteStore::open(&path, 4).await.expect("open sqlite");
    bulwark_store::contract::audit_appends_of_two_stores_form_one_chain(&a, &b).await;
}

/// A database file reads the report lists through a connection of its own; an in-memory
/// database (one connection, nothing to open twice) reads them through the pool. Both give
/// the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_database_lists_user_security_too() {
    let store = SqliteStore::connect("sqlite::memory:", 1)
        .await
        .expect("open sqlite");
    store.migrate().await.expect("migrate");
    bulwark_store::contract::user_security_follows_every_change(&store).await;
    let store = SqliteStore::connect("sqlite::memory:", 1)
        .await
        .expect("open sqlite");
    store.migrate().await.expect("migrate");
    bulwark_store::contract::user_security_lists_second_factors_page_by_page(&store).await;
}

/// An in-memory database leaves no file behind (sqlx gives it a file-like name).
#[tokio::test]
async fn an_in_memory_database_creates_no_file() {
    let store = SqliteStore::connect("sqlite::memory:", 1)
        .await
        .expect("open sqlite");
    store.migrate().await.expect("migrate");
    let strays: Vec<_> = std::fs::read_dir(".")
        .expect("the current directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("sqlx-in-memory"))
        .collect();
    assert!(strays.is_empty(), "files created: {strays:?}");
}

/// The report lists see what the pool has just committed (the file's own connection reads
/// the write-ahead log), and keep answering after the pool is the only one writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_lists_see_the_latest_commit() {
    let store = fresh_store().await;
    for n in 0..3 {
        let login = format!("user{n}");
        let user = bulwark_store::NewUser {
            login: bulwark_core::account::Login::parse(&login).unwrap(),
            email: None,
            display_name: bulwark_core::account::DisplayName::parse("U").unwrap(),
            groups: vec![],
            password_hash: None,
            must_change_password: false,
            created_at: 1,
        };
        let id = store.insert_user(&user).await.unwrap().id;
        let listed = store.list_user_security(0, i64::MAX, 100).await.unwrap();
        assert_eq!(listed.len(), n + 1);
        assert_eq!(listed.get(n).unwrap().id, id);
    }
}

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

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused() {
    use bulwark_store::StoreError;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bulwark.db");
    let store = SqliteStore::open(&path, 2).await.expect("open sqlite");
    store.migrate().await.expect("migrate");
    let latest = *SqliteStore::migration_versions().last().unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(latest));
    // A newer build applied a migration this one does not know.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("raw pool");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (?, 'from the future', TRUE, x'00', 0)",
    )
    .bind(latest + 1)
    .execute(&pool)
    .await
    .unwrap();
    let err = store.migrate().await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, known } if found == latest + 1 && known == latest),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("version {}", latest + 1))
            && text.contains(&format!("up to {latest}")),
        "{text}"
    );
}
