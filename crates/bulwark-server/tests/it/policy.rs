//! The runtime security policy: seeded once from the configuration file, changed through the
//! console page and the API (admins with a second factor and a fresh password check only),
//! validated whole, audited with old and new values, and in force at once on the node that
//! made the change and within the refresh period on every other.

use crate::api::{admin, error_code, json};
use crate::support::*;
use axum::http::{Method, StatusCode};
use bulwark_store::AuditFilter;
use serde_json::{json, Value};

const PW: &str = "Correct-Horse-Battery-Staple-42";

/// The `detail` of every `policy_changed` event, oldest first, with its actor.
async fn policy_events(t: &TestApp) -> Vec<(String, String)> {
    let mut events: Vec<(String, String)> = t
        .app
        .search_audit(&AuditFilter {
            event: Some("policy_changed".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.detail.unwrap_or_default(), e.actor.unwrap_or_default()))
        .collect();
    events.reverse();
    events
}

/// The stored JSON text of one setting, if stored.
async fn stored(t: &TestApp, name: &str) -> Option<String> {
    t.store
        .list_settings()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.value)
}

async fn post_json(b: &Browser, path: &str, body: Value) -> Response {
    b.request(
        Method::POST,
        path,
        Some("application/json"),
        body.to_string().into_bytes(),
    )
    .await
}

#[tokio::test]
async fn the_console_changes_the_policy_and_audits_old_and_new_values() {
    let t = TestApp::new().await;
    let a = admin(&t).await;
    let page = a.get("/admin/policy").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("name=\"policy.min_length\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("value=\"12\""));
    assert!(page.body.contains("From the preset."));
    assert!(page.body.contains("No change since the policy was stored."));

    // Only what moved is a change: the preset's min_upper is submitted untouched.
    let res = a
        .post(
            "/admin/policy",
            &[
                ("policy.min_length", "16"),
                ("policy.min_upper", "0"),
                ("sessions.idle_minutes", "15"),
                ("two_factor.trusted_device_days", "0"),
                ("lockout.account.lock_after", "10"),
                ("new_group", "finance"),
                ("new_rule", "min_length"),
                ("new_value", "20"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/admin/policy?changed=4");
    let p = t.app.policy();
    assert_eq!(p.passwords.base.min_length, 16);
    assert_eq!(p.passwords.for_groups(&["finance"]).min_length, 20);
    assert_eq!(p.sessions.idle_minutes, 15);
    assert_eq!(p.two_factor.trusted_device_days, 0);
    assert_eq!(stored(&t, "policy.min_length").await.as_deref(), Some("16"));
    assert_eq!(
        stored(&t, "policy.min_upper").await,
        None,
        "still from the preset"
    );
    assert_eq!(
        policy_events(&t).await,
        [
            (
                "policy.groups.finance.min_length: (preset) -> 20".to_string(),
                "root".to_string()
            ),
            ("policy.min_length: (preset) -> 16".into(), "root".into()),
            ("sessions.idle_minutes: 30 -> 15".into(), "root".into()),
            (
                "two_factor.trusted_device_days: 30 -> 0".into(),
                "root".into()
            ),
        ]
    );
    let page = a.get(res.location()).await;
    assert!(
        page.body.contains("Saved: 4 settings changed."),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("sessions.idle_minutes: 30 -&gt; 15"),
        "{}",
        page.body
    );

    // In force: a user's password rules say 16, and the second step no longer offers to
    // remember the browser.
    t.add_user("alice", PW, &["portal"]).await;
    let alice = t.browser();
    alice.login("alice", PW).await;
    let change = alice.get("/password/change").await;
    assert!(change.body.contains("16 to "), "{}", change.body);

    // A value the file would refuse is refused, naming the setting; nothing moves.
    let bad = a
        .post(
            "/admin/policy",
            &[("policy.min_length", "0"), ("sessions.idle_minutes", "20")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("role=\"alert\""));
    assert!(bad.body.contains("policy.min_length"), "{}", bad.body);
    assert!(
        bad.body.contains("value=\"0\""),
        "what was typed is shown again"
    );
    let bad = a
        .post("/admin/policy", &[("sessions.idle_minutes", "soon")])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("is not a whole number"), "{}", bad.body);
    assert_eq!(t.app.policy().sessions.idle_minutes, 15);
    assert_eq!(policy_events(&t).await.len(), 4);

    // Emptying a rule returns it to the preset.
    let res = a.post("/admin/policy", &[("policy.min_length", "")]).await;
    assert_eq!(res.location(), "/admin/policy?changed=1", "{}", res.body);
    assert_eq!(t.app.policy().passwords.base.min_length, 12);
    assert_eq!(
        policy_events(&t).await.last().unwrap().0,
        "policy.min_length: 16 -> (preset)"
    );
    // Settings that are not rules cannot be emptied.
    let bad = a
        .post("/admin/policy", &[("sessions.idle_minutes", "")])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_policy_page_is_for_admins_with_a_fresh_password_check() {
    let t = TestApp::new().await;
    t.add_user("clerk", PW, &["portal"]).await;
    let clerk = t.browser();
    clerk.login("clerk", PW).await;
    assert_eq!(
        clerk.get("/admin/policy").await.status,
        StatusCode::FORBIDDEN
    );
    let res = clerk
        .post("/admin/policy", &[("policy.min_length", "8")])
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(
        post_json(
            &clerk,
            "/api/v1/policy",
            json!({"settings": {"policy.min_length": 8}})
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(t.app.policy().passwords.base.min_length, 12);

    let a = admin(&t).await;
    t.clock.advance(601);
    let page = a.get("/admin/policy").await;
    assert!(page.body.contains("autocomplete=\"current-password\""));
    let res = a
        .post("/admin/policy", &[("policy.min_length", "14")])
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("Type your password"), "{}", res.body);
    let res = a
        .post(
            "/admin/policy",
            &[
                ("policy.min_length", "14"),
                ("password", "Wrong-Password-123"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(t.app.policy().passwords.base.min_length, 12);
    let res = post_json(
        &a,
        "/api/v1/policy",
        json!({"settings": {"policy.min_length": 14}}),
    )
    .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&res), "password_confirmation_required");
    assert!(policy_events(&t).await.is_empty());

    let res = a
        .post(
            "/admin/policy",
            &[("policy.min_length", "14"), ("password", PW)],
        )
        .await;
    assert_eq!(res.location(), "/admin/policy?changed=1", "{}", res.body);
    assert_eq!(t.app.policy().passwords.base.min_length, 14);
}

#[tokio::test]
async fn the_api_reads_and_changes_the_same_settings() {
    let t = TestApp::new().await;
    let a = admin(&t).await;
    let res = a.get("/api/v1/policy").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let settings = json(&res)["settings"].as_array().unwrap().clone();
    let find = |name: &str| {
        settings
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        find("lockout.account.lock_after"),
        json!({"name": "lockout.account.lock_after", "value": 10, "set": true})
    );
    assert_eq!(find("policy.min_upper")["set"], false);
    assert_eq!(
        find("two_factor.required_groups")["value"],
        json!(["admins"])
    );

    let res = post_json(
        &a,
        "/api/v1/policy",
        json!({"settings": {"lockout.account.free_attempts": 1, "lockout.account.lock_after": 3, "two_factor.required_groups": ["portal"]}}),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let body = json(&res);
    assert_eq!(
        body["changed"],
        json!([
            {"name": "lockout.account.free_attempts", "old": 3, "new": 1},
            {"name": "lockout.account.lock_after", "old": 10, "new": 3},
            {"name": "two_factor.required_groups", "old": ["admins"], "new": ["admins", "portal"]},
        ])
    );
    // In force at once: three wrong passwords lock an account.
    let bob = t.add_user("bob", PW, &["internal"]).await;
    for _ in 0..3 {
        t.browser().login("bob", "Not-Bobs-Password-1").await;
        t.clock.advance(120);
    }
    assert!(
        t.app.user_lock(&bob).await.unwrap().is_some(),
        "locked after 3"
    );
    assert!(t.app.policy().two_factor.required_for(&["portal"]));

    for (body, fragment) in [
        (
            json!({"settings": {"sessions.idle_minutes": "ten"}}),
            "sessions.idle_minutes",
        ),
        (
            json!({"settings": {"sessions.idle_minutes": 0}}),
            "sessions.idle_minutes",
        ),
        (
            json!({"settings": {"gateway.default_policy": "bypass"}}),
            "gateway.default_policy",
        ),
        (
            json!({"settings": {"lockout.account.lock_after": 1}}),
            "lockout.account",
        ),
        (json!({"settings": {}}), "no setting"),
        (json!({"changes": {}}), "unknown field"),
    ] {
        let res = post_json(&a, "/api/v1/policy", body.clone()).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{body}: {}", res.body);
        assert_eq!(error_code(&res), "invalid_input");
        assert!(res.body.contains(fragment), "{body}: {}", res.body);
    }
    let res = a
        .request(
            Method::POST,
            "/api/v1/policy",
            Some("application/json"),
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        t.app.policy().lockout.account.lock_after,
        3,
        "refusals changed nothing"
    );

    // null returns a rule to its preset.
    post_json(
        &a,
        "/api/v1/policy",
        json!({"settings": {"policy.expiry_days": 90}}),
    )
    .await;
    let res = post_json(
        &a,
        "/api/v1/policy",
        json!({"settings": {"policy.expiry_days": null}}),
    )
    .await;
    assert_eq!(
        json(&res)["changed"],
        json!([{"name": "policy.expiry_days", "old": 90, "new": null}])
    );
    assert_eq!(t.app.policy().passwords.base.expiry_days, 0);
    let events = policy_events(&t).await;
    assert_eq!(events.len(), 5);
    assert_eq!(
        events[4],
        (
            "policy.expiry_days: 90 -> (preset)".to_string(),
            "root".to_string()
        )
    );
}

#[tokio::test]
async fn the_file_seeds_the_policy_once_and_the_database_wins_after() {
    let t =
        TestApp::with_config("[policy]\nmin_length = 14\n[sessions]\nidle_minutes = 20\n").await;
    t.app.load_policy().await.unwrap();
    assert_eq!(stored(&t, "policy.min_length").await.as_deref(), Some("14"));
    assert_eq!(
        stored(&t, "sessions.idle_minutes").await.as_deref(),
        Some("20")
    );
    t.app
        .change_policy(
            "root",
            &Default::default(),
            &[("sessions.idle_minutes".into(), Some(json!(25)))],
        )
        .await
        .unwrap();

    // A node started later with another file: the stored policy is in force.
    let other = TestApp::with_store(
        "[policy]\nmin_length = 18\n[sessions]\nidle_minutes = 5\n",
        t.store.clone(),
    )
    .await;
    assert_eq!(
        other.app.policy().passwords.base.min_length,
        18,
        "the file until loaded"
    );
    other.app.load_policy().await.unwrap();
    assert_eq!(other.app.policy().passwords.base.min_length, 14);
    assert_eq!(other.app.policy().sessions.idle_minutes, 25);
}

#[tokio::test]
async fn a_change_on_one_node_reaches_the_others_at_their_next_refresh() {
    let a = TestApp::new().await;
    let b = TestApp::with_store("", a.store.clone()).await;
    a.app.load_policy().await.unwrap();
    b.app.load_policy().await.unwrap();
    assert!(!b.app.refresh_policy().await.unwrap(), "nothing new");
    // The same groups written another way (`admins` twice): the same policy.
    a.as_attacker(
        "UPDATE settings SET value = '[\"admins\", \"admins\"]' WHERE name = 'two_factor.required_groups'",
    )
    .await;
    assert!(
        !b.app.refresh_policy().await.unwrap(),
        "the same policy, not a change"
    );
    a.app
        .change_policy(
            "root",
            &Default::default(),
            &[("policy.min_length".into(), Some(json!(15)))],
        )
        .await
        .unwrap();
    assert_eq!(
        a.app.policy().passwords.base.min_length,
        15,
        "at once where it was made"
    );
    assert_eq!(b.app.policy().passwords.base.min_length, 12);
    assert!(b.app.refresh_policy().await.unwrap());
    assert_eq!(b.app.policy().passwords.base.min_length, 15);
}

#[tokio::test]
async fn a_tampered_stored_policy_is_never_put_in_force() {
    let t = TestApp::new().await;
    t.app.load_policy().await.unwrap();
    t.as_attacker("UPDATE settings SET value = '0' WHERE name = 'lockout.account.lock_after'")
        .await;
    assert!(!t.app.refresh_policy().await.unwrap(), "kept the valid one");
    assert_eq!(t.app.policy().lockout.account.lock_after, 10);
    let err = t.app.load_policy().await.unwrap_err().to_string();
    assert!(err.contains("lockout.account"), "{err}");
    // An admin repairs it with a change that makes the whole valid again.
    let moved = t
        .app
        .change_policy(
            "root",
            &Default::default(),
            &[("lockout.account.lock_after".into(), Some(json!(8)))],
        )
        .await
        .unwrap();
    assert_eq!(moved.len(), 1);
    t.app.load_policy().await.unwrap();
    assert_eq!(t.app.policy().lockout.account.lock_after, 8);
}
