//! `/metrics`: loopback only unless a token is set; the counters follow what happened.

use crate::support::*;
use axum::http::StatusCode;

const PW: &str = "Correct-Horse-Battery-Staple-42";

fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_follow_logins_lockouts_gateway_and_mail() {
    let t = TestApp::with_config(
        "[gateway]\nprotected = [\"https://odoo.example.com\"]\ndefault_policy = \"one_factor\"\n\
         [server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .await;
    t.add_user("alice", PW, &["internal"]).await;
    t.browser().login("alice", PW).await;
    for _ in 0..10 {
        t.browser().login("alice", "Wrong-Password-0000").await;
    }
    // Waiting out the delays, failures go on until the account locks.
    for _ in 0..10 {
        t.clock.advance(120);
        t.browser().login("alice", "Wrong-Password-0000").await;
    }
    t.browser().login("nobody", PW).await;
    let ask = t
        .browser_from("127.0.0.1")
        .with_header("x-original-url", "https://odoo.example.com/web")
        .with_header("x-original-method", "GET")
        .with_header("x-forwarded-for", "203.0.113.7");
    assert_eq!(
        ask.get("/api/authz/auth-request").await.status,
        StatusCode::UNAUTHORIZED
    );

    let scrape = t.browser_from("127.0.0.1").get("/metrics").await;
    assert_eq!(scrape.status, StatusCode::OK, "{}", scrape.body);
    assert!(scrape.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = &scrape.body;
    assert_eq!(
        value(
            m,
            "bulwark_logins_total{outcome=\"success\",reason=\"password\"}"
        ),
        Some(1),
        "{m}"
    );
    assert!(
        value(
            m,
            "bulwark_logins_total{outcome=\"failure\",reason=\"wrong password\"}"
        )
        .unwrap()
            >= 3
    );
    assert_eq!(
        value(
            m,
            "bulwark_logins_total{outcome=\"failure\",reason=\"unknown user\"}"
        ),
        Some(1)
    );
    assert!(value(
        m,
        "bulwark_logins_total{outcome=\"denied\",reason=\"throttled\"}"
    )
    .is_some());
    assert_eq!(
        value(m, "bulwark_lockouts_total{kind=\"account\"}"),
        Some(1)
    );
    assert_eq!(
        value(
            m,
            "bulwark_gateway_decisions_total{decision=\"unauthenticated\"}"
        ),
        Some(1)
    );
    assert_eq!(
        value(m, "bulwark_gateway_decisions_total{decision=\"allowed\"}"),
        Some(0)
    );
    assert!(value(m, "bulwark_password_hash_seconds_count").unwrap() >= 12);
    assert_eq!(
        value(m, "bulwark_group_active_users{group=\"internal\"}"),
        Some(1)
    );
    assert_eq!(
        value(m, "bulwark_group_two_factor_users{group=\"internal\"}"),
        Some(0)
    );
    // The lock notice waits in the queue until the worker sends it.
    assert!(value(m, "bulwark_mail_queue").is_some());
    assert!(!m.contains("alice"), "no user names in metrics");

    // Only loopback by default; a proxy's forwarded address counts, not the proxy's.
    assert_eq!(
        t.browser_from("192.0.2.50").get("/metrics").await.status,
        StatusCode::FORBIDDEN
    );
    let via_proxy = t
        .browser_from("127.0.0.1")
        .with_header("x-forwarded-for", "203.0.113.9")
        .get("/metrics")
        .await;
    assert_eq!(via_proxy.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_token_opens_metrics_to_any_address_and_nothing_else_does() {
    let t = TestApp::with_config("[metrics]\ntoken = \"s3cret-metrics-token-0001\"\n").await;
    let far = t.browser_from("192.0.2.50");
    let res = far.get("/metrics").await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers["www-authenticate"], "Bearer");
    for wrong in [
        "Bearer nope",
        "Bearer s3cret-metrics-token-000",
        "Basic czNjcmV0",
    ] {
        let res = t
            .browser_from("127.0.0.1")
            .with_header("authorization", wrong)
            .get("/metrics")
            .await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let ok = far
        .with_header("authorization", "Bearer s3cret-metrics-token-0001")
        .get("/metrics")
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.body.contains("# TYPE bulwark_logins_total counter"));

    let off = TestApp::with_config("[metrics]\nenabled = false\n").await;
    assert_eq!(
        off.browser_from("127.0.0.1").get("/metrics").await.status,
        StatusCode::NOT_FOUND
    );
}

/// Checks the Prometheus text format (version 0.0.4) line by line: comments are HELP or TYPE,
/// every sample is `name{label="value",…} number` of a family declared by a TYPE line.
fn assert_prometheus_text(text: &str) {
    let mut types = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let kind = words.next().unwrap();
            let name = words
                .next()
                .unwrap_or_else(|| panic!("bare comment: {line}"));
            match kind {
                "HELP" => assert!(words.next().is_some_and(|h| !h.is_empty()), "{line}"),
                "TYPE" => {
                    let t = words.next().unwrap();
                    assert!(["counter", "gauge", "histogram"].contains(&t), "{line}");
                    types.insert(name.to_string(), t.to_string());
                }
                _ => panic!("unknown comment: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(!v.contains('\n'), "{line}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE for {line}");
    }
}

#[tokio::test]
async fn the_text_parses_and_counters_move_with_logins() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let scrape = || async { t.browser_from("127.0.0.1").get("/metrics").await.body };
    let before = scrape().await;
    assert_prometheus_text(&before);
    let count = |text: &str| {
        value(
            text,
            "bulwark_logins_total{outcome=\"success\",reason=\"password\"}",
        )
        .unwrap_or(0)
    };
    for _ in 0..3 {
        t.browser().login("alice", PW).await;
    }
    let after = scrape().await;
    assert_prometheus_text(&after);
    assert_eq!(count(&after), count(&before) + 3);
}

/// An audit event the database refuses is counted (and the action it records goes ahead):
/// what an operator alerts on, since the log itself cannot show the gap.
#[tokio::test]
async fn audit_events_the_database_refuses_are_counted() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let scrape = || async { t.browser_from("127.0.0.1").get("/metrics").await.body };
    let failures =
        |text: &str| value(text, "bulwark_audit_write_failures_total").unwrap_or(u64::MAX);
    let before = scrape().await;
    assert_eq!(failures(&before), 0);

    // The audit log refuses logouts from now on (as a full disk or a broken replica would
    // refuse every write).
    t.as_attacker(if on_postgres() {
        "ALTER TABLE audit_log ADD CONSTRAINT refuse_logouts CHECK (event <> 'logout') NOT VALID"
    } else {
        "CREATE TRIGGER refuse_logouts BEFORE INSERT ON audit_log WHEN NEW.event = 'logout' \
         BEGIN SELECT RAISE(ABORT, 'refused'); END"
    })
    .await;
    let b = t.browser();
    b.login("alice", PW).await;
    let logins = t.audit_events("login").await.len();
    assert!(logins >= 1);
    let out = b.post("/logout", &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER, "{}", out.body);
    assert!(t.audit_events("logout").await.is_empty());
    // Logged out all the same: the session is gone.
    assert_eq!(b.get("/account").await.status, StatusCode::SEE_OTHER);

    let after = scrape().await;
    assert_prometheus_text(&after);
    assert_eq!(failures(&after), 1);
    // Events still count as events of the node, written or not.
    assert_eq!(
        value(
            &after,
            "bulwark_audit_events_total{event=\"logout\",outcome=\"success\"}"
        ),
        Some(1)
    );
}
