//! A database outage: every kind of client gets a clear 503 (never a 500, never a panic) and
//! the node serves again by itself once the database is back.

use crate::proxy::CuttableRelay;
use crate::support::*;
use axum::http::StatusCode;
use bulwark_store::Store;
use bulwark_store_postgres::{testing, PgStore, PoolSettings};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PW: &str = "Correct-Horse-Battery-Staple-42";

const CONFIG: &str = r#"
[server]
trusted_proxies = ["127.0.0.1"]

[gateway]
protected = ["https://app.example.com"]
default_policy = "one_factor"
"#;

/// An app whose store reaches a fresh database through a relay the test can cut.
async fn app_behind_relay() -> (TestApp, CuttableRelay) {
    // Always PostgreSQL: the relay stands between the node and its database server.
    let url = testing::fresh_database_url().await;
    let options = PgStore::parse_url(&url).unwrap();
    let target = format!("{}:{}", options.get_host(), options.get_port())
        .parse()
        .unwrap();
    let relay = CuttableRelay::to(target).await;
    let store = PgStore::connect_with(
        options.port(relay.port),
        PoolSettings {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(1),
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    (TestApp::with_store(CONFIG, store).await, relay)
}

/// What the proxy asks the gateway for a browser that presents `session`.
async fn gateway_check(t: &TestApp, session: &str) -> Response {
    let p = t
        .browser_from("127.0.0.1")
        .with_header("x-forwarded-for", "203.0.113.7")
        .with_header("x-original-url", "https://app.example.com/")
        .with_header("x-original-method", "GET");
    p.set_cookie("bulwark_session", session);
    p.get("/api/authz/auth-request").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_answered_with_503_and_the_node_recovers_by_itself() {
    let (t, relay) = app_behind_relay().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    assert_eq!(b.login("alice", PW).await.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/account").await.status, StatusCode::OK);
    assert_eq!(b.get("/api/v1/me").await.status, StatusCode::OK);
    let session = b.cookie("bulwark_session").unwrap();

    relay.cut();
    let started = Instant::now();

    let page = b.get("/account").await;
    assert_eq!(
        page.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        page.body
    );
    assert!(
        page.body.contains("Temporarily unavailable"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("error returned from database"),
        "no internals"
    );

    let api = b.get("/api/v1/me").await;
    assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE, "{}", api.body);
    let json: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_eq!(json["error"]["code"], "unavailable", "{}", api.body);

    let login = t.browser().login("alice", PW).await;
    assert_eq!(
        login.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        login.body
    );

    // A session the gateway has not cached must be read from the database.
    let uncached = "A".repeat(43);
    let check = gateway_check(&t, &uncached).await;
    assert_eq!(
        check.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        check.body
    );
    assert_eq!(
        t.browser().get("/healthz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "each answer within about acquire_timeout: {:?}",
        started.elapsed()
    );

    relay.restore();
    // The pool replaces its broken connections on its own: no restart, no reconnect call.
    let mut healthy = false;
    for _ in 0..50 {
        if t.browser().get("/healthz").await.status == StatusCode::OK {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "healthy again once the database is back");
    assert_eq!(b.get("/account").await.status, StatusCode::OK);
    assert_eq!(b.get("/api/v1/me").await.status, StatusCode::OK);
    assert_eq!(gateway_check(&t, &session).await.status, StatusCode::OK);
    let again = t.browser();
    assert_eq!(again.login("alice", PW).await.status, StatusCode::SEE_OTHER);
}
