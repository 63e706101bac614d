//! Several Bulwark nodes sharing one PostgreSQL database: each node here is a whole app of
//! its own (its own connection pool, clock, caches and router) with the configuration and
//! server key a deployment gives them all. What one node records, every node must honour.
//! The last test starts real `bulwark serve` processes.

use crate::support::*;
use crate::two_factor::{code_now, half_login, send_code, user_with_totp};
use axum::http::StatusCode;
use bulwark_store_postgres::testing;
use std::time::{Duration, Instant};

const PW: &str = "Correct-Horse-Battery-Staple-42";

/// Two nodes, A and B, on one fresh database.
async fn two_nodes() -> (TestApp, TestApp) {
    let url = testing::fresh_database_url().await;
    let a = TestApp::with_store("", postgres_store(&url).await).await;
    let b = TestApp::node("", postgres_store(&url).await, a.app.key_ring()).await;
    (a, b)
}

/// Moves both nodes' clocks together, as real clocks would.
fn advance(a: &TestApp, b: &TestApp, secs: i64) {
    a.clock.advance(secs);
    b.clock.advance(secs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_node_works_on_the_other() {
    let (a, b) = two_nodes().await;
    a.add_user("alice", PW, &["internal"]).await;
    let on_a = a.browser();
    assert_eq!(on_a.login("alice", PW).await.status, StatusCode::SEE_OTHER);
    let cookie = on_a.cookie("bulwark_session").unwrap();

    // The load balancer sends the next request to B.
    let on_b = b.browser();
    on_b.set_cookie("bulwark_session", &cookie);
    let page = on_b.get("/account").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("alice"));

    // Logging out on B ends the session on A too.
    assert_eq!(
        on_b.post("/logout", &[]).await.status,
        StatusCode::SEE_OTHER
    );
    let res = on_a.get("/account").await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert!(res.location().starts_with("/login"), "{}", res.location());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_spread_over_nodes_lock_at_the_same_threshold() {
    let (a, b) = two_nodes().await;
    a.add_user("alice", PW, &["internal"]).await;
    let (on_a, on_b) = (a.browser(), b.browser());
    // Defaults: locked at the 10th failure, wherever each one happened. Waiting out every
    // escalating delay (at most 30 s) keeps each attempt counted.
    for i in 1..=10 {
        let node = if i % 2 == 1 { &on_a } else { &on_b };
        let res = node.login("alice", "wrong-password-guess").await;
        assert_eq!(
            res.status,
            StatusCode::UNAUTHORIZED,
            "failure {i}: {}",
            res.body
        );
        advance(&a, &b, 31);
    }
    for (name, node) in [("A", &on_a), ("B", &on_b)] {
        let res = node.login("alice", PW).await;
        assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "node {name}");
        assert!(res.body.contains("locked"), "node {name}: {}", res.body);
    }
    // Only one of the nodes recorded the lock.
    let locks = a
        .store
        .list_audit(&bulwark_store::AuditFilter {
            event: Some("account_locked".into()),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(locks.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_code_accepted_on_one_node_is_refused_on_the_other() {
    let (a, b) = two_nodes().await;
    let (_, secret, _) = user_with_totp(&a, "alice", &["internal"]).await;
    advance(&a, &b, 30); // the enrolment used this step
    let (on_a, on_b) = (a.browser(), b.browser());
    half_login(&on_a, "alice").await;
    half_login(&on_b, "alice").await;
    let code = code_now(&a, &secret);
    let res = send_code(&on_a, &code).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/account");
    let replay = send_code(&on_b, &code).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{}", replay.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_code_raced_on_two_nodes_is_accepted_once() {
    let (a, b) = two_nodes().await;
    let (_, _, codes) = user_with_totp(&a, "alice", &["internal"]).await;
    for (round, code) in codes.iter().take(3).enumerate() {
        let (on_a, on_b) = (a.browser(), b.browser());
        half_login(&on_a, "alice").await;
        half_login(&on_b, "alice").await;
        let (ra, rb) = tokio::join!(send_code(&on_a, code), send_code(&on_b, code));
        let wins = [&ra, &rb]
            .iter()
            .filter(|r| r.status == StatusCode::SEE_OTHER && r.location() == "/account")
            .count();
        assert_eq!(wins, 1, "round {round}: {} / {}", ra.status, rb.status);
    }
    assert_eq!(
        a.store
            .count_recovery_codes(a.app.user_by_login("alice").await.unwrap().id)
            .await
            .unwrap(),
        7
    );
}

// ---------------------------------------------------------------------------------------
// Real processes

/// Kills the child when dropped.
struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_revoked_on_one_node_stops_passing_the_others_gateway_within_the_bound() {
    let config = "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
                  [gateway]\nprotected = [\"https://odoo.example.com\"]\ndefault_policy = \"one_factor\"\n";
    let url = testing::fresh_database_url().await;
    let a = TestApp::with_store(config, postgres_store(&url).await).await;
    let b = TestApp::node(config, postgres_store(&url).await, a.app.key_ring()).await;
    assert_eq!(
        b.app.config.gateway.cache_seconds, 5,
        "the documented bound"
    );
    a.add_user("alice", PW, &["internal"]).await;
    let on_a = a.browser();
    on_a.login("alice", PW).await;
    let cookie = on_a.cookie("bulwark_session").unwrap();
    // nginx in front of node B asks about alice's request.
    let ask_b = || {
        let p = b
            .browser_from("127.0.0.1")
            .with_header("x-original-url", "https://odoo.example.com/web")
            .with_header("x-original-method", "GET")
            .with_header("x-forwarded-for", "203.0.113.7");
        p.set_cookie("bulwark_session", &cookie);
        async move { p.get("/api/authz/auth-request").await.status }
    };
    assert_eq!(ask_b().await, StatusCode::OK, "B caches the session");
    // Alice logs out everywhere through node A.
    assert_eq!(
        on_a.post("/account/sessions/revoke-all", &[]).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        on_a.post("/logout", &[]).await.status,
        StatusCode::SEE_OTHER
    );
    advance(&a, &b, 4);
    assert_eq!(
        ask_b().await,
        StatusCode::OK,
        "within the bound B may still pass it"
    );
    advance(&a, &b, 1);
    assert_eq!(
        ask_b().await,
        StatusCode::UNAUTHORIZED,
        "after gateway.cache_seconds B refuses it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_stays_one_line_when_nodes_append_at_once() {
    let (a, b) = two_nodes().await;
    a.add_user("alice", PW, &["internal"]).await;
    // Failed logins on both nodes at the same time: each writes audit events.
    let attempts = (0..12).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        let browser = node.browser_from(&format!("192.0.2.{}", 20 + i));
        async move { browser.login("alice", "Wrong-Password-0000").await }
    });
    bulwark_store::contract::join_all(attempts).await;
    let report = b.app.verify_audit().await.unwrap();
    assert!(report.intact(), "{report:?}");
    assert!(report.checked >= 13, "{report:?}");
    assert_eq!(a.app.verify_audit().await.unwrap().head, report.head);
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The status of `GET path` on the node, or None if it does not answer.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split(' ').nth(1)?.parse().ok()
}

/// `bulwark ARGS…` with this data directory and database, none of the caller's
/// `BULWARK_*` variables.
fn bulwark(dir: &std::path::Path, url: &str, key: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BULWARK_") {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(dir)
        .env("BULWARK_SECRET_KEY", key)
        .arg("--data-dir")
        .arg(dir)
        .arg("--database-url")
        .arg(url);
    cmd
}

#[test]
fn serve_processes_started_together_on_an_empty_database_migrate_it_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = runtime.block_on(testing::fresh_database_url());
    let key = bulwark_server::keys::KeyRing::generate().to_text();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let nodes: Vec<Node> = dirs
        .iter()
        .zip(&ports)
        .map(|(dir, port)| {
            let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
            Node(
                bulwark(dir.path(), &url, &key)
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("serve")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let started = Instant::now();
    for (i, port) in ports.iter().enumerate() {
        while http_status(*port, "/healthz") != Some(200) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "node {i} not healthy: {}",
                std::fs::read_to_string(dirs[i].path().join("serve.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let latest = *bulwark_store_postgres::PgStore::migration_versions()
        .last()
        .unwrap();
    let (applied, rows) = runtime.block_on(async {
        let opts = bulwark_store_postgres::PgStore::parse_url(&url).unwrap();
        let mut conn = sqlx::ConnectOptions::connect(&opts).await.unwrap();
        let applied: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        (applied, rows)
    });
    assert_eq!(applied, latest);
    assert_eq!(
        rows,
        bulwark_store_postgres::PgStore::migration_versions().len() as i64,
        "each migration applied once"
    );
    // `bulwark migrate` while both serve: nothing left to do.
    let out = bulwark(dirs[0].path(), &url, &key)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    drop(nodes);
}
