//! Several Bulwark nodes sharing one PostgreSQL database: what one node records, every node
//! must honour. Each scenario runs two ways:
//!
//! - in process: each node a whole app of its own (its own connection pool, clock, caches and
//!   router) with the configuration and server key a deployment gives them all; the tests
//!   move the clocks;
//! - as real `bulwark serve` processes on loopback ports, driven over HTTP by a browser whose
//!   requests a load balancer spreads over them, users made with the `bulwark` CLI.
//!
//! All need a PostgreSQL server (`TEST_POSTGRES_URL`) and return early without one.

use crate::procs::{csrf_in, http, wait_until, Agent, Deployment, Node, DEADLINE};
use crate::support::*;
use crate::two_factor::{code_now, half_login, send_code, user_with_totp};
use axum::http::StatusCode;
use bulwark_core::totp::{self, TotpParams, TotpSecret};
use bulwark_store_postgres::testing;
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    if !postgres_configured() {
        return;
    }
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
    if !postgres_configured() {
        return;
    }
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
    let locks = a.audit_events("account_locked").await;
    assert_eq!(locks.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_code_accepted_on_one_node_is_refused_on_the_other() {
    if !postgres_configured() {
        return;
    }
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
    if !postgres_configured() {
        return;
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_revoked_on_one_node_stops_passing_the_others_gateway_within_the_bound() {
    if !postgres_configured() {
        return;
    }
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
    if !postgres_configured() {
        return;
    }
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

// ---------------------------------------------------------------------------------------
// Real processes

/// Users log in with a password alone (only admins must use 2FA); account-lock delays are
/// capped at 1 s so ten failures take seconds; the lock itself keeps its default (10).
const SERVE_CONFIG: &str = r#"
[two_factor]
enforcement = "admins"

[lockout.account]
max_delay_secs = 1
"#;

/// Password-only users as in [`SERVE_CONFIG`], a protected application whose proxy asks from
/// loopback, and a short `gateway.cache_seconds`: the documented bound for a session ended on
/// another node to stop passing.
const GATEWAY_CONFIG: &str = r#"
[two_factor]
enforcement = "admins"

[server]
trusted_proxies = ["127.0.0.1/32"]

[gateway]
protected = ["https://odoo.example.com"]
default_policy = "one_factor"
cache_seconds = 60
"#;
/// How soon a node must learn of a revocation made through the other: it reads the audit
/// log every second (`check_cache::SYNC_INTERVAL`); the rest is slack for a busy machine,
/// and far below `gateway.cache_seconds` of [`GATEWAY_CONFIG`].
const SYNC_BOUND: Duration = Duration::from_secs(10);

/// An empty database on the test server.
fn fresh_database() -> String {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(testing::fresh_database_url())
}

/// Two `serve` processes, A and B, started together on one empty database, and `alice`
/// (password [`PW`], group `internal`) made with the CLI.
fn two_serve_nodes(config: &str) -> (Deployment, Node, Node) {
    let deployment = Deployment::new(&fresh_database(), config);
    let mut nodes = deployment.start_nodes(2);
    deployment.add_user("alice", PW);
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    (deployment, a, b)
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// The code of the time step `offset` steps after the current one, by the real clock the
/// nodes read too.
fn totp_now(secret: &TotpSecret, offset: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let step = totp::time_step(i64::try_from(now).unwrap(), 30) + offset;
    totp::generate(secret, &TotpParams::default(), step)
}

/// Alice turns TOTP on through the node on `port`, reading the key off the security page
/// as an authenticator app would; returns it and her recovery codes.
fn enrol_alice(port: u16) -> (TotpSecret, Vec<String>) {
    let mut browser = Agent::default();
    let res = browser.login(port, "alice", PW);
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), "/account");
    let res = browser.submit(
        port,
        "/account/security",
        "/account/security/enrol",
        &[("password", PW)],
    );
    assert_eq!(res.status, 303, "{res:#?}");
    let page = browser.get(port, "/account/security");
    let key = between(&page.body, "<p class=\"secret\"><code>", "</code>")
        .unwrap_or_else(|| panic!("no key on the page: {}", page.body));
    let secret = TotpSecret::from_base32(key).unwrap();
    let res = browser.post(
        port,
        "/account/security/confirm",
        &[
            ("csrf_token", &csrf_in(&page.body)),
            ("code", &totp_now(&secret, 0)),
        ],
    );
    assert_eq!(res.status, 200, "{res:#?}");
    let codes: Vec<String> = res
        .body
        .split("<li><code>")
        .skip(1)
        .filter_map(|item| Some(item.split_once("</code>")?.0.to_string()))
        .collect();
    assert_eq!(codes.len(), 10, "{}", res.body);
    (secret, codes)
}

/// A browser past alice's password on the node on `port`, at the second step.
fn at_second_step(port: u16) -> Agent {
    let mut browser = Agent::default();
    let res = browser.login(port, "alice", PW);
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), "/login/2fa");
    browser
}

#[test]
fn a_session_made_on_one_serve_process_works_on_the_other() {
    if !postgres_configured() {
        return;
    }
    let (_deployment, a, b) = two_serve_nodes(SERVE_CONFIG);
    let mut browser = Agent::default();
    let res = browser.login(a.port, "alice", PW);
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), "/account");
    let session = browser.jar.get("bulwark_session").unwrap().to_string();

    // The load balancer sends the next requests to B.
    let page = browser.get(b.port, "/account");
    assert_eq!(page.status, 200, "{page:#?}");
    assert!(page.body.contains("<dd>alice</dd>"), "{}", page.body);

    // Logging out on B ends the session on A too.
    let res = browser.submit(b.port, "/account", "/logout", &[]);
    assert_eq!(res.status, 303, "{res:#?}");
    let mut replay = Agent::default();
    replay.jar.set("bulwark_session", &session);
    let res = replay.get(a.port, "/account");
    assert_eq!(res.status, 303, "{res:#?}");
    assert!(res.location().starts_with("/login"), "{res:#?}");
}

#[test]
fn failed_logins_spread_over_serve_processes_lock_at_the_same_threshold() {
    if !postgres_configured() {
        return;
    }
    let (deployment, a, b) = two_serve_nodes(SERVE_CONFIG);
    let mut browser = Agent::default();
    let (mut failures, mut delays) = (0, 0);
    let started = Instant::now();
    // Each attempt goes to the other node than the one before.
    for port in [a.port, b.port].into_iter().cycle() {
        if failures == 10 {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "{failures} failures counted");
        let res = browser.login(port, "alice", "Not-Alices-Password-1");
        match res.status {
            401 => failures += 1,
            // The delay the other node's count set: wait it out, as a person would.
            429 => {
                assert!(
                    !res.body.contains("locked"),
                    "locked after {failures} failures: {res:#?}"
                );
                assert_eq!(res.retry_after(), 1, "delays are capped at 1 s: {res:#?}");
                delays += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            _ => panic!("unexpected answer: {res:#?}"),
        }
    }
    // Failures 4 to 9 each set a 1 s delay, and the next attempt comes well within it.
    assert!(delays > 0, "no node honoured the other's delay");
    for port in [a.port, b.port] {
        let res = browser.login(port, "alice", PW);
        assert_eq!(res.status, 429, "node {port}: {res:#?}");
        assert!(res.body.contains("locked"), "{}", res.body);
        assert!(res.retry_after() > 60, "a 15-minute lock: {res:#?}");
    }
    let show = deployment.cli_ok(&["user", "show", "alice"], None);
    assert!(show.contains("locked:           until "), "{show}");
    let locks = deployment.cli_ok(&["audit", "list", "--event", "account_locked"], None);
    assert_eq!(
        locks
            .lines()
            .filter(|l| l.contains("subject=alice"))
            .count(),
        1,
        "one node recorded the lock: {locks}"
    );
}

#[test]
fn a_totp_code_accepted_by_one_serve_process_is_refused_by_the_other() {
    if !postgres_configured() {
        return;
    }
    let (_deployment, a, b) = two_serve_nodes(SERVE_CONFIG);
    let (secret, _) = enrol_alice(a.port);
    let mut on_a = at_second_step(a.port);
    let mut on_b = at_second_step(b.port);
    // The enrolment used the current step; the next one is accepted (±1 step) and unused.
    let code = totp_now(&secret, 1);
    let res = on_a.submit(a.port, "/login/2fa", "/login/2fa", &[("code", &code)]);
    assert_eq!(res.status, 303, "{res:#?}");
    assert_eq!(res.location(), "/account");
    let replay = on_b.submit(b.port, "/login/2fa", "/login/2fa", &[("code", &code)]);
    assert_eq!(replay.status, 401, "{replay:#?}");
    assert!(
        replay.set_cookie("bulwark_session").is_none(),
        "{replay:#?}"
    );
}

#[test]
fn a_recovery_code_raced_on_two_serve_processes_is_accepted_once() {
    if !postgres_configured() {
        return;
    }
    let (deployment, a, b) = two_serve_nodes(SERVE_CONFIG);
    let (_, codes) = enrol_alice(a.port);
    for (round, code) in codes.iter().take(3).enumerate() {
        let mut racers = [
            (at_second_step(a.port), a.port),
            (at_second_step(b.port), b.port),
        ];
        let start = Barrier::new(racers.len());
        let answers: Vec<_> = std::thread::scope(|s| {
            let runs: Vec<_> = racers
                .iter_mut()
                .map(|(browser, port)| {
                    let (port, start) = (*port, &start);
                    let csrf = browser.csrf(port, "/login/2fa");
                    s.spawn(move || {
                        start.wait();
                        browser.post(port, "/login/2fa", &[("csrf_token", &csrf), ("code", code)])
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let wins = answers
            .iter()
            .filter(|r| r.status == 303 && r.location() == "/account")
            .count();
        assert_eq!(wins, 1, "round {round}: {answers:#?}");
    }
    let show = deployment.cli_ok(&["user", "show", "alice"], None);
    assert!(show.contains("recovery codes:   7 left"), "{show}");
}

#[test]
fn a_session_revoked_through_one_serve_process_stops_passing_the_others_gateway_within_the_audit_sync(
) {
    if !postgres_configured() {
        return;
    }
    let (_deployment, a, b) = two_serve_nodes(GATEWAY_CONFIG);
    let mut browser = Agent::default();
    let res = browser.login(a.port, "alice", PW);
    assert_eq!(res.status, 303, "{res:#?}");
    let cookie = format!(
        "bulwark_session={}",
        browser.jar.get("bulwark_session").unwrap()
    );
    // What nginx in front of each node asks about alice's request to Odoo.
    let ask = |node: &Node| {
        let headers = [
            ("X-Original-URL", "https://odoo.example.com/web"),
            ("X-Original-Method", "GET"),
            ("X-Forwarded-For", "203.0.113.7"),
            ("Cookie", cookie.as_str()),
        ];
        http(node.port, "GET", "/api/authz/auth-request", &headers, None)
            .unwrap()
            .status
    };
    assert_eq!(ask(&b), 200, "B reads the session, and keeps it");
    assert_eq!(ask(&a), 200);

    // Alice logs out everywhere through A.
    let res = browser.submit(a.port, "/account", "/account/sessions/revoke-all", &[]);
    assert_eq!(res.status, 303, "{res:#?}");
    let revoked = Instant::now();
    assert_eq!(ask(&a), 401, "the node that ended it refuses it at once");
    // B keeps its copy for a minute, unless it reads of the revocation in the audit log.
    wait_until(
        SYNC_BOUND,
        || ask(&b) == 401,
        || "B still lets the revoked session through".into(),
    );
    assert!(revoked.elapsed() < SYNC_BOUND, "{:?}", revoked.elapsed());
}

#[test]
fn the_audit_chain_verifies_after_two_serve_processes_append_at_once() {
    if !postgres_configured() {
        return;
    }
    let (deployment, a, b) = two_serve_nodes(SERVE_CONFIG);
    let users = ["alice", "bob", "carol", "dave"];
    for login in &users[1..] {
        deployment.add_user(login, PW);
    }
    // Each user, at the same time: a wrong password on one node, then the right one on the
    // other, twice. Every answer is an audit event.
    let start = Barrier::new(users.len());
    std::thread::scope(|s| {
        for (i, login) in users.iter().enumerate() {
            let start = &start;
            let ports = if i % 2 == 0 {
                [a.port, b.port]
            } else {
                [b.port, a.port]
            };
            s.spawn(move || {
                start.wait();
                for _ in 0..2 {
                    let mut browser = Agent::default();
                    let res = browser.login(ports[0], login, "Wrong-Password-0000");
                    assert_eq!(res.status, 401, "{res:#?}");
                    let res = browser.login(ports[1], login, PW);
                    assert_eq!(res.status, 303, "{res:#?}");
                }
            });
        }
    });
    let out = deployment.cli_ok(&["audit", "verify"], None);
    let checked: usize = between(&out, "audit log intact: ", " events")
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    assert!(checked >= users.len() * 5, "{out}");
    let export = deployment.cli_ok(&["audit", "export"], None);
    let events: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), checked, "{out}");
    assert!(events.windows(2).all(|w| w[0]["hash"] == w[1]["prev_hash"]));
}

#[test]
fn serve_processes_started_together_on_an_empty_database_migrate_it_once() {
    if !postgres_configured() {
        return;
    }
    let url = fresh_database();
    let deployment = Deployment::new(&url, "");
    let nodes = deployment.start_nodes(2);
    let latest = *bulwark_store_postgres::PgStore::migration_versions()
        .last()
        .unwrap();
    let (applied, rows) = tokio::runtime::Runtime::new().unwrap().block_on(async {
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
    deployment.cli_ok(&["migrate"], None);
    drop(nodes);
}
