//! In-process HTTP tests of the web pages: login, sessions, CSRF, lockout, password change,
//! reset links, expiry, malformed input, security headers.

use crate::support::*;
use axum::http::{Method, StatusCode};
use bulwark_core::password::hash::PasswordHash;
use bulwark_core::token::TokenHash;
use bulwark_server::services::{ClientInfo, ServiceError};

const PW: &str = "Correct-Horse-Battery-Staple-42";
const PW2: &str = "Quiet-Violet-Lantern-Harbor-77";
const PW3: &str = "Amber-Falcon-Meadow-Compass-15";

#[tokio::test]
async fn login_with_correct_password_starts_a_session() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    let res = b.login("Alice", PW).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/account");
    let cookie = res.set_cookie("bulwark_session").expect("session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/"),
        "{cookie}"
    );
    let account = b.get("/account").await;
    assert_eq!(account.status, StatusCode::OK);
    assert!(account.body.contains("alice tester"));
    assert!(account.body.contains("(this browser)"));
    let user = t.app.user_by_login("alice").await.unwrap();
    assert_eq!(user.last_login_at, Some(T0));
}

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_answer() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    let wrong = b.login("alice", "not-the-password-at-all").await;
    let unknown = b.login("alice", "not-the-password-at-all").await;
    // Same browser, same form: the bodies must be byte-identical; compare against an unknown login
    // by posting the same login text for a user that does not exist.
    let b2 = t.browser();
    b2.set_cookie("bulwark_csrf", &b.cookie("bulwark_csrf").unwrap());
    let ghost = b2.login("alice-ghost", "not-the-password-at-all").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(ghost.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(ghost.body.replace("alice-ghost", "alice"), wrong.body);
    assert!(wrong.body.contains("Incorrect login or password."));
    assert!(wrong.set_cookie("bulwark_session").is_none());
    let events = t.audit_events("login").await;
    let details: Vec<_> = events
        .iter()
        .map(|e| e.detail.clone().unwrap_or_default())
        .collect();
    assert!(
        details.contains(&"unknown user".to_string())
            && details.contains(&"wrong password".to_string()),
        "{details:?}"
    );
}

#[tokio::test]
async fn disabled_user_cannot_log_in_and_loses_sessions() {
    let t = TestApp::new().await;
    t.add_user("admin", PW2, &["admins"]).await;
    t.add_user("bob", PW, &["internal"]).await;
    let b = t.browser();
    assert_eq!(b.login("bob", PW).await.status, StatusCode::SEE_OTHER);
    t.app
        .set_user_active("bob", false, "test", &Default::default())
        .await
        .unwrap();
    assert_eq!(
        b.get("/account").await.status,
        StatusCode::SEE_OTHER,
        "session ended"
    );
    assert_eq!(
        t.browser().login("bob", PW).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn missing_or_wrong_csrf_token_is_forbidden() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    // No cookie at all (first contact).
    let res = b
        .post_raw("/login", &[("login", "alice"), ("password", PW)])
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    // Cookie present, token missing or wrong.
    b.csrf().await;
    assert_eq!(
        b.post_raw("/login", &[("login", "alice"), ("password", PW)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let res = b
        .post_raw(
            "/login",
            &[
                ("csrf_token", "forged"),
                ("login", "alice"),
                ("password", PW),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    // A token from another browser does not fit this browser's cookie.
    let other = t.browser();
    let foreign = other.csrf().await;
    let res = b
        .post_raw(
            "/login",
            &[
                ("csrf_token", &foreign),
                ("login", "alice"),
                ("password", PW),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(res.set_cookie("bulwark_session").is_none());
    // Every other state-changing form checks it too.
    assert_eq!(b.login("alice", PW).await.status, StatusCode::SEE_OTHER);
    for path in [
        "/logout",
        "/password/change",
        "/account/sessions/revoke-all",
        "/password/forgot",
        "/password/set",
    ] {
        let res = b.post_raw(path, &[("csrf_token", "forged")]).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(
        b.get("/account").await.status,
        StatusCode::OK,
        "still logged in"
    );
}

#[tokio::test]
async fn session_id_changes_at_login_and_fixation_fails() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    let planted = "A".repeat(43);
    b.set_cookie("bulwark_session", &planted);
    assert_eq!(
        b.get("/account").await.status,
        StatusCode::SEE_OTHER,
        "a planted id is not a session"
    );
    b.login("alice", PW).await;
    let first = b.cookie("bulwark_session").unwrap();
    assert_ne!(first, planted);
    b.login("alice", PW).await;
    let second = b.cookie("bulwark_session").unwrap();
    assert_ne!(first, second, "each login gets a fresh id");
    // The store holds only hashes of session ids.
    let s = t.store.find_session(&TokenHash::of(&second)).await.unwrap();
    assert!(s.is_some());
}

#[tokio::test]
async fn logout_kills_the_session() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    let token = b.cookie("bulwark_session").unwrap();
    let res = b.post("/logout", &[]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/login?done=logout");
    assert!(res
        .set_cookie("bulwark_session")
        .unwrap()
        .contains("Max-Age=0"));
    // Replaying the old cookie does not work.
    let replay = t.browser();
    replay.set_cookie("bulwark_session", &token);
    let res = replay.get("/account").await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert!(res.location().starts_with("/login"));
    assert!(t
        .store
        .find_session(&TokenHash::of(&token))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn idle_and_absolute_timeouts_end_sessions() {
    let t = TestApp::with_config("[sessions]\nidle_minutes = 30\nabsolute_hours = 2\n").await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    t.clock.advance(29 * 60);
    assert_eq!(b.get("/account").await.status, StatusCode::OK);
    t.clock.advance(29 * 60);
    assert_eq!(
        b.get("/account").await.status,
        StatusCode::OK,
        "use keeps it alive"
    );
    t.clock.advance(31 * 60);
    assert_eq!(
        b.get("/account").await.status,
        StatusCode::SEE_OTHER,
        "idle timeout"
    );
    b.login("alice", PW).await;
    for _ in 0..5 {
        t.clock.advance(25 * 60);
        b.get("/account").await;
    }
    assert_eq!(
        b.get("/account").await.status,
        StatusCode::SEE_OTHER,
        "absolute timeout after 2 h"
    );
}

#[tokio::test]
async fn anonymous_visitors_are_sent_to_login_with_a_safe_next() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    let res = b.get("/account").await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/login?next=/account");
    let page = b.get("/login?next=/account").await;
    assert!(page.body.contains("name=\"next\" value=\"/account\""));
    let res = b
        .post(
            "/login",
            &[
                ("login", "alice"),
                ("password", PW),
                ("next", "//evil.example/"),
            ],
        )
        .await;
    assert_eq!(res.location(), "/account", "open redirect refused");
    b.clear_cookies();
    let res = b
        .post(
            "/login",
            &[
                ("login", "alice"),
                ("password", PW),
                ("next", "/password/change"),
            ],
        )
        .await;
    assert_eq!(res.location(), "/password/change");
}

#[tokio::test]
async fn repeated_failures_delay_then_lock_with_retry_after_and_the_lock_expires() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    // Defaults: 3 free failures, then 1, 2, 4, 8, 16, 30 s delays, locked 15 min at 10.
    for i in 1..=3 {
        assert_eq!(
            b.login("alice", "wrong-password-guess").await.status,
            StatusCode::UNAUTHORIZED,
            "attempt {i}"
        );
    }
    let res = b.login("alice", "wrong-password-guess").await;
    assert_eq!(
        res.status,
        StatusCode::UNAUTHORIZED,
        "4th failure counted, then a 1 s delay"
    );
    let res = b.login("alice", PW).await;
    assert_eq!(
        res.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    assert_eq!(res.headers.get("retry-after").unwrap(), "1");
    for _ in 5..=10 {
        t.clock.advance(60);
        assert_eq!(
            b.login("alice", "wrong-password-guess").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let res = b.login("alice", PW).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers.get("retry-after").unwrap(), "900");
    assert!(res.body.contains("locked"), "{}", res.body);
    // Another IP gets the same answer: the lock is on the account.
    assert_eq!(
        t.browser_from("198.51.100.20")
            .login("alice", PW)
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let locks = t.audit_events("account_locked").await;
    assert_eq!(locks.len(), 1);
    t.clock.advance(899);
    assert_eq!(
        b.login("alice", PW).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    t.clock.advance(1);
    assert_eq!(
        b.login("alice", PW).await.status,
        StatusCode::SEE_OTHER,
        "lock expired"
    );
}

#[tokio::test]
async fn admin_unlock_lifts_the_lock() {
    let t = TestApp::with_config("[lockout.account]\nfree_attempts = 1\nlock_after = 2\n").await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", "wrong-password-guess").await;
    b.login("alice", "wrong-password-guess").await;
    assert_eq!(
        b.login("alice", PW).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    t.app
        .unlock_user("alice", "test", &Default::default())
        .await
        .unwrap();
    assert_eq!(b.login("alice", PW).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn many_accounts_from_one_ip_hit_the_ip_limit() {
    let t = TestApp::with_config("[lockout.ip]\nfree_attempts = 3\nlock_after = 5\n").await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser_from("203.0.113.5");
    for n in 0..5 {
        b.login(&format!("user{n}"), "password-spraying").await;
    }
    let res = b.login("alice", PW).await;
    assert_eq!(
        res.status,
        StatusCode::TOO_MANY_REQUESTS,
        "password spraying from one IP is stopped"
    );
    assert!(res.headers.get("retry-after").is_some());
    assert_eq!(
        t.browser_from("203.0.113.6")
            .login("alice", PW)
            .await
            .status,
        StatusCode::SEE_OTHER,
        "other IPs unaffected"
    );
}

#[tokio::test]
async fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    let t = TestApp::with_config("[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n[lockout.ip]\nfree_attempts = 1\nlock_after = 2\n").await;
    // Behind the proxy, each real client is counted apart.
    let via_proxy = t
        .browser_from("10.0.0.2")
        .with_header("x-forwarded-for", "198.51.100.1");
    via_proxy.login("ghost1", "x-wrong-x").await;
    via_proxy.login("ghost2", "x-wrong-x").await;
    assert_eq!(
        via_proxy.login("ghost3", "x-wrong-x").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let other_client = t
        .browser_from("10.0.0.2")
        .with_header("x-forwarded-for", "198.51.100.2");
    assert_eq!(
        other_client.login("ghost4", "x-wrong-x").await.status,
        StatusCode::UNAUTHORIZED
    );
    // A direct client cannot dodge its own limit by forging the header.
    let direct = t
        .browser_from("203.0.113.9")
        .with_header("x-forwarded-for", "192.0.2.77");
    direct.login("ghost5", "x-wrong-x").await;
    direct.login("ghost6", "x-wrong-x").await;
    let forged = t
        .browser_from("203.0.113.9")
        .with_header("x-forwarded-for", "192.0.2.78");
    assert_eq!(
        forged.login("ghost7", "x-wrong-x").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn password_change_applies_policy_and_ends_every_other_session() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let phone = t.browser_from("198.51.100.30");
    phone.login("alice", PW).await;
    let b = t.browser();
    b.login("alice", PW).await;
    let before = b.cookie("bulwark_session").unwrap();

    // Weak, mismatched, reused, wrong current password: each rejected with reasons.
    let res = b
        .post(
            "/password/change",
            &[
                ("current_password", PW),
                ("new_password", "password123"),
                ("confirm_password", "password123"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(
        res.body.contains("Use at least 12 characters") || res.body.contains("at least 12"),
        "{}",
        res.body
    );
    assert!(
        res.body.contains("common"),
        "blocklist reason shown: {}",
        res.body
    );
    let res = b
        .post(
            "/password/change",
            &[
                ("current_password", PW),
                ("new_password", PW2),
                ("confirm_password", PW3),
            ],
        )
        .await;
    assert!(res.body.contains("do not match"));
    let res = b
        .post(
            "/password/change",
            &[
                ("current_password", PW),
                ("new_password", PW),
                ("confirm_password", PW),
            ],
        )
        .await;
    assert!(res.body.contains("last 12"), "history: {}", res.body);
    let res = b
        .post(
            "/password/change",
            &[
                ("current_password", PW3),
                ("new_password", PW2),
                ("confirm_password", PW2),
            ],
        )
        .await;
    assert!(res.body.contains("current password is not correct"));

    let res = b
        .post(
            "/password/change",
            &[
                ("current_password", PW),
                ("new_password", PW2),
                ("confirm_password", PW2),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/account?done=password");
    let after = b.cookie("bulwark_session").unwrap();
    assert_ne!(before, after, "new session id after the change");
    assert_eq!(b.get("/account").await.status, StatusCode::OK);
    assert_eq!(
        phone.get("/account").await.status,
        StatusCode::SEE_OTHER,
        "other sessions ended"
    );
    assert_eq!(
        t.browser().login("alice", PW).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        t.browser().login("alice", PW2).await.status,
        StatusCode::SEE_OTHER
    );
    let mails = t.mails().await;
    assert!(mails
        .iter()
        .any(|m| m.subject.contains("password was changed") && m.to.contains("alice@example.com")));
}

#[tokio::test]
async fn strict_policy_enforces_minimum_age_and_expiry() {
    let t = TestApp::with_config("[policy]\npreset = \"strict\"\n").await;
    t.add_user("carol", "Odoo@2025Inc#Sec", &["internal"]).await;
    let b = t.browser();
    b.login("carol", "Odoo@2025Inc#Sec").await;
    let res = b
        .post(
            "/password/change",
            &[
                ("current_password", "Odoo@2025Inc#Sec"),
                ("new_password", "MyComp@ny!Pass99"),
                ("confirm_password", "MyComp@ny!Pass99"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(
        res.body.contains("changed your password recently"),
        "min age 24 h: {}",
        res.body
    );

    // 91 days later the password has expired: login leads to the change page and nothing else.
    t.clock.advance(91 * 86_400);
    let b = t.browser();
    let res = b.login("carol", "Odoo@2025Inc#Sec").await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/password/change");
    let res = b.get("/account").await;
    assert_eq!(
        res.location(),
        "/password/change",
        "only the change page is reachable"
    );
    let page = b.get("/password/change").await;
    assert!(page.body.contains("has expired"));
    let res = b
        .post(
            "/password/change",
            &[
                ("current_password", "Odoo@2025Inc#Sec"),
                ("new_password", "Xk9$mP#Lq2Yz!"),
                ("confirm_password", "Xk9$mP#Lq2Yz!"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(b.get("/account").await.status, StatusCode::OK);
}

#[tokio::test]
async fn admin_forced_change_is_required_at_next_login() {
    let t = TestApp::new().await;
    t.add_user("dave", PW, &["internal"]).await;
    t.app
        .force_password_change("dave", true, "test", &Default::default())
        .await
        .unwrap();
    let b = t.browser();
    assert_eq!(b.login("dave", PW).await.location(), "/password/change");
    assert!(b
        .get("/password/change")
        .await
        .body
        .contains("administrator asks you"));
    let res = b
        .post(
            "/password/change",
            &[
                ("current_password", PW),
                ("new_password", PW2),
                ("confirm_password", PW2),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert!(
        !t.app
            .user_by_login("dave")
            .await
            .unwrap()
            .must_change_password
    );
}

#[tokio::test]
async fn seed_examples_behave_under_strict() {
    let t = TestApp::with_config("[policy]\npreset = \"strict\"\n").await;
    for (n, weak) in ["password123", "MyPassword", "Test1"].iter().enumerate() {
        let err = t
            .app
            .add_user(
                bulwark_server::services::users::NewUserInput {
                    login: format!("weak{n}"),
                    password: Some(weak.to_string()),
                    ..Default::default()
                },
                "test",
                &Default::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, bulwark_server::services::ServiceError::PolicyRejected(ref v) if !v.is_empty()),
            "{weak}: {err:?}"
        );
    }
    for (n, strong) in ["Odoo@2025Inc#Sec", "MyComp@ny!Pass99", "Xk9$mP#Lq2Yz!"]
        .iter()
        .enumerate()
    {
        t.add_user(&format!("strong{n}"), strong, &["internal"])
            .await;
    }
}

#[tokio::test]
async fn forgot_password_answers_the_same_and_the_link_works_once() {
    let t = TestApp::new().await;
    t.add_user("erin", PW, &["internal"]).await;
    let b = t.browser();
    let known = b
        .post(
            "/password/forgot",
            &[("login_or_email", "erin@example.com")],
        )
        .await;
    let unknown = b
        .post(
            "/password/forgot",
            &[("login_or_email", "nobody@example.com")],
        )
        .await;
    assert_eq!(known.status, StatusCode::OK);
    assert_eq!(known.status, unknown.status);
    assert_eq!(known.body, unknown.body, "no account enumeration");
    t.wait_for_queued_mail(1).await;
    let mails = t.mails().await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].subject, "Reset your password");
    let link = mails[0]
        .link("http://127.0.0.1:9091/password/reset/")
        .expect("reset link");
    let path = link.trim_start_matches("http://127.0.0.1:9091");

    let res = b.get(path).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(
        res.location(),
        "/password/set",
        "the token leaves the address bar"
    );
    let form = b.get("/password/set").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("Choose a new password"));
    let res = b
        .post(
            "/password/set",
            &[("new_password", "short"), ("confirm_password", "short")],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("12"), "policy applies to resets");
    let res = b
        .post(
            "/password/set",
            &[("new_password", PW2), ("confirm_password", PW2)],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/login?done=password");
    assert_eq!(
        t.browser().login("erin", PW2).await.status,
        StatusCode::SEE_OTHER
    );

    // Second use of the same link fails.
    let again = t.browser();
    let res = again.get(path).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("cannot be used"));
}

#[tokio::test]
async fn reset_link_expires() {
    let t = TestApp::new().await;
    t.add_user("erin", PW, &["internal"]).await;
    t.browser()
        .post("/password/forgot", &[("login_or_email", "erin")])
        .await;
    t.wait_for_queued_mail(1).await;
    let link = t.mails().await[0]
        .link("http://127.0.0.1:9091/password/reset/")
        .unwrap();
    let path = link.trim_start_matches("http://127.0.0.1:9091").to_string();
    let b = t.browser();
    assert_eq!(b.get(&path).await.status, StatusCode::SEE_OTHER);
    t.clock.advance(30 * 60);
    let res = b
        .post(
            "/password/set",
            &[("new_password", PW2), ("confirm_password", PW2)],
        )
        .await;
    assert_eq!(
        res.status,
        StatusCode::BAD_REQUEST,
        "expired after 30 minutes"
    );
    assert_eq!(t.browser().get(&path).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        t.browser().login("erin", PW).await.status,
        StatusCode::SEE_OTHER,
        "password unchanged"
    );
}

#[tokio::test]
async fn invitation_link_sets_the_first_password() {
    let t = TestApp::new().await;
    t.app
        .add_user(
            bulwark_server::services::users::NewUserInput {
                login: "frank".into(),
                email: Some("frank@example.com".into()),
                groups: vec!["portal".into()],
                ..Default::default()
            },
            "test",
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        t.browser().login("frank", PW).await.status,
        StatusCode::UNAUTHORIZED,
        "no password yet"
    );
    t.app
        .invite_user("frank", "test", &Default::default())
        .await
        .unwrap();
    let mail = t.mails().await.pop().unwrap();
    assert_eq!(mail.subject, "Set up your account");
    let path = mail
        .link("http://127.0.0.1:9091/invite/")
        .unwrap()
        .trim_start_matches("http://127.0.0.1:9091")
        .to_string();
    let b = t.browser();
    b.get(&path).await;
    assert!(b.get("/password/set").await.body.contains("Welcome"));
    let res = b
        .post(
            "/password/set",
            &[("new_password", PW), ("confirm_password", PW)],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(
        t.browser().login("frank", PW).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn first_admin_setup_link_works_once() {
    let t = TestApp::new().await;
    let link = t
        .app
        .setup_link_if_needed()
        .await
        .unwrap()
        .expect("no admin yet");
    let path = link.trim_start_matches("http://127.0.0.1:9091").to_string();
    let b = t.browser();
    assert_eq!(b.get(&path).await.status, StatusCode::SEE_OTHER);
    let page = b.get("/password/set").await;
    assert!(page.body.contains("first administrator"));
    let res = b
        .post(
            "/password/set",
            &[
                ("login", "root"),
                ("email", "root@example.com"),
                ("display_name", "Root"),
                ("new_password", PW),
                ("confirm_password", PW),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    let admin = t.app.user_by_login("root").await.unwrap();
    assert_eq!(
        admin.groups,
        vec!["admins".to_string(), "internal".to_string()]
    );
    assert!(
        t.app.setup_link_if_needed().await.unwrap().is_none(),
        "no link once an admin exists"
    );
    let res = t.browser().get(&path).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "single use");
}

#[tokio::test]
async fn an_unused_setup_link_dies_once_an_admin_exists() {
    let t = TestApp::new().await;
    // Two starts without setup printed two links; the admin is then made another way.
    let first = t.app.setup_link_if_needed().await.unwrap().unwrap();
    let second = t.app.setup_link_if_needed().await.unwrap().unwrap();
    let b = t.browser();
    b.get(first.trim_start_matches("http://127.0.0.1:9091"))
        .await;
    t.add_user("root", PW, &["admins"]).await;
    let res = t
        .browser()
        .get(second.trim_start_matches("http://127.0.0.1:9091"))
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.body);
    let res = b
        .post(
            "/password/set",
            &[
                ("login", "intruder"),
                ("email", "intruder@example.com"),
                ("display_name", "Intruder"),
                ("new_password", PW),
                ("confirm_password", PW),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.body);
    assert!(t.app.user_by_login("intruder").await.is_err());
}

#[tokio::test]
async fn a_taken_login_does_not_use_up_the_setup_link() {
    let t = TestApp::new().await;
    t.add_user("root", PW2, &["internal"]).await;
    let link = t.app.setup_link_if_needed().await.unwrap().unwrap();
    let b = t.browser();
    b.get(link.trim_start_matches("http://127.0.0.1:9091"))
        .await;
    let form = [
        ("email", "root@example.com"),
        ("display_name", "Root"),
        ("new_password", PW),
        ("confirm_password", PW),
    ];
    let mut taken = vec![("login", "root")];
    taken.extend_from_slice(&form);
    let res = b.post("/password/set", &taken).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(res.body.contains("That login is taken"), "{}", res.body);
    let mut free = vec![("login", "boss")];
    free.extend_from_slice(&form);
    let res = b.post("/password/set", &free).await;
    assert_eq!(
        res.status,
        StatusCode::SEE_OTHER,
        "the link still works: {}",
        res.body
    );
}

#[tokio::test]
async fn odoo_pbkdf2_hash_is_upgraded_to_argon2id_at_login() {
    let t = TestApp::new().await;
    let user = t.add_user("odoo", PW, &["internal"]).await;
    // A hash made by passlib (see bulwark-core/tests/fixtures), as Odoo stores it.
    let fixtures = include_str!("../../../bulwark-core/tests/fixtures/passlib_pbkdf2_sha512.txt");
    let (password, hash) = fixtures
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('\t'))
        .map(|l| l.split_once('\t').unwrap())
        .find(|(p, h)| p.len() >= 12 && h.contains("$29000$") || h.contains("$25000$"))
        .expect("a low-round passlib fixture");
    t.store
        .rehash_password(user.id, &PasswordHash::parse(hash).unwrap())
        .await
        .unwrap();
    let res = t.browser().login("odoo", password).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let stored = t.store.find_password_hash(user.id).await.unwrap().unwrap();
    assert!(
        stored.as_str().starts_with("$argon2id$"),
        "re-hashed on login"
    );
    assert_eq!(
        t.browser().login("odoo", password).await.status,
        StatusCode::SEE_OTHER,
        "still the same password"
    );
}

#[tokio::test]
async fn malformed_and_oversized_forms_get_4xx() {
    let t = TestApp::new().await;
    let b = t.browser();
    let token = b.csrf().await;
    let json = b
        .request(
            Method::POST,
            "/login",
            Some("application/json"),
            br#"{"login":"a"}"#.to_vec(),
        )
        .await;
    assert_eq!(json.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let garbage = b
        .request(
            Method::POST,
            "/login",
            Some("application/x-www-form-urlencoded"),
            b"%%%&&==\xff\xfe".to_vec(),
        )
        .await;
    assert!(garbage.status.is_client_error(), "{}", garbage.status);
    let duplicate = b
        .request(
            Method::POST,
            "/login",
            Some("application/x-www-form-urlencoded"),
            format!("csrf_token={token}&login=a&login=b&password=x").into_bytes(),
        )
        .await;
    assert!(duplicate.status.is_client_error(), "{}", duplicate.status);
    let huge = "a".repeat(200 * 1024);
    let res = b
        .post_raw(
            "/login",
            &[("csrf_token", &token), ("login", "a"), ("password", &huge)],
        )
        .await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    t.add_user("alice", PW, &["internal"]).await;
    let signed_in = t.browser();
    signed_in.login("alice", PW).await;
    let res = signed_in
        .post(
            "/account/sessions/revoke",
            &[("session_id", "not-a-number")],
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    let res = signed_in.post("/account/sessions/revoke", &[]).await;
    assert!(res.status.is_client_error(), "{}", res.status);
    let long_pw = "b".repeat(5000);
    let res = b
        .post("/login", &[("login", "a"), ("password", &long_pw)])
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    let res = b.post("/login", &[("login", ""), ("password", "")]).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res = b.get("/password/reset/%00%ff").await;
    assert!(res.status.is_client_error());
    let res = b.get("/password/set").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "no link cookie");
    b.set_cookie("bulwark_link", "x.garbage");
    assert_eq!(b.get("/password/set").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(b.get("/no/such/page").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_page_carries_security_headers() {
    let t = TestApp::new().await;
    let res = t.browser().get("/login").await;
    let h = &res.headers;
    let csp = h.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'")
            && !csp.contains("unsafe-inline")
            && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
    assert_eq!(h.get("referrer-policy").unwrap(), "no-referrer");
    assert_eq!(h.get("cache-control").unwrap(), "no-store");
    assert!(
        h.get("strict-transport-security").is_none(),
        "no HSTS over plain HTTP"
    );
    assert!(
        res.body.contains("autocomplete=\"current-password\"")
            && res.body.contains("autocomplete=\"username\"")
    );
    assert!(
        !res.body.contains("<script"),
        "pages work without JavaScript"
    );
}

#[tokio::test]
async fn https_deployments_get_secure_host_cookies_and_hsts() {
    let t = TestApp::with_config("[server]\npublic_url = \"https://auth.example.com\"\n").await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    let page = b.get("/login").await;
    assert!(page.headers.get("strict-transport-security").is_some());
    let csrf = page
        .set_cookie("__Host-bulwark_csrf")
        .expect("__Host- prefixed cookie");
    assert!(
        csrf.contains("Secure") && csrf.contains("HttpOnly"),
        "{csrf}"
    );
    let res = b.login("alice", PW).await;
    let session = res
        .set_cookie("__Host-bulwark_session")
        .expect("session cookie");
    assert!(
        session.contains("Secure")
            && session.contains("HttpOnly")
            && session.contains("SameSite=Lax"),
        "{session}"
    );
}

#[tokio::test]
async fn log_out_everywhere_and_single_session_revoke() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let laptop = t.browser();
    let phone = t.browser_from("198.51.100.40");
    let tablet = t.browser_from("198.51.100.41");
    for b in [&laptop, &phone, &tablet] {
        b.login("alice", PW).await;
    }
    let user = t.app.user_by_login("alice").await.unwrap();
    let sessions = t.store.list_user_sessions(user.id).await.unwrap();
    let phone_session = sessions
        .iter()
        .find(|s| s.ip.as_deref() == Some("198.51.100.40"))
        .unwrap();
    let res = laptop
        .post(
            "/account/sessions/revoke",
            &[("session_id", &phone_session.id.to_string())],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(phone.get("/account").await.status, StatusCode::SEE_OTHER);
    assert_eq!(tablet.get("/account").await.status, StatusCode::OK);
    // Someone else's session id cannot be revoked through this form.
    t.add_user("mallory", PW2, &["internal"]).await;
    let mallory = t.browser_from("198.51.100.50");
    mallory.login("mallory", PW2).await;
    let tablet_session = t
        .store
        .list_user_sessions(user.id)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.ip.as_deref() == Some("198.51.100.41"))
        .unwrap();
    let res = mallory
        .post(
            "/account/sessions/revoke",
            &[("session_id", &tablet_session.id.to_string())],
        )
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(tablet.get("/account").await.status, StatusCode::OK);

    let res = laptop.post("/account/sessions/revoke-all", &[]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(laptop.get("/account").await.status, StatusCode::SEE_OTHER);
    assert_eq!(tablet.get("/account").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn healthz_answers_ok() {
    let t = TestApp::new().await;
    let res = t.browser().get("/healthz").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body, "ok\n");
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_removed() {
    let t = TestApp::new().await;
    t.add_user("root", PW, &["admins"]).await;
    let cli = ClientInfo::cli();
    let refused = |r: Result<(), ServiceError>| {
        assert!(
            matches!(&r, Err(ServiceError::Refused(m)) if m.contains("last active administrator")),
            "{r:?}"
        )
    };
    refused(
        t.app
            .set_user_active("root", false, "test", &cli)
            .await
            .map(|_| ()),
    );
    refused(t.app.delete_user("root", "test", &cli).await);
    refused(
        t.app
            .update_user_groups("root", &[], &["admins".into()], None, "test", &cli)
            .await
            .map(|_| ()),
    );
    assert!(t.app.user_by_login("root").await.unwrap().active);

    // With a second admin, the first may go.
    t.add_user("deputy", PW, &["admins"]).await;
    t.app
        .set_user_active("root", false, "test", &cli)
        .await
        .unwrap();
    // Now the deputy is the last active one.
    refused(t.app.delete_user("deputy", "test", &cli).await);
}
