//! "This wasn't me": the link in new-device and password-changed mails secures the account
//! (sessions, trusted devices and API keys gone, password stops working) only after the owner
//! confirms on the page, works once, and ends on choosing a new password. Also the mail sent
//! when an account locks.

use crate::support::*;
use axum::http::StatusCode;
use bulwark_store::AuditFilter;

const PW: &str = "Correct-Horse-Battery-Staple-42";
const PW2: &str = "Another-Long-Passphrase-77";
const BASE: &str = "http://127.0.0.1:9091";

#[tokio::test]
async fn a_login_from_a_new_device_can_be_disowned_from_the_mail() {
    let t = TestApp::new().await;
    let alice = t.add_user("alice", PW, &["internal"]).await;
    let home = t.browser_from("192.0.2.10");
    assert_eq!(home.login("alice", PW).await.status, StatusCode::SEE_OTHER);
    // The attacker, somewhere else, with the password.
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
    let path = link.trim_start_matches(BASE);

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
