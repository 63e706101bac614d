//! A login flood: past the hashing queue's bound, logins are answered 503 with `Retry-After`
//! at once instead of piling up, and the gateway keeps answering while the hashing threads
//! are busy.

use crate::support::*;
use axum::http::StatusCode;
use bulwark_store::AuditFilter;

const PW: &str = "Correct-Horse-Battery-Staple-42";

/// One hashing thread and room for one waiting job: a burst of logins overflows it.
const CONFIG: &str = r#"
[server]
trusted_proxies = ["127.0.0.1"]

[passwords]
max_concurrent_hashes = 1
max_queued_hashes = 1

[gateway]
protected = ["https://app.example.com"]
default_policy = "one_factor"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_past_the_queue_gets_503_with_retry_after_and_the_gateway_still_answers() {
    let t = TestApp::with_config(CONFIG).await;
    t.add_user("alice", PW, &["portal"]).await;
    let signed_in = t.browser();
    assert_eq!(
        signed_in.login("alice", PW).await.status,
        StatusCode::SEE_OTHER
    );
    let session = signed_in.cookie("bulwark_session").unwrap();

    // Twelve logins at once (right and wrong passwords, from different addresses so the
    // per-address throttle stays out of the way), while the gateway is asked in between.
    let logins: Vec<_> = (0..12)
        .map(|i| {
            let b = t.browser_from(&format!("198.51.100.{}", i + 1));
            let password = if i % 2 == 0 { PW } else { "Wrong-Password-123" };
            tokio::spawn(async move { b.login("alice", password).await })
        })
        .collect();
    let gateway = t
        .browser_from("127.0.0.1")
        .with_header("x-original-url", "https://app.example.com/")
        .with_header("x-original-method", "GET");
    gateway.set_cookie("bulwark_session", &session);
    let mut checks = 0;
    while !logins.iter().all(|l| l.is_finished()) {
        let res = gateway.get("/api/authz/auth-request").await;
        assert_eq!(
            res.status,
            StatusCode::OK,
            "the gateway answers during the flood"
        );
        checks += 1;
        tokio::task::yield_now().await;
    }
    assert!(checks > 0);

    let mut busy = 0;
    for login in logins {
        let res = login.await.unwrap();
        match res.status {
            StatusCode::SEE_OTHER | StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert_eq!(
                    res.headers.get("retry-after").and_then(|v| v.to_str().ok()),
                    Some("2")
                );
                assert!(
                    res.body.contains("Too many logins right now"),
                    "{}",
                    res.body
                );
            }
            other => panic!("unexpected {other}: {}", res.body),
        }
    }
    assert!(
        busy > 0,
        "a burst of 12 overflows one thread and one waiting place"
    );
    // A login turned away was not a failed password: nothing counted against alice.
    let failures = t
        .app
        .search_audit(&AuditFilter {
            subject: Some("alice".into()),
            event: Some("login".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.outcome == "failure")
        .count();
    assert!(
        failures <= 12 - busy,
        "{failures} failures, {busy} turned away"
    );
    let metrics = t.browser_from("127.0.0.1").get("/metrics").await.body;
    assert!(
        metrics.contains(&format!("bulwark_password_hash_rejected_total {busy}")),
        "{metrics}"
    );

    // The flood is over: logins work again.
    assert_eq!(
        t.browser().login("alice", PW).await.status,
        StatusCode::SEE_OTHER
    );
}
