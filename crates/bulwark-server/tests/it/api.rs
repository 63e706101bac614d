//! In-process tests of the JSON API: authentication, CSRF header, stable error codes, admin
//! routes behind a second factor, and the OpenAPI document against the real router.

use crate::support::*;
use crate::two_factor::{half_login, logout, next_code, send_code, user_with_totp};
use axum::http::{Method, StatusCode};
use bulwark_server::services::ClientInfo;
use serde_json::Value;

const PW: &str = "Correct-Horse-Battery-Staple-42";

pub(crate) fn json(res: &Response) -> Value {
    serde_json::from_str(&res.body).unwrap_or_else(|e| panic!("{e}: {}", res.body))
}

pub(crate) fn error_code(res: &Response) -> String {
    json(res)["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn delete(b: &Browser, path: &str) -> Response {
    b.request(Method::DELETE, path, None, Vec::new()).await
}

async fn post(b: &Browser, path: &str) -> Response {
    b.request(Method::POST, path, None, Vec::new()).await
}

/// A browser signed in as `login`, sending the CSRF header from `GET /me`.
async fn api_client(b: Browser) -> Browser {
    let me = b.get("/api/v1/me").await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    let token = json(&me)["csrf_token"].as_str().unwrap().to_string();
    b.with_header("x-csrf-token", &token)
}

/// An admin whose session passed a second factor.
pub(crate) async fn admin(t: &TestApp) -> Browser {
    let (b, secret, _) = user_with_totp(t, "root", &["internal"]).await;
    t.app
        .update_user_groups(
            "root",
            &["admins".into()],
            &[],
            None,
            "test",
            &ClientInfo::cli(),
        )
        .await
        .unwrap();
    logout(&b).await;
    half_login(&b, "root").await;
    let res = send_code(&b, &next_code(t, &secret)).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    api_client(b).await
}

#[tokio::test]
async fn anonymous_calls_get_json_errors() {
    let t = TestApp::new().await;
    let b = t.browser();
    for path in ["/api/v1/me", "/api/v1/me/sessions", "/api/v1/users"] {
        let res = b.get(path).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(error_code(&res), "unauthorized");
        assert!(json(&res)["error"]["message"].is_string());
    }
    let res = b.get("/api/v1/nothing/here").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&res), "not_found");
    let res = b.get("/api/v1/openapi.json").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(json(&res)["openapi"], "3.1.0");
}

#[tokio::test]
async fn me_and_my_sessions_with_the_csrf_header() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let other = t.browser();
    other.login("alice", PW).await;
    let b = t.browser();
    b.login("alice", PW).await;

    let me = json(&b.get("/api/v1/me").await);
    assert_eq!(me["login"], "alice");
    assert_eq!(me["groups"], serde_json::json!(["internal"]));
    assert_eq!(me["two_factor"]["active"], false);
    assert_eq!(me["two_factor"]["standing"]["state"], "optional");
    assert_eq!(me["password_change_required"], false);

    let sessions = json(&b.get("/api/v1/me/sessions").await);
    let items = sessions["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let theirs = items.iter().find(|s| s["current"] == false).unwrap();
    let path = format!("/api/v1/me/sessions/{}", theirs["id"]);

    // Unsafe methods need the header, not just the cookie.
    let res = delete(&b, &path).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&res), "csrf_failed");
    let b = b.with_header("x-csrf-token", "not-the-token");
    assert_eq!(error_code(&delete(&b, &path).await), "csrf_failed");

    let b = t.browser();
    b.login("alice", PW).await;
    let b = api_client(b).await;
    let res = delete(&b, &path).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(json(&res)["done"], true);
    assert_eq!(
        other.get("/api/v1/me").await.status,
        StatusCode::UNAUTHORIZED,
        "that session ended"
    );
    // Someone else's or an unknown id: not found, and a non-number is not found either.
    for id in ["999999", "abc", "-1"] {
        let res = delete(&b, &format!("/api/v1/me/sessions/{id}")).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{id}");
        assert_eq!(error_code(&res), "not_found");
    }
}

#[tokio::test]
async fn restricted_sessions_can_only_read_me() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    t.app
        .force_password_change("alice", true, "test", &ClientInfo::cli())
        .await
        .unwrap();
    let b = t.browser();
    b.login("alice", PW).await;
    let me = b.get("/api/v1/me").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(json(&me)["password_change_required"], true);
    let res = b.get("/api/v1/me/sessions").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&res), "password_change_required");
}

#[tokio::test]
async fn admin_routes_need_an_admin_with_a_second_factor() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let clerk = t.browser();
    clerk.login("alice", PW).await;
    let res = clerk.get("/api/v1/users").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&res), "forbidden");

    let a = admin(&t).await;
    let users = json(&a.get("/api/v1/users?search=ali").await);
    let items = users["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["login"], "alice");
    let all = json(&a.get("/api/v1/users?limit=1&offset=1").await);
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        (all["limit"].as_u64(), all["offset"].as_u64()),
        (Some(1), Some(1))
    );
    for bad in ["limit=0", "limit=501", "limit=abc", "offset=-1"] {
        let res = a.get(&format!("/api/v1/users?{bad}")).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{bad}: {}", res.body);
        assert_eq!(error_code(&res), "invalid_input");
    }

    let alice = json(&a.get("/api/v1/users/alice").await);
    assert_eq!(alice["two_factor"]["active"], false);
    assert_eq!(alice["locked_until"], Value::Null);
    for missing in ["/api/v1/users/nobody", "/api/v1/users/%00"] {
        let res = a.get(missing).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{missing}");
    }

    // Lock alice with wrong passwords, then unlock her through the API.
    for _ in 0..10 {
        t.browser().login("alice", "Wrong-Password-0000").await;
    }
    let locked = json(&a.get("/api/v1/users/alice").await);
    assert!(locked["locked_until"].is_i64(), "{locked}");
    let res = post(&a, "/api/v1/users/alice/unlock").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(
        json(&a.get("/api/v1/users/alice").await)["locked_until"],
        Value::Null
    );

    // Reset another user's 2FA.
    let (bob, _, _) = user_with_totp(&t, "bob", &["internal"]).await;
    let res = post(&a, "/api/v1/users/bob/reset-2fa").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(bob.get("/api/v1/me").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        json(&a.get("/api/v1/users/bob").await)["two_factor"]["active"],
        false
    );
    assert_eq!(
        post(&a, "/api/v1/users/nobody/reset-2fa").await.status,
        StatusCode::NOT_FOUND
    );

    let groups = json(&a.get("/api/v1/groups").await);
    let count = |name: &str| {
        groups["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .unwrap()["active_members"]
            .as_u64()
    };
    assert_eq!(count("admins"), Some(1));
    assert_eq!(count("internal"), Some(3));
    assert_eq!(count("portal"), Some(0));
}

#[tokio::test]
async fn an_admin_session_without_a_second_factor_does_not_administer() {
    // Admins are under enforcement; within the grace period, without codes by mail, an admin
    // with no authenticator yet logs in with the password alone.
    let t = TestApp::with_config(
        "[two_factor]\nenforcement = \"admins\"\nemail_codes = false\ngrace_days = 7\n",
    )
    .await;
    t.add_user("deputy", PW, &["admins"]).await;
    let d = t.browser();
    let res = d.login("deputy", PW).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert!(
        res.location().starts_with("/account/security?prompt=grace"),
        "{}",
        res.location()
    );
    let me = json(&d.get("/api/v1/me").await);
    assert_eq!(me["two_factor"]["session_passed_second_factor"], false);
    for path in ["/api/v1/users", "/api/v1/groups", "/api/v1/users/deputy"] {
        let res = d.get(path).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(error_code(&res), "forbidden");
        assert!(json(&res)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("second factor"));
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_the_router_serves() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let a = admin(&t).await;
    let doc = json(&t.browser().get("/api/v1/openapi.json").await);
    let paths = doc["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, bulwark_server::web::ENDPOINTS.len());
    assert_eq!(doc["servers"][0]["url"], "http://127.0.0.1:9091/api/v1");
    // Every documented operation is served (not 404/405) by the real router.
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path.replace("{login}", "alice").replace("{id}", "1");
            let method: Method = method.to_uppercase().parse().unwrap();
            let res = a
                .request(
                    method.clone(),
                    &format!("/api/v1{concrete}"),
                    None,
                    Vec::new(),
                )
                .await;
            assert_ne!(
                res.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            if !path.contains('{') {
                assert_ne!(
                    res.status,
                    StatusCode::NOT_FOUND,
                    "{method} {path}: {}",
                    res.body
                );
            } else {
                // A 404 here must be the handler's "no such object", not a missing route.
                assert!(res.body.starts_with('{'), "{method} {path}: {}", res.body);
            }
            // Errors always carry a stable code from the documented list.
            if !res.status.is_success() {
                let codes = doc["components"]["schemas"]["Error"]["properties"]["error"]
                    ["properties"]["code"]["enum"]
                    .as_array()
                    .unwrap();
                assert!(codes.contains(&json(&res)["error"]["code"]), "{}", res.body);
            }
        }
    }
    // And a route the document does not list is not served.
    let res = a.request(Method::PUT, "/api/v1/me", None, Vec::new()).await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
}

async fn post_json(b: &Browser, path: &str, body: &serde_json::Value) -> Response {
    b.request(
        Method::POST,
        path,
        Some("application/json"),
        body.to_string().into_bytes(),
    )
    .await
}

fn with_key(t: &TestApp, key: &str) -> Browser {
    t.browser()
        .with_header("authorization", &format!("Bearer {key}"))
}

#[tokio::test]
async fn api_keys_through_the_api_by_scope() {
    let t = TestApp::new().await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    let b = api_client(b).await;

    // Made by a session, with the password; shown once.
    let make = |name: &str, scopes: &[&str]| serde_json::json!({"name": name, "scopes": scopes, "days": 30, "password": PW});
    let res = post_json(&b, "/api/v1/me/api-keys", &make("reader", &["api:read"])).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let reader = json(&res)["key"].as_str().unwrap().to_string();
    assert!(reader.starts_with("bwk_"));
    let writer = json(&post_json(&b, "/api/v1/me/api-keys", &make("writer", &["api:write"])).await)
        ["key"]
        .as_str()
        .unwrap()
        .to_string();
    let gateway = json(&post_json(&b, "/api/v1/me/api-keys", &make("proxy", &["gateway"])).await)
        ["key"]
        .as_str()
        .unwrap()
        .to_string();
    // A wrong password, a bad body, an unknown scope: 4xx with a code, never a key.
    let mut wrong = make("x", &["api:read"]);
    wrong["password"] = "Wrong-Password-1234".into();
    let res = post_json(&b, "/api/v1/me/api-keys", &wrong).await;
    assert!(res.status.is_client_error(), "{}", res.body);
    assert!(json(&res)["key"].is_null());
    for body in [
        serde_json::json!({"name": "x"}),
        serde_json::json!({"name": "x", "scopes": ["root"], "password": PW}),
        serde_json::json!({"name": "x", "scopes": ["api:read"], "password": PW, "admin": true}),
    ] {
        let res = post_json(&b, "/api/v1/me/api-keys", &body).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{body}: {}", res.body);
        assert_eq!(error_code(&res), "invalid_input", "{body}");
    }
    let res = b
        .request(
            Method::POST,
            "/api/v1/me/api-keys",
            Some("application/json"),
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);

    // api:read reads, without a CSRF header (no cookie is involved)...
    let r = with_key(&t, &reader);
    let me = r.get("/api/v1/me").await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(json(&me)["login"], "alice");
    assert!(json(&me)["csrf_token"].is_null());
    let keys = json(&r.get("/api/v1/me/api-keys").await);
    let items = keys["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(
        !keys.to_string().contains(&reader[8..]),
        "keys are never shown again"
    );
    let writer_id = items.iter().find(|k| k["name"] == "writer").unwrap()["id"].clone();
    // ...but cannot change anything.
    let res = delete(&r, &format!("/api/v1/me/api-keys/{writer_id}")).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&res), "unauthorized");

    // A gateway-only key is not an API credential; junk in the header is refused plainly.
    for key in [gateway.as_str(), "bwk_nonsense"] {
        let res = with_key(&t, key).get("/api/v1/me").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{key}");
    }
    let res = t
        .browser()
        .with_header("authorization", "Basic !!!")
        .get("/api/v1/me")
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);

    // api:write changes, but a key never makes keys and never administers.
    let w = with_key(&t, &writer);
    let res = post_json(&w, "/api/v1/me/api-keys", &make("child", &["api:read"])).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.body);
    assert_eq!(error_code(&res), "forbidden");
    let reader_id = items.iter().find(|k| k["name"] == "reader").unwrap()["id"].clone();
    let res = delete(&w, &format!("/api/v1/me/api-keys/{reader_id}")).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(
        r.get("/api/v1/me").await.status,
        StatusCode::UNAUTHORIZED,
        "revoked at once"
    );
    // HTTP Basic with the key as the password works too.
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("script:{writer}"),
    );
    let res = t
        .browser()
        .with_header("authorization", &format!("Basic {basic}"))
        .get("/api/v1/me/sessions")
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
}

#[tokio::test]
async fn an_admins_api_key_does_not_administer() {
    let t = TestApp::new().await;
    let a = admin(&t).await;
    let res = post_json(
        &a,
        "/api/v1/me/api-keys",
        &serde_json::json!({"name": "ops", "scopes": ["api:write"], "days": 7, "password": PW}),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let key = json(&res)["key"].as_str().unwrap().to_string();
    assert_eq!(a.get("/api/v1/users").await.status, StatusCode::OK);
    let k = with_key(&t, &key);
    for (method, path) in [
        (Method::GET, "/api/v1/users"),
        (Method::GET, "/api/v1/groups"),
        (Method::POST, "/api/v1/users/root/reset-2fa"),
    ] {
        let res = k.request(method.clone(), path, None, Vec::new()).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(error_code(&res), "forbidden");
    }
}
