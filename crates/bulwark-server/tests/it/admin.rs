//! The admin console: every act through the page changes the right state and writes the
//! right audit event; acts are refused to non-admins and, once the admin's password check is
//! over 10 minutes old, until they type it again. The user list filters and pages.

use crate::api::{admin, error_code, json};
use crate::support::*;
use crate::two_factor::user_with_totp;
use axum::http::StatusCode;
use bulwark_core::account::{DisplayName, Email, GroupName, Login};
use bulwark_core::password::hash::PasswordHash;
use bulwark_store::{AuditFilter, NewUser, UserRecord};

const PW: &str = "Correct-Horse-Battery-Staple-42";

async fn act(b: &Browser, login: &str, fields: &[(&str, &str)]) -> Response {
    b.post(&format!("/admin/users/{login}/action"), fields)
        .await
}

async fn user(t: &TestApp, login: &str) -> UserRecord {
    t.app.user_by_login(login).await.unwrap()
}

/// The newest audit event about `subject`: (event, actor).
async fn last_event(t: &TestApp, subject: &str) -> (String, String) {
    let e = t
        .app
        .search_audit(&AuditFilter {
            subject: Some(subject.into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);
    (e.event, e.actor.unwrap_or_default())
}

fn done(res: &Response, login: &str, action: &str) {
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{action}: {}", res.body);
    assert_eq!(
        res.location(),
        format!("/admin/users/{login}?done={action}")
    );
}

#[tokio::test]
async fn every_console_act_changes_state_and_is_audited() {
    let t = TestApp::new().await;
    let a = admin(&t).await;
    t.add_user("alice", PW, &["internal"]).await;
    let alice = t.browser();
    alice.login("alice", PW).await;
    for _ in 0..10 {
        t.browser().login("alice", "Wrong-Password-0000").await;
    }
    assert!(t
        .app
        .user_lock(&user(&t, "alice").await)
        .await
        .unwrap()
        .is_some());
    let page = a.get("/admin/users/alice").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("locked until"));
    assert!(page.body.contains("value=\"unlock\""));
    assert!(
        !page.body.contains("Your password</label>"),
        "fresh: no password asked"
    );

    let res = act(&a, "alice", &[("action", "unlock")]).await;
    done(&res, "alice", "unlock");
    assert!(t
        .app
        .user_lock(&user(&t, "alice").await)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        last_event(&t, "alice").await,
        ("user_unlocked".into(), "root".into())
    );
    assert!(a
        .get(res.location())
        .await
        .body
        .contains("The account is unlocked."));

    let res = act(&a, "alice", &[("action", "force-password-change")]).await;
    done(&res, "alice", "force-password-change");
    assert!(user(&t, "alice").await.must_change_password);
    assert_eq!(last_event(&t, "alice").await.0, "password_change_forced");

    assert_eq!(alice.get("/account").await.status, StatusCode::SEE_OTHER);
    let alice = t.browser();
    alice.login("alice", PW).await;
    let res = act(&a, "alice", &[("action", "revoke-sessions")]).await;
    done(&res, "alice", "revoke-sessions");
    assert!(t
        .store
        .list_user_sessions(user(&t, "alice").await.id)
        .await
        .unwrap()
        .is_empty());
    assert!(alice
        .get("/password/change")
        .await
        .location()
        .starts_with("/login"));
    assert_eq!(last_event(&t, "alice").await.0, "sessions_revoked_by_admin");

    let res = act(
        &a,
        "alice",
        &[("action", "groups"), ("groups", "internal, portal")],
    )
    .await;
    done(&res, "alice", "groups");
    assert_eq!(user(&t, "alice").await.groups, ["internal", "portal"]);
    assert_eq!(last_event(&t, "alice").await.0, "groups_changed");
    let bad = act(
        &a,
        "alice",
        &[("action", "groups"), ("groups", "Not A Group")],
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(bad.body.contains("role=\"alert\""));

    let res = act(&a, "alice", &[("action", "disable")]).await;
    done(&res, "alice", "disable");
    assert!(!user(&t, "alice").await.active);
    assert_eq!(last_event(&t, "alice").await.0, "user_disabled");
    let res = act(&a, "alice", &[("action", "enable")]).await;
    done(&res, "alice", "enable");
    assert!(user(&t, "alice").await.active);
    assert_eq!(last_event(&t, "alice").await.0, "user_enabled");

    let res = act(&a, "alice", &[("action", "invite")]).await;
    done(&res, "alice", "invite");
    assert_eq!(last_event(&t, "alice").await.0, "user_invited");
    let mails = t.mails().await;
    assert!(mails
        .iter()
        .any(|m| m.to.contains("alice@example.com") && m.text.contains("/invite/")));

    // A user with an authenticator and a trusted browser.
    let (bob, _, _) = user_with_totp(&t, "bob", &["internal"]).await;
    let bob_id = user(&t, "bob").await.id;
    let res = act(&a, "bob", &[("action", "revoke-devices")]).await;
    done(&res, "bob", "revoke-devices");
    assert_eq!(
        last_event(&t, "bob").await.0,
        "trusted_devices_revoked_by_admin"
    );
    let res = act(&a, "bob", &[("action", "reset-2fa")]).await;
    done(&res, "bob", "reset-2fa");
    assert!(t.store.find_totp(bob_id).await.unwrap().is_none());
    assert_eq!(last_event(&t, "bob").await.0, "totp_reset_by_admin");
    assert!(bob.get("/account").await.location().starts_with("/login"));

    let res = act(&a, "bob", &[("action", "delete")]).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("Tick the box"));
    let res = act(&a, "bob", &[("action", "delete"), ("confirm", "yes")]).await;
    assert_eq!(res.location(), "/admin/users?done=deleted");
    assert!(t.store.get_user(bob_id).await.is_err());
    assert_eq!(
        last_event(&t, "bob").await,
        ("user_deleted".into(), "root".into())
    );

    // The last administrator cannot remove themself.
    let res = act(&a, "root", &[("action", "disable")]).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(
        res.body.contains("last active administrator"),
        "{}",
        res.body
    );
    assert!(user(&t, "root").await.active);
    for bad in [vec![("action", "explode")], vec![]] {
        assert_eq!(act(&a, "alice", &bad).await.status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(
        act(&a, "nobody", &[("action", "unlock")]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.get("/admin/users/nobody").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn console_acts_need_a_fresh_password_check() {
    let t = TestApp::new().await;
    let a = admin(&t).await;
    t.add_user("alice", PW, &["internal"]).await;
    t.clock.advance(601);
    let page = a.get("/admin/users/alice").await;
    assert!(
        page.body.contains("need your password again"),
        "{}",
        page.body
    );
    assert!(page.body.contains("autocomplete=\"current-password\""));

    let force = [("action", "force-password-change")];
    let res = act(&a, "alice", &force).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("Type your password"), "{}", res.body);
    let res = act(&a, "alice", &[force[0], ("password", "Not-My-Password-99")]).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("Your password is not correct."));
    assert!(
        !user(&t, "alice").await.must_change_password,
        "nothing changed"
    );
    assert_eq!(last_event(&t, "root").await.0, "password_check");

    let res = act(&a, "alice", &[force[0], ("password", PW)]).await;
    done(&res, "alice", "force-password-change");
    assert!(user(&t, "alice").await.must_change_password);
    // The check is fresh again for the next 10 minutes.
    done(
        &act(&a, "alice", &[("action", "unlock")]).await,
        "alice",
        "unlock",
    );
    assert_eq!(
        t.app
            .search_audit(&AuditFilter {
                event: Some("password_confirmed".into()),
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        1
    );

    // The API: the same rule, with its own confirmation call.
    t.clock.advance(601);
    let res = a
        .request(
            axum::http::Method::POST,
            "/api/v1/users/alice/unlock",
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&res), "password_confirmation_required");
    let confirm = |pw: &str| {
        let body = serde_json::json!({"password": pw}).to_string();
        a.request(
            axum::http::Method::POST,
            "/api/v1/me/confirm-password",
            Some("application/json"),
            body.into_bytes(),
        )
    };
    let res = confirm("Not-My-Password-99").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.body);
    let res = confirm(PW).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(json(&res)["done"], true);
    let res = a
        .request(
            axum::http::Method::POST,
            "/api/v1/users/alice/unlock",
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
}

#[tokio::test]
async fn the_console_is_for_admins_only() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    t.add_user("bob", PW, &["internal"]).await;
    let clerk = t.browser();
    clerk.login("alice", PW).await;
    for path in [
        "/admin",
        "/admin/users",
        "/admin/users/bob",
        "/admin/users/new",
    ] {
        assert_eq!(
            clerk.get(path).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    let res = act(&clerk, "bob", &[("action", "disable"), ("password", PW)]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(user(&t, "bob").await.active);
    let res = clerk
        .post(
            "/admin/users/new",
            &[("login", "eve"), ("email", "eve@example.com")],
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(t.app.user_by_login("eve").await.is_err());
    let anonymous = t.browser();
    let res = act(&anonymous, "bob", &[("action", "disable")]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert!(res.location().starts_with("/login"));
    assert!(user(&t, "bob").await.active);
}

#[tokio::test]
async fn create_and_invite_from_the_console() {
    let t = TestApp::new().await;
    let a = admin(&t).await;
    let form = a.get("/admin/users/new").await;
    assert_eq!(form.status, StatusCode::OK);
    let res = a
        .post(
            "/admin/users/new",
            &[
                ("login", "carol"),
                ("email", "carol@example.com"),
                ("display_name", "Carol C"),
                ("groups", "internal, portal"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/admin/users/carol?done=created");
    let carol = user(&t, "carol").await;
    assert_eq!(carol.groups, ["internal", "portal"]);
    assert!(!carol.has_password);
    let mails = t.mails().await;
    assert!(mails
        .iter()
        .any(|m| m.to.contains("carol@example.com") && m.text.contains("/invite/")));
    // Mistakes come back on the form with what was typed.
    let res = a
        .post(
            "/admin/users/new",
            &[("login", "carol"), ("email", "c2@example.com")],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("value=\"c2@example.com\""));
    let res = a
        .post("/admin/users/new", &[("login", "dave"), ("email", "")])
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("e-mail address is needed"));
}

#[tokio::test]
async fn the_user_list_filters_and_pages() {
    let t = TestApp::with_config("[policy]\npreset = \"strict\"\n").await;
    let a = admin(&t).await;
    let hash = PasswordHash::parse(
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
    )
    .unwrap();
    for i in 0..120 {
        let login = format!("u{i:03}");
        let u = t
            .store
            .insert_user(&NewUser {
                login: Login::parse(&login).unwrap(),
                email: Some(Email::parse(&format!("{login}@example.com")).unwrap()),
                display_name: DisplayName::parse(&format!("Person {i}")).unwrap(),
                groups: vec![
                    GroupName::parse(if i % 4 == 0 { "portal" } else { "internal" }).unwrap(),
                ],
                password_hash: Some(hash.clone()),
                must_change_password: false,
                // Every third password is older than the strict preset's 90 days.
                created_at: if i % 3 == 0 { T0 - 100 * 86_400 } else { T0 },
            })
            .await
            .unwrap();
        if i % 10 == 0 {
            t.store.update_active(u.id, false).await.unwrap();
        }
        if i % 7 == 0 {
            t.store.update_last_login(u.id, T0).await.unwrap();
        }
    }
    for _ in 0..10 {
        t.browser().login("u005", "Wrong-Password-0000").await;
    }
    let rows = |body: &str| body.matches("<tr><td><a href=\"/admin/users/").count();
    let next = |body: &str| {
        body.split("href=\"")
            .filter_map(|s| s.split('"').next())
            .find(|h| h.contains("after="))
            .map(|h| h.replace("&amp;", "&"))
    };
    // 121 users (with root): pages of 50, 50 and 21.
    let p1 = a.get("/admin/users").await;
    assert_eq!(p1.status, StatusCode::OK, "{}", p1.body);
    assert_eq!(rows(&p1.body), 50);
    let p2 = a.get(&next(&p1.body).unwrap()).await;
    assert_eq!(rows(&p2.body), 50);
    assert!(p2.body.contains("First page"));
    let p3 = a.get(&next(&p2.body).unwrap()).await;
    assert_eq!(rows(&p3.body), 21);
    assert!(next(&p3.body).is_none());

    let count = |status: &'static str| {
        let a = &a;
        async move {
            let mut n = 0;
            let mut url = Some(format!("/admin/users?status={status}"));
            while let Some(u) = url {
                let page = a.get(&u).await;
                assert_eq!(page.status, StatusCode::OK, "{status}");
                n += rows(&page.body);
                url = next(&page.body);
            }
            n
        }
    };
    assert_eq!(count("disabled").await, 12);
    assert_eq!(count("2fa-on").await, 1, "root");
    assert_eq!(count("2fa-off").await, 120);
    assert_eq!(count("locked").await, 1);
    assert_eq!(count("password-expired").await, 40);
    // Never logged in counts from creation: only the old accounts that did not log in.
    let stale = (0..120).filter(|i| i % 3 == 0 && i % 7 != 0).count();
    assert_eq!(count("stale").await, stale);
    let portal = a.get("/admin/users?group=portal&q=u01").await;
    assert_eq!(
        rows(&portal.body),
        2,
        "u012, u016 (u010 and the others are internal)"
    );
    let person = a.get("/admin/users?q=person%2011").await;
    assert!(person.body.contains("u011") && person.body.contains("u110"));
    assert_eq!(
        a.get("/admin/users?status=bogus").await.status,
        StatusCode::BAD_REQUEST
    );
}

async fn api_post(b: &Browser, path: &str, body: Option<serde_json::Value>) -> Response {
    let (content_type, bytes) = match body {
        Some(v) => (Some("application/json"), v.to_string().into_bytes()),
        None => (None, Vec::new()),
    };
    b.request(axum::http::Method::POST, path, content_type, bytes)
        .await
}

#[tokio::test]
async fn every_admin_act_through_the_api_changes_state_and_is_audited() {
    let t = TestApp::new().await;
    let a = admin(&t).await;
    let res = api_post(
        &a,
        "/api/v1/users",
        Some(serde_json::json!({"login": "carol", "email": "carol@example.com", "display_name": "Carol", "groups": ["internal"]})),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(json(&res)["login"], "carol");
    assert!(!user(&t, "carol").await.has_password);
    assert_eq!(last_event(&t, "carol").await.0, "user_invited");
    let bad = api_post(&a, "/api/v1/users", Some(serde_json::json!({"login": "x"}))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&bad), "invalid_input");
    let taken = api_post(
        &a,
        "/api/v1/users",
        Some(serde_json::json!({"login": "carol", "email": "c2@example.com"})),
    )
    .await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.body);

    t.add_user("dave", PW, &["internal"]).await;
    let dave = t.browser();
    dave.login("dave", PW).await;
    for (path, event) in [
        ("force-password-change", "password_change_forced"),
        ("revoke-sessions", "sessions_revoked_by_admin"),
        ("revoke-trusted-devices", "trusted_devices_revoked_by_admin"),
        ("invite", "user_invited"),
        ("disable", "user_disabled"),
        ("enable", "user_enabled"),
    ] {
        let res = api_post(&a, &format!("/api/v1/users/dave/{path}"), None).await;
        assert_eq!(res.status, StatusCode::OK, "{path}: {}", res.body);
        assert_eq!(
            last_event(&t, "dave").await,
            (event.to_string(), "root".to_string()),
            "{path}"
        );
    }
    let d = user(&t, "dave").await;
    assert!(d.must_change_password && d.active);
    assert!(t.store.list_user_sessions(d.id).await.unwrap().is_empty());
    let res = api_post(
        &a,
        "/api/v1/users/dave/groups",
        Some(serde_json::json!({"groups": ["portal"]})),
    )
    .await;
    assert_eq!(json(&res)["groups"], serde_json::json!(["portal"]));
    assert_eq!(last_event(&t, "dave").await.0, "groups_changed");
    let res = a
        .request(
            axum::http::Method::DELETE,
            "/api/v1/users/dave",
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert!(t.app.user_by_login("dave").await.is_err());
    assert_eq!(last_event(&t, "dave").await.0, "user_deleted");

    // After 10 minutes, nothing changes until the password is confirmed again.
    t.clock.advance(601);
    let res = api_post(&a, "/api/v1/users/carol/disable", None).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&res), "password_confirmation_required");
    assert!(user(&t, "carol").await.active);
    // Non-admins are refused whatever they send.
    t.add_user("erin", PW, &["internal"]).await;
    let erin = t.browser();
    erin.login("erin", PW).await;
    let me = json(&erin.get("/api/v1/me").await);
    let erin = erin.with_header("x-csrf-token", me["csrf_token"].as_str().unwrap());
    let res = api_post(&erin, "/api/v1/users/carol/disable", None).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(user(&t, "carol").await.active);
}

/// Makes the database refuse to delete sessions from now on, as a failing disk or a broken
/// replica would refuse a write half-way through an action.
async fn refuse_session_deletes(t: &TestApp) {
    t.before_session_deletes(
        "RAISE EXCEPTION 'refused';",
        "SELECT RAISE(ABORT, 'refused');",
    )
    .await;
}

#[tokio::test]
async fn an_action_stopped_half_way_is_audited_with_what_may_have_happened() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    refuse_session_deletes(&t).await;
    let client = bulwark_server::services::ClientInfo::cli();

    // Disabling takes several statements: the account is disabled, then ending its
    // sessions fails.
    let err = t
        .app
        .set_user_active("alice", false, "root", &client)
        .await
        .unwrap_err();
    let user = t.app.user_by_login("alice").await.unwrap();
    assert!(!user.active, "the first step took effect");
    let events = t.audit_events("user_disabled").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.outcome, "failure");
    assert_eq!(event.actor.as_deref(), Some("root"));
    assert_eq!(event.subject.as_deref(), Some("alice"));
    let detail = event.detail.as_deref().unwrap_or("");
    assert!(
        detail.starts_with("stopped part-way (") && detail.contains("may have taken effect"),
        "{detail} ({err})"
    );
    // No internals in the detail.
    assert!(!detail.contains("refused"), "{detail}");

    // The same for a two-factor reset by an administrator.
    t.app
        .admin_reset_two_factor("alice", "root", &client)
        .await
        .unwrap_err();
    let events = t.audit_events("totp_reset_by_admin").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].outcome, "failure");
}
