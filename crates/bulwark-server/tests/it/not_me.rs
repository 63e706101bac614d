//! "This wasn't me": the link in new-device and password-changed mails secures the account
//! (sessions, trusted devices and API keys gone, password stops working) only after the owner
//! confirms on the page, works once, and ends on choosing a new password. Also the mail sent
//! when an account locks.

use crate::support::*;
use axum::http::StatusCode;
use bulwark_store::{AuditFilter, UserRecord};

const PW: &str = "Correct-Horse-Battery-Staple-42";
const PW2: &str = "Another-Long-Passphrase-77";
const BASE: &str = "http://127.0.0.1:9091";

/// Alice logged in at home; then someone else logs in from elsewhere with her password.
struct Theft {
    alice: UserRecord,
    home: Browser,
    thief: Browser,
    /// The path of the "this wasn't me" link in the new-device mail.
    link: String,
}

async fn a_thief_logs_in(t: &TestApp) -> Theft {
    let alice = t.add_user("alice", PW, &["internal"]).await;
    let home = t.browser_from("192.0.2.10");
    assert_eq!(home.login("alice", PW).await.status, StatusCode::SEE_OTHER);
    let thief = t.browser_from("203.0.113.66");
    assert_eq!(thief.login("alice", PW).await.status, StatusCode::SEE_OTHER);
    t.wait_for_queued_mail(1).await;
    let mail = t
        .mails()
        .await
        .into_iter()
        .find(|m| m.subject == "New login to your account")
        .expect("new-device mail");
    assert!(mail.text.contains("203.0.113.66"), "{}", mail.text);
    let link = mail.link(&format!("{BASE}/not-me/")).expect("not-me link");
    Theft {
        alice,
        home,
        thief,
        link: link.trim_start_matches(BASE).to_string(),
    }
}

#[tokio::test]
async fn a_login_from_a_new_device_can_be_disowned_from_the_mail() {
    let t = TestApp::new().await;
    let Theft {
        alice,
        home,
        thief,
        link,
    } = a_thief_logs_in(&t).await;
    let path = link.as_str();

    // Opening the link (as a mail scanner would) changes nothing.
    let owner = t.browser_from("198.51.100.5");
    let page = owner.get(path).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Secure my account"), "{}", page.body);
    assert!(page.body.contains("alice"));
    assert_eq!(thief.get("/account").await.status, StatusCode::OK);

    let res = owner.post(path, &[]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert!(
        res.location().starts_with("/password/reset/"),
        "{}",
        res.location()
    );
    // Every session is over, and the stolen password no longer opens the account.
    assert!(thief.get("/account").await.location().starts_with("/login"));
    assert!(home.get("/account").await.location().starts_with("/login"));
    assert!(t
        .store
        .list_user_sessions(alice.id)
        .await
        .unwrap()
        .is_empty());
    let again = t.browser_from("203.0.113.66").login("alice", PW).await;
    assert_ne!(again.location(), "/account", "{}", again.body);
    assert!(t
        .store
        .list_user_sessions(alice.id)
        .await
        .unwrap()
        .is_empty());
    let event = t
        .app
        .search_audit(&AuditFilter {
            event: Some("not_me_reported".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);
    assert_eq!(event.subject.as_deref(), Some("alice"));
    assert_eq!(event.ip.as_deref(), Some("198.51.100.5"));

    // The owner goes on to choose a new password with the reset link it led to.
    let reset = owner.get(res.location()).await;
    assert_eq!(reset.location(), "/password/set");
    let set = owner
        .post(
            "/password/set",
            &[("new_password", PW2), ("confirm_password", PW2)],
        )
        .await;
    assert_eq!(set.status, StatusCode::SEE_OTHER, "{}", set.body);
    assert_eq!(
        t.browser_from("198.51.100.5")
            .login("alice", PW2)
            .await
            .location(),
        "/account"
    );
    // The old password cannot come back (history), and the link worked once.
    let used = owner.post(path, &[]).await;
    assert_eq!(used.status, StatusCode::BAD_REQUEST, "{}", used.body);
    assert!(t
        .browser_from("192.0.2.10")
        .get(path)
        .await
        .body
        .contains("invalid"));
}

#[tokio::test]
async fn the_password_changed_mail_carries_the_link_and_a_lock_is_mailed() {
    let t = TestApp::new().await;
    t.add_user("bob", PW, &["internal"]).await;
    let b = t.browser();
    b.login("bob", PW).await;
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
    t.wait_for_queued_mail(1).await;
    let changed = t
        .mails()
        .await
        .into_iter()
        .find(|m| m.subject == "Your password was changed")
        .expect("password-changed mail");
    assert!(
        changed.link(&format!("{BASE}/not-me/")).is_some(),
        "{}",
        changed.text
    );

    for _ in 0..10 {
        t.browser_from("203.0.113.9")
            .login("bob", "Wrong-Password-0000")
            .await;
    }
    for _ in 0..10 {
        t.clock.advance(120);
        t.browser_from("203.0.113.9")
            .login("bob", "Wrong-Password-0000")
            .await;
    }
    t.wait_for_queued_mail(1).await;
    let locked = t
        .mails()
        .await
        .into_iter()
        .find(|m| m.subject == "Your account was locked")
        .expect("lock mail");
    assert!(locked.text.contains("203.0.113.9"), "{}", locked.text);
    assert!(locked.link(&format!("{BASE}/password/forgot")).is_some());
    // Locking an account that does not exist mails no one and says nothing.
    for _ in 0..20 {
        t.clock.advance(120);
        t.browser_from("203.0.113.9")
            .login("nobody", "Wrong-Password-0000")
            .await;
    }
}

/// Makes ending a session slow (a fraction of a second to a second a row): the statement is
/// still running when the test lets go of the request. SQLite cannot sleep in a statement:
/// its trigger counts instead.
async fn slow_session_deletes(t: &TestApp) {
    t.before_session_deletes(
        "PERFORM pg_sleep(1); RETURN OLD;",
        "SELECT count(*) FROM (WITH RECURSIVE n(x) AS \
         (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 300000) SELECT x FROM n);",
    )
    .await;
}

#[tokio::test]
async fn securing_the_account_goes_on_when_the_owner_s_connection_drops() {
    use tokio::io::AsyncWriteExt;
    let t = TestApp::new().await;
    let Theft {
        alice,
        thief,
        link: path,
        ..
    } = a_thief_logs_in(&t).await;
    crate::api_keys::cli_key(&t, "alice", "stolen", &["gateway"]).await;
    slow_session_deletes(&t).await;

    // The owner confirms over a real connection (a phone on a train), which drops while the
    // sessions are being ended: the password is gone by then, the API key not yet.
    let owner = t.browser_from("198.51.100.5");
    let form = encode_form(&[("csrf_token", &owner.csrf().await)]);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        owner.cookie_header().expect("the CSRF cookie"),
        form.len()
    );
    let addr = t.serve_on_loopback().await;
    let mut connection = tokio::net::TcpStream::connect(addr).await.unwrap();
    connection.write_all(request.as_bytes()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while t.store.get_user(alice.id).await.unwrap().has_password {
        assert!(std::time::Instant::now() < deadline, "the password stayed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(connection);

    // Every step is still taken, and audited.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while t.audit_events("not_me_reported").await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "securing the account stopped with the connection"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let events = t.audit_events("not_me_reported").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].outcome, "success", "{events:?}");
    assert!(t
        .store
        .list_user_sessions(alice.id)
        .await
        .unwrap()
        .is_empty());
    let keys = t.store.list_user_api_keys(alice.id).await.unwrap();
    assert!(keys.iter().all(|k| k.revoked_at.is_some()), "{keys:?}");
    assert!(thief.get("/account").await.location().starts_with("/login"));
}
