//! The audit log as an auditor relies on it: searchable by admins only, and tamper-evident —
//! an event altered or deleted behind Bulwark's back (triggers dropped, as an attacker with
//! the database would) is named by the verification; pruning leaves a signed checkpoint.

use crate::api::{admin, error_code, json};
use crate::support::*;
use axum::http::StatusCode;
use bulwark_store::AuditFilter;

const PW: &str = "Correct-Horse-Battery-Staple-42";

async fn tamper(t: &TestApp, sql: &str) {
    t.as_attacker(sql).await;
}

async fn some_history(t: &TestApp) {
    t.add_user("alice", PW, &["internal"]).await;
    t.add_user("bob", PW, &["internal"]).await;
    for _ in 0..3 {
        t.browser().login("alice", PW).await;
        t.clock.advance(3600);
    }
    t.browser().login("bob", "Wrong-Password-0000").await;
}

#[tokio::test]
async fn admins_search_the_log_by_user_event_and_time_and_page_through_it() {
    let t = TestApp::new().await;
    some_history(&t).await;
    let a = admin(&t).await;

    let alice = json(&a.get("/api/v1/audit?subject=alice&event=login").await);
    let items = alice["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{alice}");
    assert!(items
        .iter()
        .all(|e| e["subject"] == "alice" && e["event"] == "login"));
    assert!(
        items[0]["id"].as_i64() > items[1]["id"].as_i64(),
        "newest first"
    );
    assert_eq!(items[0]["hash"].as_str().unwrap().len(), 64);

    let failures = json(&a.get("/api/v1/audit?subject=bob&event=login").await);
    assert_eq!(failures["items"][0]["outcome"], "failure");

    // A time window: only the second login (T0 + 1 h) falls in [T0 + 30 min, T0 + 90 min).
    let window = json(
        &a.get(&format!(
            "/api/v1/audit?subject=alice&event=login&since={}&until={}",
            T0 + 1800,
            T0 + 5400
        ))
        .await,
    );
    assert_eq!(window["items"].as_array().unwrap().len(), 1, "{window}");
    assert_eq!(window["items"][0]["at"], T0 + 3600);
    let by_date = json(
        &a.get("/api/v1/audit?since=2027-01-15&until=2100-01-01")
            .await,
    );
    assert!(!by_date["items"].as_array().unwrap().is_empty());

    // Pages of two, following next_before until it is null.
    let mut seen = Vec::new();
    let mut url = "/api/v1/audit?limit=2".to_string();
    loop {
        let page = json(&a.get(&url).await);
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap()),
        );
        match page["next_before"].as_i64() {
            Some(before) => url = format!("/api/v1/audit?limit=2&before={before}"),
            None => break,
        }
    }
    let all = t
        .app
        .search_audit(&AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(seen, all.iter().map(|e| e.id).collect::<Vec<_>>());

    for bad in [
        "limit=0",
        "limit=501",
        "since=yesterday",
        "until=2027-13-01",
        "before=x",
    ] {
        let res = a.get(&format!("/api/v1/audit?{bad}")).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{bad}: {}", res.body);
        assert_eq!(error_code(&res), "invalid_input", "{bad}");
    }

    let clerk = t.browser();
    clerk.login("alice", PW).await;
    for path in ["/api/v1/audit", "/api/v1/audit/verify"] {
        let res = clerk.get(path).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(
        t.browser().get("/api/v1/audit").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_altered_event_is_named_by_the_verification() {
    let t = TestApp::new().await;
    some_history(&t).await;
    let report = t.app.verify_audit().await.unwrap();
    assert!(report.intact(), "{report:?}");
    let total = report.checked;
    assert!(total >= 6, "{report:?}");
    let (head_id, _) = report.head.clone().unwrap();

    // The attacker turns bob's failed login into a success.
    let target = t
        .app
        .search_audit(&AuditFilter {
            subject: Some("bob".into()),
            event: Some("login".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()[0]
        .id;
    tamper(
        &t,
        &format!("UPDATE audit_log SET outcome = 'success' WHERE id = {target}"),
    )
    .await;
    let report = t.app.verify_audit().await.unwrap();
    assert_eq!(
        report.problem.as_deref(),
        Some(format!("record {target} was altered: its contents do not match its hash").as_str())
    );
    assert_eq!(report.checked, u64::try_from(target).unwrap() - 1);

    let a = admin(&t).await;
    let api = json(&a.get("/api/v1/audit/verify").await);
    assert_eq!(api["intact"], false);
    assert!(api["problem"]
        .as_str()
        .unwrap()
        .contains(&format!("record {target}")));
    assert!(head_id > 0);
}

#[tokio::test]
async fn a_deleted_event_breaks_the_chain_where_it_was() {
    let t = TestApp::new().await;
    some_history(&t).await;
    let all = t
        .app
        .search_audit(&AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let victim = all[all.len() / 2].id;
    tamper(&t, &format!("DELETE FROM audit_log WHERE id = {victim}")).await;
    let problem = t.app.verify_audit().await.unwrap().problem.unwrap();
    assert!(
        problem.contains(&format!("between {} and {}", victim - 1, victim + 1)),
        "{problem}"
    );
}

#[tokio::test]
async fn pruning_keeps_the_chain_verifiable_behind_a_signed_checkpoint() {
    let t = TestApp::with_config("[audit]\nretention_days = 30\n").await;
    some_history(&t).await;
    let before = t.app.verify_audit().await.unwrap().checked;
    assert!(
        t.app.prune_audit(30 * 86_400).await.unwrap().is_none(),
        "nothing is old yet"
    );

    t.clock.advance(31 * 86_400);
    t.browser().login("alice", PW).await;
    let checkpoint = t.app.prune_audit(30 * 86_400).await.unwrap().unwrap();
    assert_eq!(u64::try_from(checkpoint.pruned).unwrap(), before);
    assert!(
        t.app.prune_audit(30 * 86_400).await.unwrap().is_none(),
        "pruned once"
    );
    let report = t.app.verify_audit().await.unwrap();
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.checkpoints, 1);
    // Left: the new login and the record of the pruning itself.
    let left = t
        .app
        .search_audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left[0].event, "audit_pruned");
    assert!(left[0]
        .detail
        .as_deref()
        .unwrap()
        .contains(&format!("up to {}", checkpoint.last_id)));
    assert!(left.iter().all(|e| e.id > checkpoint.last_id));

    // A forged checkpoint (to hide more deletions) fails its signature.
    tamper(
        &t,
        &format!(
            "UPDATE audit_checkpoints SET last_id = last_id + 1 WHERE last_id = {}",
            checkpoint.last_id
        ),
    )
    .await;
    let problem = t.app.verify_audit().await.unwrap().problem.unwrap();
    assert!(problem.contains("wrong signature"), "{problem}");
}

#[tokio::test]
async fn pruning_refuses_to_launder_a_tampered_event() {
    let t = TestApp::new().await;
    some_history(&t).await;
    tamper(&t, "UPDATE audit_log SET ip = '203.0.113.66' WHERE id = 2").await;
    t.clock.advance(100 * 86_400);
    let err = t.app.prune_audit(86_400).await.unwrap_err();
    assert!(err.to_string().contains("record 2 was altered"), "{err}");
    assert!(t.store.list_audit_checkpoints().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_console_searches_pages_exports_and_verifies_the_log() {
    let t = TestApp::new().await;
    some_history(&t).await;
    let a = admin(&t).await;
    let page = a.get("/admin/audit?subject=alice&event=login").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(
        page.body.matches("<td>login</td>").count(),
        3,
        "{}",
        page.body
    );
    assert!(!page.body.contains("<td>bob</td>"));
    let window = a
        .get("/admin/audit?subject=alice&event=login&since=2027-01-15T08:30&until=2027-01-15T09:30")
        .await;
    assert_eq!(window.body.matches("<td>login</td>").count(), 1);
    let bad = a.get("/admin/audit?since=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("is not a time"));

    let export = a.get("/admin/audit.jsonl?subject=alice").await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(export.headers["content-disposition"]
        .to_str()
        .unwrap()
        .contains(".jsonl"));
    let lines: Vec<serde_json::Value> = export
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 4, "{}", export.body);
    assert!(lines.iter().all(|e| e["subject"] == "alice"));
    assert!(lines
        .windows(2)
        .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()));

    let ok = a.get("/admin/audit?verify=1").await;
    assert!(ok.body.contains("The audit log is intact"), "{}", ok.body);
    tamper(&t, "UPDATE audit_log SET detail = 'edited' WHERE id = 3").await;
    let broken = a.get("/admin/audit?verify=1").await;
    assert!(
        broken
            .body
            .contains("The audit log is BROKEN: record 3 was altered"),
        "{}",
        broken.body
    );

    let clerk = t.browser();
    clerk.login("alice", PW).await;
    for path in ["/admin/audit", "/admin/audit.jsonl"] {
        assert_eq!(
            clerk.get(path).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
}
