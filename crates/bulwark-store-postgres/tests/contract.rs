//! The shared store contract, run against a fresh PostgreSQL database per test, plus what
//! only PostgreSQL has to prove (migrations in step with SQLite's, concurrent nodes).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use bulwark_store::{AuditStore, NewAuditEvent, Store, StoreError};
use bulwark_store_postgres::testing::{fresh_database_url, fresh_store};
use bulwark_store_postgres::{PgStore, PoolSettings};
use std::path::Path;

bulwark_store::store_contract_tests!(fresh_store());

/// Migration file names (`0001_foundation.sql`, …) in a backend's migrations directory.
fn migration_files(crate_dir: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("migrations");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    names
}

#[test]
fn migrations_match_the_sqlite_backend() {
    let postgres = migration_files("bulwark-store-postgres");
    let sqlite = migration_files("bulwark-store-sqlite");
    assert!(!postgres.is_empty());
    assert_eq!(
        postgres, sqlite,
        "both backends must have the same migrations, with the same version numbers and names"
    );
    let versions: Vec<i64> = postgres
        .iter()
        .map(|n| n.split('_').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        PgStore::migration_versions(),
        versions,
        "embedded = on disk"
    );
    assert!(versions.windows(2).all(|w| w[0] < w[1]));
}

fn settings(max_connections: u32) -> PoolSettings {
    PoolSettings {
        max_connections,
        ..PoolSettings::default()
    }
}

async fn raw_connection(url: &str) -> sqlx::PgConnection {
    let opts = PgStore::parse_url(url).unwrap();
    sqlx::ConnectOptions::connect(&opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_migrating_at_once_migrate_once() {
    let url = fresh_database_url().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let node = PgStore::connect(&url, settings(2)).await.unwrap();
        tasks.push(tokio::spawn(async move { node.migrate().await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let store = PgStore::connect(&url, settings(1)).await.unwrap();
    let latest = *PgStore::migration_versions().last().unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(latest));
    let mut conn = raw_connection(&url).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        rows,
        PgStore::migration_versions().len() as i64,
        "each one once"
    );
}

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused() {
    let url = fresh_database_url().await;
    let store = PgStore::connect(&url, settings(2)).await.unwrap();
    store.migrate().await.unwrap();
    let latest = *PgStore::migration_versions().last().unwrap();
    // A newer build applied a migration this one does not know.
    let mut conn = raw_connection(&url).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'from the future', TRUE, '\\x00'::bytea, 0)",
    )
    .bind(latest + 1)
    .execute(&mut conn)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_appends_of_two_nodes_form_one_chain() {
    let url = fresh_database_url().await;
    let a = PgStore::connect(&url, settings(4)).await.unwrap();
    a.migrate().await.unwrap();
    let b = PgStore::connect(&url, settings(4)).await.unwrap();
    bulwark_store::contract::audit_appends_of_two_stores_form_one_chain(&a, &b).await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://bulwark@127.0.0.1:{port}/bulwark");
    let err = PgStore::connect(&url, settings(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[test]
fn urls_are_checked_without_echoing_a_password() {
    assert!(PgStore::parse_url("postgres://u:pw@db.example/bulwark").is_ok());
    assert!(PgStore::parse_url("postgresql://u@db.example:5433/bulwark?sslmode=require").is_ok());
    let err = PgStore::parse_url("mysql://u:hunter2@db/x").unwrap_err();
    assert!(
        err.contains("postgres://") && !err.contains("hunter2"),
        "{err}"
    );
    let err = PgStore::parse_url("postgres://u:hunter2@db/x?sslmode=sometimes").unwrap_err();
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn the_audit_log_refuses_updates_and_deletes() {
    let url = fresh_database_url().await;
    let store = PgStore::connect(&url, settings(2)).await.unwrap();
    store.migrate().await.unwrap();
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
        .unwrap();
    // Someone with database access, going around the store.
    let mut conn = raw_connection(&url).await;
    for sql in [
        "UPDATE audit_log SET outcome = 'success'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM audit_log")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(outcome, "failure");
}

/// Where the user's row version lies (its `ctid`), and its summary of second factors.
async fn user_row(conn: &mut sqlx::PgConnection, id: i64) -> (String, bool) {
    sqlx::query_as("SELECT ctid::text, totp_confirmed FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn summary_triggers_write_the_user_row_only_when_the_summary_changes() {
    use bulwark_core::account::{DisplayName, GroupName, Login};
    use bulwark_store::{NewTotpFactor, NewUser, TwoFactorStore, UserStore};
    let url = fresh_database_url().await;
    let store = PgStore::connect(&url, settings(2)).await.unwrap();
    store.migrate().await.unwrap();
    let user = store
        .insert_user(&NewUser {
            login: Login::parse("ann").unwrap(),
            email: None,
            display_name: DisplayName::parse("Ann").unwrap(),
            groups: vec![GroupName::parse("internal").unwrap()],
            password_hash: None,
            must_change_password: false,
            created_at: 1_700_000_000,
        })
        .await
        .unwrap();
    let mut conn = raw_connection(&url).await;
    let (created, confirmed) = user_row(&mut conn, user.id).await;
    assert!(!confirmed);

    // Each new row version may land pages away from the user's neighbours by id, which is
    // what made reports over every user read a page per row.
    let factor = |sealed: &str| NewTotpFactor {
        user: user.id,
        secret_sealed: sealed.into(),
        key_id: "k1".into(),
        algorithm: "sha1".into(),
        digits: 6,
        period: 30,
        created_at: 1_700_000_000,
    };
    store.upsert_pending_totp(&factor("first")).await.unwrap();
    store.upsert_pending_totp(&factor("again")).await.unwrap();
    assert_eq!(
        user_row(&mut conn, user.id).await,
        (created.clone(), false),
        "a pending authenticator changes no summary"
    );
    assert!(store
        .confirm_totp(user.id, 1_700_000_100, 10)
        .await
        .unwrap());
    let (confirmed_at, confirmed) = user_row(&mut conn, user.id).await;
    assert!(confirmed, "the confirmation is in the summary");
    assert_ne!(confirmed_at, created);
    for step in 11..20 {
        assert!(store.update_totp_step(user.id, step).await.unwrap());
    }
    assert_eq!(
        user_row(&mut conn, user.id).await,
        (confirmed_at, true),
        "a code's time step recorded at each sign-in leaves the user's row alone"
    );
}

/// Ends every connection the store has open (as a database restart or a killed backend
/// would) and waits until the server has let them go.
async fn terminate_connections_of(url: &str) {
    let mut admin = raw_connection(url).await;
    let query = "SELECT pid FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'bulwark'";
    let pids: Vec<i32> = sqlx::query_scalar(query)
        .fetch_all(&mut admin)
        .await
        .unwrap();
    assert!(!pids.is_empty(), "the store has a connection open");
    for pid in pids {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut admin)
            .await
            .unwrap();
    }
    for _ in 0..200 {
        let left: Vec<i32> = sqlx::query_scalar(query)
            .fetch_all(&mut admin)
            .await
            .unwrap();
        if left.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the store's connections were not terminated");
}

#[tokio::test]
async fn a_connection_broken_in_use_fails_one_statement_and_is_replaced() {
    let url = fresh_database_url().await;
    let store = PgStore::connect(&url, settings(1)).await.unwrap();
    store.ping().await.unwrap();
    let used = std::time::Instant::now();
    terminate_connections_of(&url).await;
    // Used again within the second after which an idle connection is pinged first: the
    // statement meets the broken connection, and fails as an outage would.
    let first = store.ping().await;
    if used.elapsed() < std::time::Duration::from_millis(900) {
        assert!(
            matches!(first, Err(StoreError::Unavailable(_))),
            "{first:?}"
        );
    }
    // Closed, not lent again: the next statement gets a new connection.
    store.ping().await.unwrap();
    store.ping().await.unwrap();
}

#[tokio::test]
async fn a_connection_broken_while_idle_is_replaced_before_use() {
    let url = fresh_database_url().await;
    let store = PgStore::connect(&url, settings(2)).await.unwrap();
    store.ping().await.unwrap();
    terminate_connections_of(&url).await;
    // Idle for more than a second: pinged before it is lent, found broken, replaced.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    store.ping().await.unwrap();
}
