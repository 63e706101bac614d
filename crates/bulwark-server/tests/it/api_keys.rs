//! API keys end to end in process: the gateway accepting a key as Bearer or Basic and
//! refusing it in every other case, browser rules a key never meets, last use written only by
//! the flush (and no database write per check), the account page, and the service rules.

use crate::support::*;
use crate::two_factor::user_with_totp;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bulwark_core::api_key::Scope;
use bulwark_server::services::api_keys::{
    CreatedApiKey, ExpiryChoice, KeyActor, KeyCheck, KeyRef, KeyStatus, NewApiKeyInput, Refusal,
};
use bulwark_server::services::{ClientInfo, ServiceError, STOPPED_PART_WAY};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use tower::ServiceExt;

const PW: &str = "Correct-Horse-Battery-Staple-42";
const PORTAL: &str = "http://127.0.0.1:9091";

/// Odoo behind the proxy on 127.0.0.1: RPC needs a key, the back office two factors, the shop
/// one; an integrations host takes keys from one group only.
const RULES: &str = r#"
[server]
trusted_proxies = ["127.0.0.1"]

[gateway]
protected = ["https://odoo.example.com"]
default_policy = "deny"

[[gateway.rules]]
hosts = ["odoo.example.com"]
paths = ["/xmlrpc/*", "/jsonrpc"]
policy = "api_key"

[[gateway.rules]]
hosts = ["odoo.example.com"]
paths = ["/shop*"]
policy = "one_factor"

[[gateway.rules]]
hosts = ["hooks.example.com"]
subjects = ["group:integrations"]
policy = "api_key"

[[gateway.rules]]
hosts = ["hooks.example.com"]
policy = "deny"

[[gateway.rules]]
hosts = ["odoo.example.com"]
policy = "two_factor"

[api_keys]
max_days = 365
default_days = 90

[api_keys.groups.portal]
max_days = 30
"#;

const RPC: &str = "https://odoo.example.com/xmlrpc/2/object";

/// The proxy asks the gateway about `url` with these raw `Authorization` values (nginx
/// `auth_request` unless `caddy`).
async fn gate_raw(
    t: &TestApp,
    url: &str,
    authorization: &[&[u8]],
    cookie: Option<&str>,
    caddy: bool,
) -> Response {
    let mut req = Request::builder()
        .method("GET")
        .header("x-forwarded-for", "203.0.113.7");
    if caddy {
        let (proto, rest) = url.split_once("://").unwrap();
        let split = rest.find('/').unwrap_or(rest.len());
        let (host, uri) = rest.split_at(split);
        req = req
            .uri("/api/authz/forward-auth")
            .header("x-forwarded-proto", proto)
            .header("x-forwarded-host", host)
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-method", "POST");
    } else {
        req = req
            .uri("/api/authz/auth-request")
            .header("x-original-url", url)
            .header("x-original-method", "POST");
    }
    for value in authorization {
        req = req.header(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, format!("bulwark_session={c}"));
    }
    let mut req = req.body(Body::empty()).unwrap();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    let res = bulwark_server::web::router(t.app.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body =
        String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).to_string();
    Response {
        status,
        headers,
        body,
    }
}

async fn bearer(t: &TestApp, url: &str, key: &str) -> Response {
    gate_raw(t, url, &[format!("Bearer {key}").as_bytes()], None, false).await
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn header<'a>(res: &'a Response, name: &str) -> Option<&'a str> {
    res.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The 401 a program gets: a challenge, no redirect, no identity.
fn assert_challenge(res: &Response, what: &str) {
    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{what}: {}", res.body);
    assert_eq!(
        header(res, "www-authenticate"),
        Some("Bearer realm=\"bulwark\""),
        "{what}"
    );
    assert!(res.headers.get(header::LOCATION).is_none(), "{what}");
    assert!(header(res, "remote-user").is_none(), "{what}");
}

fn input(name: &str, scopes: &[&str], expiry: ExpiryChoice) -> NewApiKeyInput {
    NewApiKeyInput {
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expiry,
        password: None,
    }
}

/// A key made by an administrator at the command line.
pub(crate) async fn cli_key(
    t: &TestApp,
    login: &str,
    name: &str,
    scopes: &[&str],
) -> CreatedApiKey {
    t.app
        .create_api_key(
            KeyActor::Cli,
            login,
            input(name, scopes, ExpiryChoice::Default),
            &ClientInfo::cli(),
        )
        .await
        .unwrap()
}

/// A gateway key of `login`'s made at the command line that expires after `days`.
async fn expiring_key(t: &TestApp, login: &str, name: &str, days: u32) -> CreatedApiKey {
    t.app
        .create_api_key(
            KeyActor::Cli,
            login,
            input(name, &["gateway"], ExpiryChoice::Days(days)),
            &ClientInfo::cli(),
        )
        .await
        .unwrap()
}

/// Revokes `login`'s first key in the database, as another node would: nothing is audited
/// in this process.
async fn revoke_behind_this_node(t: &TestApp, login: &str) {
    let user = t.app.user_by_login(login).await.unwrap();
    let id = t.store.list_user_api_keys(user.id).await.unwrap()[0].id;
    assert!(t
        .store
        .revoke_api_key(user.id, id, t.app.now())
        .await
        .unwrap());
}

/// A connection of its own to the test's SQLite database file.
async fn raw_sqlite(t: &TestApp) -> sqlx::SqliteConnection {
    let url = format!(
        "sqlite://{}",
        t.app.config.data_dir.join("bulwark.db").display()
    );
    <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_gateway_key_passes_with_its_owners_identity() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("alice", PW, &["internal"]).await;
    let created = cli_key(&t, "alice", "rpc", &["gateway"]).await;
    let key = created.key.expose();
    for res in [
        bearer(&t, RPC, key).await,
        bearer(&t, "https://odoo.example.com/jsonrpc", key).await,
        gate_raw(&t, RPC, &[format!("Bearer {key}").as_bytes()], None, true).await,
    ] {
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        assert_eq!(header(&res, "remote-user"), Some("alice"));
        assert_eq!(header(&res, "remote-groups"), Some("internal"));
        assert_eq!(header(&res, "remote-email"), Some("alice@example.com"));
        assert_eq!(header(&res, "remote-name"), Some("alice tester"));
        assert!(res.headers.get(header::LOCATION).is_none());
    }
    // Without a key, today's challenge.
    assert_challenge(&gate_raw(&t, RPC, &[], None, false).await, "no key");
    assert_challenge(&gate_raw(&t, RPC, &[], None, true).await, "no key, caddy");
}

#[tokio::test]
async fn identity_headers_carry_names_beyond_ascii_as_utf8() {
    let t = TestApp::with_config(RULES).await;
    t.app
        .add_user(
            bulwark_server::services::users::NewUserInput {
                login: "zoe".into(),
                email: Some("zoé@example.com".into()),
                display_name: "Zoé Müller-Łukasiewicz".into(),
                groups: vec!["internal".into(), "finance".into()],
                password: Some(PW.into()),
                must_change_password: false,
            },
            "test",
            &ClientInfo::cli(),
        )
        .await
        .unwrap();
    let created = cli_key(&t, "zoe", "rpc", &["gateway"]).await;
    // Twice: read from the store, then from the cache.
    for _ in 0..2 {
        let res = bearer(&t, RPC, created.key.expose()).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        let raw = |name: &str| res.headers.get(name).map(|v| v.as_bytes().to_vec());
        assert_eq!(raw("remote-user").as_deref(), Some("zoe".as_bytes()));
        assert_eq!(
            raw("remote-groups").as_deref(),
            Some("finance,internal".as_bytes())
        );
        assert_eq!(
            raw("remote-name").as_deref(),
            Some("Zoé Müller-Łukasiewicz".as_bytes())
        );
        assert_eq!(
            raw("remote-email").as_deref(),
            Some("zoé@example.com".as_bytes())
        );
    }
}

#[tokio::test]
async fn basic_auth_carries_the_key_as_password() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("alice", PW, &["internal"]).await;
    let created = cli_key(&t, "alice", "rpc", &["gateway"]).await;
    let key = created.key.expose();
    for user in ["alice", "anything", "", "bob"] {
        let res = gate_raw(&t, RPC, &[basic(user, key).as_bytes()], None, false).await;
        assert_eq!(res.status, StatusCode::OK, "user {user:?}: {}", res.body);
        assert_eq!(
            header(&res, "remote-user"),
            Some("alice"),
            "the key decides"
        );
    }
    // Her password is no key.
    let res = gate_raw(&t, RPC, &[basic("alice", PW).as_bytes()], None, false).await;
    assert_challenge(&res, "password as Basic");
    // One symbol off: a well-formed key nobody was given.
    let mut wrong = key.to_string();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let res = gate_raw(&t, RPC, &[basic("alice", &wrong).as_bytes()], None, false).await;
    assert_challenge(&res, "one symbol off");
}

#[tokio::test]
async fn refused_keys_all_get_the_same_challenge() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("alice", PW, &["internal"]).await;
    t.add_user("bob", PW, &["internal"]).await;
    t.add_user("carol", PW, &["internal"]).await;

    let read_only = cli_key(&t, "alice", "reader", &["api:read", "api:write"]).await;
    assert_challenge(
        &bearer(&t, RPC, read_only.key.expose()).await,
        "no gateway scope",
    );

    let revoked = cli_key(&t, "alice", "old", &["gateway"]).await;
    assert_eq!(
        bearer(&t, RPC, revoked.key.expose()).await.status,
        StatusCode::OK
    );
    t.app
        .revoke_api_key(
            KeyActor::Cli,
            "alice",
            &KeyRef::NameOrId("old".into()),
            &ClientInfo::cli(),
        )
        .await
        .unwrap();
    assert_challenge(&bearer(&t, RPC, revoked.key.expose()).await, "revoked");

    let expiring = expiring_key(&t, "alice", "week", 7).await;
    t.clock.advance(7 * 86_400 - 1);
    assert_eq!(
        bearer(&t, RPC, expiring.key.expose()).await.status,
        StatusCode::OK
    );
    t.clock.advance(1);
    assert_challenge(&bearer(&t, RPC, expiring.key.expose()).await, "expired");

    let bobs = cli_key(&t, "bob", "rpc", &["gateway"]).await;
    assert_eq!(
        bearer(&t, RPC, bobs.key.expose()).await.status,
        StatusCode::OK
    );
    t.app
        .set_user_active("bob", false, "test", &ClientInfo::cli())
        .await
        .unwrap();
    assert_challenge(&bearer(&t, RPC, bobs.key.expose()).await, "owner disabled");
    // Enabling the account again does not bring its keys back.
    t.app
        .set_user_active("bob", true, "test", &ClientInfo::cli())
        .await
        .unwrap();
    assert_challenge(
        &bearer(&t, RPC, bobs.key.expose()).await,
        "revoked at disable",
    );
    let bob_keys = t
        .app
        .list_api_keys(KeyActor::Cli, Some("bob"))
        .await
        .unwrap();
    assert_eq!(bob_keys[0].status, KeyStatus::Revoked);

    let carols = cli_key(&t, "carol", "rpc", &["gateway"]).await;
    t.app
        .delete_user("carol", "test", &ClientInfo::cli())
        .await
        .unwrap();
    assert_challenge(&bearer(&t, RPC, carols.key.expose()).await, "owner deleted");

    let never_issued = bulwark_core::api_key::ApiKey::generate();
    assert_challenge(&bearer(&t, RPC, never_issued.expose()).await, "unknown key");
}

#[tokio::test]
async fn a_key_revoked_on_another_node_stops_passing_within_the_cache_bound() {
    let t = TestApp::with_config(RULES).await;
    assert_eq!(
        t.app.config.gateway.cache_seconds, 5,
        "the documented default"
    );
    t.add_user("alice", PW, &["internal"]).await;
    let created = cli_key(&t, "alice", "rpc", &["gateway", "api:read"]).await;
    let key = created.key.expose();
    let res = bearer(&t, RPC, key).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);

    // Another node revokes it in the shared database.
    revoke_behind_this_node(&t, "alice").await;
    // The JSON API reads the store at every call.
    assert!(matches!(
        t.app
            .authenticate_api_key(key, Scope::ApiRead)
            .await
            .unwrap(),
        KeyCheck::Refused(Refusal::Revoked)
    ));
    // The gateway may reuse its check for gateway.cache_seconds, with the same identity.
    t.clock.advance(4);
    let res = bearer(&t, RPC, key).await;
    assert_eq!(res.status, StatusCode::OK, "within the bound");
    assert_eq!(header(&res, "remote-user"), Some("alice"));
    t.clock.advance(1);
    assert_challenge(&bearer(&t, RPC, key).await, "after gateway.cache_seconds");

    // Without the cache, the very next check reads the store.
    let t = TestApp::with_config(&RULES.replace(
        "default_policy = \"deny\"",
        "default_policy = \"deny\"\ncache_seconds = 0",
    ))
    .await;
    t.add_user("alice", PW, &["internal"]).await;
    let created = cli_key(&t, "alice", "rpc", &["gateway"]).await;
    let key = created.key.expose();
    assert_eq!(bearer(&t, RPC, key).await.status, StatusCode::OK);
    revoke_behind_this_node(&t, "alice").await;
    assert_challenge(&bearer(&t, RPC, key).await, "no cache");
}

/// An event audited by another process sharing the database (another node, a CLI
/// command): its id.
async fn audited_elsewhere(
    t: &TestApp,
    subject: Option<&str>,
    event: &str,
    outcome: &str,
    detail: Option<&str>,
) -> i64 {
    t.store
        .append_audit(&bulwark_store::NewAuditEvent {
            at: t.app.now(),
            actor: Some("cli".into()),
            subject: subject.map(str::to_string),
            event: event.into(),
            outcome: outcome.into(),
            detail: detail.map(str::to_string),
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn events_written_by_other_processes_drop_the_cached_keys_of_their_subjects() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("alice", PW, &["internal"]).await;
    t.add_user("bob", PW, &["internal"]).await;
    let alices = cli_key(&t, "alice", "rpc", &["gateway"]).await;
    let bobs = cli_key(&t, "bob", "rpc", &["gateway"]).await;
    let from = t.app.newest_audit_id().await.unwrap();
    let mut after = 0;
    t.app.sync_caches(&mut after).await.unwrap();
    assert_eq!(after, from, "up to the newest id");
    for key in [&alices, &bobs] {
        assert_eq!(
            bearer(&t, RPC, key.key.expose()).await.status,
            StatusCode::OK
        );
    }

    // Another process revokes both keys in the shared database, and audits one revocation
    // (a process that audits nothing is the bound of the test above).
    for login in ["alice", "bob"] {
        revoke_behind_this_node(&t, login).await;
    }
    let event = audited_elsewhere(&t, Some("alice"), "api_key_revoked", "success", None).await;
    for key in [&alices, &bobs] {
        assert_eq!(
            bearer(&t, RPC, key.key.expose()).await.status,
            StatusCode::OK,
            "cached, and nothing read yet"
        );
    }
    // A refusal changes nothing: it leaves the cache alone.
    let refusal = audited_elsewhere(&t, Some("bob"), "login", "failure", None).await;
    // What `serve` does every second.
    t.app.sync_caches(&mut after).await.unwrap();
    assert_eq!(after, refusal);
    assert!(refusal > event);
    assert_challenge(
        &bearer(&t, RPC, alices.key.expose()).await,
        "read of in the log",
    );
    assert_eq!(
        bearer(&t, RPC, bobs.key.expose()).await.status,
        StatusCode::OK,
        "only a refusal about bob: his entry lives out cache_seconds"
    );
    t.app.sync_caches(&mut after).await.unwrap();
    assert_eq!(after, refusal, "nothing new");

    // A stopped action about nobody (which no caller writes) does not empty the caches.
    let stopped =
        format!("{STOPPED_PART_WAY} (an internal error): the steps before may have taken effect");
    let about_nobody =
        audited_elsewhere(&t, None, "user_disabled", "failure", Some(&stopped)).await;
    t.app.sync_caches(&mut after).await.unwrap();
    assert_eq!(after, about_nobody);
    assert_eq!(
        bearer(&t, RPC, bobs.key.expose()).await.status,
        StatusCode::OK,
        "still cached"
    );

    // An action on bob that stopped part-way over there (`App::run_steps`) may have ended
    // his access before it stopped: his entry goes as for a success.
    let stopped =
        audited_elsewhere(&t, Some("bob"), "user_disabled", "failure", Some(&stopped)).await;
    t.app.sync_caches(&mut after).await.unwrap();
    assert_eq!(after, stopped);
    assert_challenge(
        &bearer(&t, RPC, bobs.key.expose()).await,
        "an action stopped part-way read of in the log",
    );
}

/// SQLite only: the store is made to fail with a trigger (skipped on PostgreSQL by
/// scripts/test).
#[tokio::test]
async fn a_disable_that_fails_half_way_still_drops_the_cached_key_here() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("alice", PW, &["internal"]).await;
    let created = cli_key(&t, "alice", "rpc", &["gateway"]).await;
    let key = created.key.expose();
    assert_eq!(bearer(&t, RPC, key).await.status, StatusCode::OK);

    // The database refuses the revocation of the keys, the disable's last statement.
    let mut raw = raw_sqlite(&t).await;
    sqlx::query(
        "CREATE TRIGGER refuse_key_revocation BEFORE UPDATE ON api_keys \
         BEGIN SELECT RAISE(ABORT, 'refused for the test'); END",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    assert!(t
        .app
        .set_user_active("alice", false, "test", &ClientInfo::cli())
        .await
        .is_err());
    // Audited as a failure only (which no cache acts on), but the account is disabled: its
    // cached key stops at once.
    assert_challenge(&bearer(&t, RPC, key).await, "owner disabled half-way");
}

#[tokio::test]
async fn a_cached_key_is_checked_for_scope_and_expiry_at_every_request() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("alice", PW, &["internal"]).await;
    // A key for the JSON API only: refused by the gateway however often it asks.
    let reader = cli_key(&t, "alice", "reader", &["api:read"]).await;
    for _ in 0..2 {
        assert_challenge(
            &bearer(&t, RPC, reader.key.expose()).await,
            "no gateway scope",
        );
    }
    let day = expiring_key(&t, "alice", "day", 1).await;
    t.clock.advance(86_400 - 2);
    assert_eq!(
        bearer(&t, RPC, day.key.expose()).await.status,
        StatusCode::OK
    );
    // Cached a second ago, expired now.
    t.clock.advance(2);
    assert_challenge(
        &bearer(&t, RPC, day.key.expose()).await,
        "expired while cached",
    );
}

#[tokio::test]
async fn malformed_authorization_headers_are_refused_not_errors() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("alice", PW, &["internal"]).await;
    let created = cli_key(&t, "alice", "rpc", &["gateway"]).await;
    let key = created.key.expose();
    let long = format!("Bearer bwk_{}", "a".repeat(5000));
    let upper = format!("Bearer {}", key.to_uppercase());
    let padded = format!("Bearer {key}x");
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"Bearer".to_vec(),
        b"Bearer ".to_vec(),
        b"Bearer bwk_".to_vec(),
        b"Bearer bwk_!!!".to_vec(),
        b"Basic".to_vec(),
        b"Basic !!!not base64".to_vec(),
        b"Basic YWxpY2U=".to_vec(),
        b"Basic /w==".to_vec(),
        basic("alice", "bwk_").into_bytes(),
        b"Token abc".to_vec(),
        b"Bearer \xff\xfe\xfd".to_vec(),
        b"\xc3\xa9\xc3\xa9".to_vec(),
        long.into_bytes(),
        upper.into_bytes(),
        padded.into_bytes(),
    ];
    for value in &cases {
        let res = gate_raw(&t, RPC, &[value], None, false).await;
        assert_challenge(&res, &String::from_utf8_lossy(value));
    }
    // Two headers, even with a good key among them: not guessed at.
    let good = format!("Bearer {key}");
    let res = gate_raw(&t, RPC, &[good.as_bytes(), good.as_bytes()], None, false).await;
    assert_challenge(&res, "two Authorization headers");
}

#[tokio::test]
async fn a_key_never_meets_a_browser_rule() {
    let t = TestApp::with_config(RULES).await;
    // Bob even has a second factor, and a browser that used it.
    let (b, _, _) = user_with_totp(&t, "bob", &["internal"]).await;
    let created = cli_key(&t, "bob", "rpc", &["gateway", "api:write"]).await;
    let key = created.key.expose();
    for url in [
        "https://odoo.example.com/web",
        "https://odoo.example.com/shop/cart",
    ] {
        let res = bearer(&t, url, key).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{url}");
        assert!(
            res.location().starts_with(&format!("{PORTAL}/login?next=")),
            "{url}: treated as anonymous: {}",
            res.location()
        );
        assert!(header(&res, "remote-user").is_none(), "{url}");
    }
    // His browser session passes the back office, but not the RPC paths without the key...
    let session = b.cookie("bulwark_session").unwrap();
    let res = gate_raw(
        &t,
        "https://odoo.example.com/web",
        &[],
        Some(&session),
        false,
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_challenge(
        &gate_raw(&t, RPC, &[], Some(&session), false).await,
        "session on RPC",
    );
    // ...and with a key, the key decides who is asking.
    let alice = {
        t.add_user("alice", PW, &["internal"]).await;
        cli_key(&t, "alice", "rpc", &["gateway"]).await
    };
    let auth = format!("Bearer {}", alice.key.expose());
    let res = gate_raw(&t, RPC, &[auth.as_bytes()], Some(&session), false).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(header(&res, "remote-user"), Some("alice"));
}

#[tokio::test]
async fn subject_rules_apply_to_the_keys_owner() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("robot", PW, &["integrations"]).await;
    t.add_user("alice", PW, &["internal"]).await;
    let robot = cli_key(&t, "robot", "hooks", &["gateway"]).await;
    let alice = cli_key(&t, "alice", "hooks", &["gateway"]).await;
    let url = "https://hooks.example.com/incoming";
    let res = bearer(&t, url, robot.key.expose()).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(header(&res, "remote-user"), Some("robot"));
    assert_eq!(header(&res, "remote-groups"), Some("integrations"));
    let res = bearer(&t, url, alice.key.expose()).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "falls through to deny");
    // A key that is not valid is a program without identity: a challenge, not a login page.
    let mut bad = robot.key.expose().to_string();
    bad.replace_range(4..8, "0000");
    assert_challenge(
        &bearer(&t, url, &bad).await,
        "unknown key on a subject rule",
    );
    // Without any key, browsers are still sent to log in.
    let res = gate_raw(&t, url, &[], None, false).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res.location().starts_with(&format!("{PORTAL}/login")));
}

#[tokio::test]
async fn last_use_is_written_by_the_flush_not_by_the_check() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("alice", PW, &["internal"]).await;
    let created = cli_key(&t, "alice", "rpc", &["gateway"]).await;
    let key = created.key.expose();
    let digest = created.key.digest();
    let stored = || async { t.store.find_api_key(&digest).await.unwrap().unwrap() };

    // A raw connection of its own sees `data_version` change whenever anyone else commits.
    let mut probe = raw_sqlite(&t).await;
    let before = data_version(&mut probe).await;

    for _ in 0..25 {
        assert_eq!(bearer(&t, RPC, key).await.status, StatusCode::OK);
    }
    t.clock.advance(30);
    assert_eq!(bearer(&t, RPC, key).await.status, StatusCode::OK);
    for refused in ["bwk_nope", "Bearer x"] {
        let _ = bearer(&t, RPC, refused).await;
    }
    assert_eq!(
        data_version(&mut probe).await,
        before,
        "26 checks and 2 refusals wrote nothing"
    );
    assert_eq!(stored().await.last_used_at, None, "not written yet");
    assert_eq!(t.app.key_usage.pending(), 1);
    // The owner's listing already shows the use this node knows of.
    let listed = t
        .app
        .list_api_keys(KeyActor::Cli, Some("alice"))
        .await
        .unwrap();
    assert_eq!(listed[0].last_used_at, Some(T0 + 30));

    assert_eq!(t.app.flush_api_key_usage().await.unwrap(), 1);
    assert_ne!(
        data_version(&mut probe).await,
        before,
        "the flush is one write"
    );
    assert_eq!(stored().await.last_used_at, Some(T0 + 30));
    assert_eq!(t.app.key_usage.pending(), 0);
    assert_eq!(t.app.flush_api_key_usage().await.unwrap(), 0, "nothing new");

    t.clock.advance(100);
    bearer(&t, RPC, key).await;
    t.app.flush_api_key_usage().await.unwrap();
    assert_eq!(stored().await.last_used_at, Some(T0 + 130));
    let listed = t
        .app
        .list_api_keys(KeyActor::Cli, Some("alice"))
        .await
        .unwrap();
    assert_eq!(listed[0].last_used_at, Some(T0 + 130));
}

/// SQLite's counter of commits made by other connections, as `c` sees it.
async fn data_version(c: &mut sqlx::SqliteConnection) -> i64 {
    sqlx::query_scalar::<_, i64>("PRAGMA data_version")
        .fetch_one(&mut *c)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_api_key_cannot_create_api_keys() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("alice", PW, &["internal"]).await;
    let created = cli_key(&t, "alice", "automation", &["gateway", "api:write"]).await;
    let KeyCheck::Valid(by_key) = t
        .app
        .authenticate_api_key(created.key.expose(), Scope::ApiWrite)
        .await
        .unwrap()
    else {
        panic!("the key is valid for api:write");
    };
    let err = t
        .app
        .create_api_key(
            KeyActor::Key(&by_key),
            "alice",
            input("minted", &["gateway"], ExpiryChoice::Default),
            &ClientInfo::cli(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Refused(_)), "{err:?}");
    let audit = t.audit_events("api_key_created").await;
    assert_eq!(audit[0].outcome, "denied");
    assert_eq!(audit.len(), 2);
    // What a key may do with its owner's keys: list (api:read is in api:write), revoke.
    let listed = t
        .app
        .list_api_keys(KeyActor::Key(&by_key), None)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let err = t
        .app
        .list_api_keys(KeyActor::Key(&by_key), Some("root"))
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Refused(_)), "only its owner's");
    t.app
        .revoke_api_key(
            KeyActor::Key(&by_key),
            "alice",
            &KeyRef::Id(created.record.id),
            &ClientInfo::cli(),
        )
        .await
        .unwrap();
    assert!(matches!(
        t.app
            .authenticate_api_key(created.key.expose(), Scope::Gateway)
            .await
            .unwrap(),
        KeyCheck::Refused(_)
    ));
}

#[tokio::test]
async fn lifetimes_follow_the_strictest_group() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("vendor", PW, &["portal", "internal"]).await;
    let cli = ClientInfo::cli();
    let make = |expiry| {
        t.app.create_api_key(
            KeyActor::Cli,
            "vendor",
            input("k", &["gateway"], expiry),
            &cli,
        )
    };
    for (expiry, want) in [
        (ExpiryChoice::Days(31), "at most 30 days"),
        (ExpiryChoice::Never, "must expire"),
        (ExpiryChoice::Days(0), "1 to 3650 days"),
    ] {
        match make(expiry).await {
            Err(ServiceError::InvalidInput(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("{expiry:?}: {other:?}"),
        }
    }
    let created = make(ExpiryChoice::Default).await.unwrap();
    assert_eq!(created.record.expires_at, Some(T0 + 30 * 86_400));
    // Bad names and scopes are plain input errors.
    for (name, scopes) in [("", &["gateway"][..]), ("x", &[][..]), ("x", &["root"][..])] {
        let err = t
            .app
            .create_api_key(
                KeyActor::Cli,
                "vendor",
                input(name, scopes, ExpiryChoice::Default),
                &cli,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::InvalidInput(_)), "{err:?}");
    }
    let err = t
        .app
        .create_api_key(
            KeyActor::Cli,
            "vendor",
            input("k", &["gateway"], ExpiryChoice::Default),
            &cli,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServiceError::InvalidInput(m) if m.contains("already a key named")),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The account page

/// The key shown on the page after creating one.
fn shown_key(body: &str) -> String {
    let start = body.find("<code>bwk_").expect("key on the page") + "<code>".len();
    body[start..start + bulwark_core::api_key::KEY_LEN].to_string()
}

#[tokio::test]
async fn the_page_creates_shows_once_lists_and_revokes() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    let page = b.get("/account/api-keys").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("You have no API keys"));
    assert!(
        page.body.contains("<option value=\"90\" selected>"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("value=\"never\""), "a maximum applies");
    assert!(b.get("/account").await.body.contains("/account/api-keys"));

    let res = b
        .post(
            "/account/api-keys",
            &[
                ("name", "nightly sync"),
                ("scope_gateway", "1"),
                ("days", "30"),
                ("password", PW),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert!(res.body.contains("shown only once"));
    assert_eq!(header(&res, "cache-control"), Some("no-store"));
    let key = shown_key(&res.body);
    assert_eq!(bearer(&t, RPC, &key).await.status, StatusCode::OK);

    let page = b.get("/account/api-keys").await;
    assert!(page.body.contains("nightly sync"), "{}", page.body);
    assert!(page.body.contains(&format!("{}…", &key[..12])));
    assert!(!page.body.contains(&key), "never shown again");
    assert!(page.body.contains("gateway"));
    let mails = t.queued_mails().await;
    let mail = mails
        .iter()
        .find(|m| m.subject == "A new API key was created")
        .expect("creation mail");
    assert_eq!(mail.to, "alice@example.com");
    assert!(mail.text.contains("nightly sync") && !mail.text.contains(&key));

    // Last use shows on the page before any flush.
    t.clock.advance(60);
    bearer(&t, RPC, &key).await;
    let page = b.get("/account/api-keys").await;
    assert!(
        page.body
            .contains(&bulwark_server::clock::format_time(T0 + 60)),
        "{}",
        page.body
    );

    let id = t
        .app
        .list_api_keys(KeyActor::Cli, Some("alice"))
        .await
        .unwrap()[0]
        .record
        .id
        .to_string();
    let res = b.post("/account/api-keys/revoke", &[("key_id", &id)]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/account/api-keys?done=revoked");
    assert_challenge(&bearer(&t, RPC, &key).await, "revoked on the page");
    let page = b.get("/account/api-keys?done=revoked").await;
    assert!(page.body.contains("The key was revoked"));
    assert!(
        !page.body.contains("nightly sync"),
        "revoked keys leave the list"
    );
    assert!(t
        .queued_mails()
        .await
        .iter()
        .any(|m| m.subject == "An API key was revoked"));
    let res = b.post("/account/api-keys/revoke", &[("key_id", &id)]).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "only once");
}

#[tokio::test]
async fn the_page_refuses_bad_input_with_a_clear_4xx() {
    let t = TestApp::with_config(RULES).await;
    t.add_user("alice", PW, &["internal"]).await;
    t.add_user("bob", PW, &["internal"]).await;
    let bobs = cli_key(&t, "bob", "bobs", &["gateway"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    let good = [
        ("name", "k"),
        ("scope_gateway", "1"),
        ("days", "30"),
        ("password", PW),
    ];
    let with = |k: &'static str, v: &'static str| {
        let mut f: Vec<(&str, &str)> = good.iter().copied().filter(|(n, _)| *n != k).collect();
        if !v.is_empty() || k == "name" {
            f.push((k, v));
        }
        f
    };
    for (fields, want) in [
        (
            with("password", "wrong-password-123"),
            "password is not correct",
        ),
        (with("password", ""), "Enter your password"),
        (with("scope_gateway", ""), "at least one scope"),
        (with("days", "abc"), "from the list"),
        (with("days", "366"), "at most 365 days"),
        (with("days", "never"), "must expire"),
        (with("name", "   "), "name of 1 to 64"),
    ] {
        let res = b.post("/account/api-keys", &fields).await;
        assert_eq!(
            res.status,
            StatusCode::BAD_REQUEST,
            "{fields:?}: {}",
            res.body
        );
        assert!(res.body.contains(want), "{fields:?}: {}", res.body);
        assert!(!res.body.contains("<code>bwk_"), "no key made");
    }
    assert!(t
        .app
        .list_api_keys(KeyActor::Cli, Some("alice"))
        .await
        .unwrap()
        .is_empty());
    // Without the CSRF token: refused before anything else.
    let res = b.post_raw("/account/api-keys", &good).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = b
        .post_raw("/account/api-keys/revoke", &[("key_id", "1")])
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    // Not a number, someone else's, unknown: a 4xx, never a 500.
    for fields in [
        &[("key_id", "x")][..],
        &[("key_id", "99999999999999999999")],
        &[],
    ] {
        let res = b.post("/account/api-keys/revoke", fields).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{fields:?}");
        assert!(res.body.contains("could not be read"), "{}", res.body);
    }
    let bob_id = bobs.record.id.to_string();
    let res = b
        .post("/account/api-keys/revoke", &[("key_id", &bob_id)])
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(
        bearer(&t, RPC, bobs.key.expose()).await.status,
        StatusCode::OK
    );
    // Anonymous visitors are sent to log in.
    let anon = t.browser();
    let res = anon.get("/account/api-keys").await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/login?next=/account/api-keys");
    let res = anon.post("/account/api-keys", &good).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/login");
}

/// `key` (with the `gateway` and `api:read` scopes) passes the gateway as alice's, and the API.
async fn key_passes(t: &TestApp, key: &str, what: &str) {
    let res = bearer(t, RPC, key).await;
    assert_eq!(res.status, StatusCode::OK, "{what}: {}", res.body);
    assert_eq!(header(&res, "remote-user"), Some("alice"), "{what}");
    let res = t
        .browser()
        .with_header("authorization", &format!("Bearer {key}"))
        .get("/api/v1/me")
        .await;
    assert_eq!(res.status, StatusCode::OK, "{what}: {}", res.body);
}

#[tokio::test]
async fn keys_stop_when_their_owners_two_factor_set_up_is_overdue() {
    let t = TestApp::with_config(&format!(
        "{RULES}\n[two_factor]\nenforcement = \"employees\"\ngrace_days = 7\nemail_codes = false\n"
    ))
    .await;
    t.add_user("alice", PW, &["internal"]).await;
    let key = cli_key(&t, "alice", "rpc", &["gateway", "api:read"]).await;
    let key = key.key.expose();
    let api = || {
        t.browser()
            .with_header("authorization", &format!("Bearer {key}"))
    };
    let passes = |what: &'static str| key_passes(&t, key, what);
    // Her grace starts at her first login under enforcement, not before.
    passes("no login yet").await;
    t.clock.advance(30 * 86_400);
    passes("still no login").await;
    let res = t.browser().login("alice", PW).await;
    assert!(
        res.location().starts_with("/account/security?prompt=grace"),
        "{}",
        res.location()
    );
    passes("in grace").await;
    t.clock.advance(7 * 86_400 - 1);
    passes("the grace's last second, cached").await;

    // Grace over: her sessions reach only the set-up page, and her keys nothing, at once
    // (the deadline goes with the cached key).
    t.clock.advance(1);
    assert_challenge(&bearer(&t, RPC, key).await, "grace over");
    let res = api().get("/api/v1/me").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.body);
    let body: serde_json::Value = serde_json::from_str(&res.body).unwrap();
    assert_eq!(body["error"]["code"], "enrolment_required", "{}", res.body);
    assert!(!res.body.contains(key));
    assert_eq!(
        t.app
            .authenticate_api_key(key, Scope::Gateway)
            .await
            .map(|c| match c {
                KeyCheck::Refused(why) => Some(why),
                KeyCheck::Valid(_) => None,
            })
            .unwrap(),
        Some(Refusal::OwnerMustEnrol)
    );

    // Set up, the same key works again at once (the enrolment's audit event drops the
    // cached key with its deadline).
    let b = t.browser();
    let res = b.login("alice", PW).await;
    assert!(
        res.location().starts_with("/account/security"),
        "{}",
        res.location()
    );
    crate::two_factor::enrol(&t, &b).await;
    passes("authenticator confirmed").await;
}
