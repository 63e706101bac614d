//! In-process tests of the forward-auth endpoints: the proxy's view (trusted peer, target
//! headers), the access rules with sessions of one and two factors, the portal round trip
//! with the return URL, revocation, and the shared session cookie.

use crate::support::*;
use crate::two_factor::{
    code_now, half_login, logout, next_code, read_enrolment, send_code, user_with_totp,
};
use axum::http::{header, StatusCode};

const PW: &str = "Correct-Horse-Battery-Staple-42";
const PORTAL: &str = "http://127.0.0.1:9091";

/// The Odoo example of docs/gateway.md, with the proxy on 127.0.0.1.
const ODOO: &str = r#"
[server]
trusted_proxies = ["127.0.0.1"]

[gateway]
protected = ["https://odoo.example.com", "https://*.apps.example.com"]
default_policy = "deny"

[[gateway.rules]]
hosts = ["odoo.example.com"]
paths = ["/web/static/*"]
policy = "bypass"

[[gateway.rules]]
hosts = ["odoo.example.com"]
paths = ["/xmlrpc/*", "/jsonrpc"]
networks = ["10.20.0.0/16"]
policy = "bypass"

[[gateway.rules]]
hosts = ["odoo.example.com"]
paths = ["/xmlrpc/*", "/jsonrpc"]
policy = "api_key"

[[gateway.rules]]
hosts = ["odoo.example.com"]
paths = ["/shop*"]
policy = "one_factor"

[[gateway.rules]]
hosts = ["*.apps.example.com"]
subjects = ["group:admins"]
policy = "two_factor"

[[gateway.rules]]
hosts = ["odoo.example.com"]
policy = "two_factor"
"#;

/// What nginx sends to `auth-request` for a browser request.
struct Ask<'a> {
    url: &'a str,
    method: &'a str,
    /// The browser's address, as the proxy saw it.
    client: &'a str,
    /// The browser's session cookie, if it has one.
    session: Option<String>,
}

impl<'a> Ask<'a> {
    fn get(url: &'a str) -> Self {
        Self {
            url,
            method: "GET",
            client: "203.0.113.7",
            session: None,
        }
    }

    fn by(mut self, b: &Browser) -> Self {
        self.session = b.cookie("bulwark_session");
        self
    }

    fn from(mut self, client: &'a str) -> Self {
        self.client = client;
        self
    }

    fn method(mut self, method: &'a str) -> Self {
        self.method = method;
        self
    }

    fn proxy(&self, t: &TestApp, peer: &str) -> Browser {
        let p = t
            .browser_from(peer)
            .with_header("x-forwarded-for", self.client);
        if let Some(s) = &self.session {
            p.set_cookie("bulwark_session", s);
        }
        p
    }

    /// nginx `auth_request`.
    async fn nginx(&self, t: &TestApp) -> Response {
        self.proxy(t, "127.0.0.1")
            .with_header("x-original-url", self.url)
            .with_header("x-original-method", self.method)
            .get("/api/authz/auth-request")
            .await
    }

    /// Caddy `forward_auth` / Traefik ForwardAuth.
    async fn caddy(&self, t: &TestApp) -> Response {
        let (proto, rest) = self.url.split_once("://").unwrap();
        let split = rest.find('/').unwrap_or(rest.len());
        let (host, uri) = rest.split_at(split);
        self.proxy(t, "127.0.0.1")
            .with_header("x-forwarded-proto", proto)
            .with_header("x-forwarded-host", host)
            .with_header("x-forwarded-uri", if uri.is_empty() { "/" } else { uri })
            .with_header("x-forwarded-method", self.method)
            .get("/api/authz/forward-auth")
            .await
    }
}

/// Deletes the user's sessions in the store directly, as another node would: nothing is
/// audited on this one.
async fn end_sessions_behind_the_cache(t: &TestApp, login: &str) {
    let user = t.app.user_by_login(login).await.unwrap();
    for s in t.store.list_user_sessions(user.id).await.unwrap() {
        t.store.delete_session(s.id).await.unwrap();
    }
}

fn header<'a>(res: &'a Response, name: &str) -> Option<&'a str> {
    res.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn anonymous_browsers_are_sent_to_the_portal_and_back() {
    let t = TestApp::with_config(ODOO).await;
    let ask = Ask::get("https://odoo.example.com/web?debug=1");
    let res = ask.nginx(&t).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{}", res.body);
    let expected = format!("{PORTAL}/login?next=https%3A//odoo.example.com/web%3Fdebug%3D1");
    assert_eq!(res.location(), expected);
    assert!(header(&res, "remote-user").is_none());
    let res = ask.caddy(&t).await;
    assert_eq!(res.status, StatusCode::FOUND);
    assert_eq!(res.location(), expected);

    // The portal keeps the return URL through the login and sends the browser back.
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    let next = expected.trim_start_matches(PORTAL);
    let page = b.get(next).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("odoo.example.com"), "{}", page.body);
    let res = b
        .post(
            "/login",
            &[
                ("login", "alice"),
                ("password", PW),
                ("next", "https://odoo.example.com/web?debug=1"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "https://odoo.example.com/web?debug=1");
}

/// Browsers apply a page's `form-action` to the redirects that follow its forms too: the
/// login and second-step forms end in a redirect to the application, so its origin must be
/// listed, and nothing else.
#[tokio::test]
async fn form_action_allows_the_protected_applications_only() {
    let t = TestApp::with_config(ODOO).await;
    let res = t.browser().get("/login").await;
    let csp = res.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains(
            "form-action 'self' https://odoo.example.com:443 https://*.apps.example.com:443;"
        ),
        "{csp}"
    );
    let res = TestApp::new().await.browser().get("/login").await;
    let csp = res.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("form-action 'self';"), "{csp}");
}

#[tokio::test]
async fn the_portal_never_returns_to_an_unprotected_site() {
    let t = TestApp::with_config(ODOO).await;
    t.add_user("alice", PW, &["internal"]).await;
    for next in [
        "https://evil.example/",
        "//evil.example",
        "https://odoo.example.com@evil.example/",
        "https://odoo.example.com.evil.example/",
        "http://odoo.example.com/",
        "https://odoo.example.com:8443/",
        "HTTPS://odoo.example.com/",
        "/\\evil.example",
    ] {
        let b = t.browser();
        let res = b
            .post(
                "/login",
                &[("login", "alice"), ("password", PW), ("next", next)],
            )
            .await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{next}: {}", res.body);
        assert_eq!(res.location(), "/account", "{next}");
    }
    // And the gateway does not put such a URL into the login link either.
    let res = Ask::get("https://unprotected.example.net/").nginx(&t).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "default deny");
}

#[tokio::test]
async fn sessions_pass_with_identity_headers_by_factor() {
    let t = TestApp::with_config(ODOO).await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    assert_eq!(b.login("alice", PW).await.location(), "/account");

    // One factor is enough for the shop.
    let res = Ask::get("https://odoo.example.com/shop/cart")
        .by(&b)
        .nginx(&t)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(header(&res, "remote-user"), Some("alice"));
    assert_eq!(header(&res, "remote-groups"), Some("internal"));
    assert_eq!(header(&res, "remote-email"), Some("alice@example.com"));
    assert!(header(&res, "remote-name").is_some());

    // The back office asks for two: alice has none yet, so she is sent to set it up.
    let res = Ask::get("https://odoo.example.com/web")
        .by(&b)
        .nginx(&t)
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.location(),
        format!("{PORTAL}/account/security?prompt=required&next=https%3A//odoo.example.com/web")
    );
    let page = b
        .get("/account/security?prompt=required&next=https%3A//odoo.example.com/web")
        .await;
    assert!(
        page.body.contains("requires two-factor authentication"),
        "{}",
        page.body
    );
    let res = Ask::get("https://odoo.example.com/web")
        .by(&b)
        .caddy(&t)
        .await;
    assert_eq!(res.status, StatusCode::FOUND);

    // She sets it up from there, and "continue" on the recovery codes takes her to the app,
    // which now lets her in.
    let next = "https://odoo.example.com/web";
    let res = b
        .post(
            "/account/security/enrol",
            &[("password", PW), ("next", next)],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(
        res.location(),
        "/account/security?next=https%3A//odoo.example.com/web"
    );
    let page = b.get(res.location()).await;
    assert!(page
        .body
        .contains("name=\"next\" value=\"https://odoo.example.com/web\""));
    let e = read_enrolment(&page.body);
    let res = b
        .post(
            "/account/security/confirm",
            &[("code", &code_now(&t, &e.secret)), ("next", next)],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert!(
        res.body
            .contains("<a href=\"https://odoo.example.com/web\">I have saved them"),
        "{}",
        res.body
    );
    let res = Ask::get(next).by(&b).nginx(&t).await;
    assert_eq!(res.status, StatusCode::OK);
}

#[tokio::test]
async fn a_second_factor_opens_two_factor_rules() {
    let t = TestApp::with_config(ODOO).await;
    // Enrolling proves a second factor: the fresh session counts as two-factor at once.
    let (b, secret, _) = user_with_totp(&t, "bob", &["internal"]).await;
    let res = Ask::get("https://odoo.example.com/web")
        .by(&b)
        .nginx(&t)
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(header(&res, "remote-user"), Some("bob"));

    // A half-logged-in session (password only, code pending) is no session for the gateway.
    logout(&b).await;
    half_login(&b, "bob").await;
    for url in [
        "https://odoo.example.com/web",
        "https://odoo.example.com/shop",
    ] {
        let res = Ask::get(url).by(&b).nginx(&t).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{url}");
        assert!(res.location().starts_with(&format!("{PORTAL}/login?next=")));
    }
    let res = send_code(&b, &next_code(&t, &secret)).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    let res = Ask::get("https://odoo.example.com/web")
        .by(&b)
        .nginx(&t)
        .await;
    assert_eq!(res.status, StatusCode::OK);
}

#[tokio::test]
async fn subject_rules_decide_by_group() {
    let t = TestApp::with_config(ODOO).await;
    let (admin, secret, _) = user_with_totp(&t, "root", &["internal"]).await;
    t.app
        .update_user_groups(
            "root",
            &["admins".into()],
            &[],
            None,
            "test",
            &bulwark_server::services::ClientInfo::cli(),
        )
        .await
        .unwrap();
    logout(&admin).await;
    half_login(&admin, "root").await;
    send_code(&admin, &next_code(&t, &secret)).await;
    let (clerk, _, _) = user_with_totp(&t, "carl", &["internal"]).await;
    let url = "https://crm.apps.example.com/leads";
    let res = Ask::get(url).nginx(&t).await;
    assert_eq!(
        res.status,
        StatusCode::UNAUTHORIZED,
        "anonymous: log in first"
    );
    assert!(res.location().contains("/login?next="));
    let res = Ask::get(url).by(&admin).nginx(&t).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(header(&res, "remote-groups"), Some("admins,internal"));
    let res = Ask::get(url).by(&clerk).nginx(&t).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "falls through to deny");
}

#[tokio::test]
async fn programs_get_a_challenge_not_a_redirect() {
    let t = TestApp::with_config(ODOO).await;
    for url in [
        "https://odoo.example.com/xmlrpc/2/object",
        "https://odoo.example.com/jsonrpc",
        // A bypassed prefix cannot be used to reach an API path.
        "https://odoo.example.com/web/static/../../xmlrpc/2/object",
        "https://odoo.example.com/web/static/%2e%2e/%2e%2e/jsonrpc",
    ] {
        for res in [
            Ask::get(url).method("POST").nginx(&t).await,
            Ask::get(url).method("POST").caddy(&t).await,
        ] {
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{url}");
            assert!(res.headers.get(header::LOCATION).is_none(), "{url}");
            assert_eq!(
                header(&res, "www-authenticate"),
                Some("Bearer realm=\"bulwark\"")
            );
        }
    }
    // From the office network the API needs no key.
    let res = Ask::get("https://odoo.example.com/xmlrpc/2/common")
        .method("POST")
        .from("10.20.1.2")
        .nginx(&t)
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(header(&res, "remote-user").is_none());
    // Static files pass for everyone.
    let res = Ask::get("https://odoo.example.com/web/static/src/app.js")
        .nginx(&t)
        .await;
    assert_eq!(res.status, StatusCode::OK);
}

#[tokio::test]
async fn target_headers_are_believed_only_from_trusted_proxies() {
    let t = TestApp::with_config(ODOO).await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    // The browser itself (not a trusted proxy) asks directly, claiming a bypassed URL and
    // an office address.
    let direct = t
        .browser_from("203.0.113.7")
        .with_header("x-original-url", "https://odoo.example.com/web/static/x.js")
        .with_header("x-forwarded-for", "10.20.1.2")
        .get("/api/authz/auth-request")
        .await;
    assert_eq!(direct.status, StatusCode::FORBIDDEN, "{}", direct.body);
    let spoofed = Ask::get("https://odoo.example.com/shop").by(&b);
    let res = spoofed.proxy(&t, "198.51.100.1");
    let res = res
        .with_header("x-original-url", "https://odoo.example.com/shop")
        .get("/api/authz/auth-request")
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(header(&res, "remote-user").is_none());

    // A trusted proxy's forwarded client address is read right to left: a client that sends
    // its own X-Forwarded-For cannot claim the office network.
    let res = t
        .browser_from("127.0.0.1")
        .with_header("x-forwarded-for", "10.20.1.2, 203.0.113.7")
        .with_header("x-original-url", "https://odoo.example.com/jsonrpc")
        .with_header("x-original-method", "POST")
        .get("/api/authz/auth-request")
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unreadable_targets_are_refused_not_errors() {
    let t = TestApp::with_config(ODOO).await;
    for url in [
        "",
        "odoo.example.com/web",
        "https://odoo.example.com/web%00",
        "https://odoo.example.com/web%zz",
        "https://user@odoo.example.com/web",
        "javascript://odoo.example.com/",
        "https://odoo.example.com/a\\..\\jsonrpc",
    ] {
        let res = t
            .browser_from("127.0.0.1")
            .with_header("x-original-url", url)
            .get("/api/authz/auth-request")
            .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{url:?}: {}", res.body);
    }
    let res = t
        .browser_from("127.0.0.1")
        .get("/api/authz/forward-auth")
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_revoked_session_stops_passing_at_once() {
    let t = TestApp::with_config(ODOO).await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    let ask = Ask::get("https://odoo.example.com/shop").by(&b);
    assert_eq!(ask.nginx(&t).await.status, StatusCode::OK);
    logout(&b).await;
    // The proxy still holds the old cookie value.
    let res = ask.nginx(&t).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);

    // Revoked by an admin (disable): the same, at the very next request.
    let b = t.browser();
    b.login("alice", PW).await;
    let ask = Ask::get("https://odoo.example.com/shop").by(&b);
    assert_eq!(ask.nginx(&t).await.status, StatusCode::OK);
    t.app
        .set_user_active(
            "alice",
            false,
            "test",
            &bulwark_server::services::ClientInfo::cli(),
        )
        .await
        .unwrap();
    assert_eq!(ask.nginx(&t).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn restricted_sessions_are_sent_to_what_they_must_do() {
    let t = TestApp::with_config(ODOO).await;
    t.add_user("alice", PW, &["internal"]).await;
    t.app
        .force_password_change(
            "alice",
            true,
            "test",
            &bulwark_server::services::ClientInfo::cli(),
        )
        .await
        .unwrap();
    let b = t.browser();
    assert_eq!(b.login("alice", PW).await.location(), "/password/change");
    let res = Ask::get("https://odoo.example.com/shop")
        .by(&b)
        .nginx(&t)
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.location(), format!("{PORTAL}/password/change"));
}

#[tokio::test]
async fn the_session_cookie_can_cover_a_parent_domain() {
    let t = TestApp::with_config(
        "[server]\npublic_url = \"https://auth.example.com\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [gateway]\ncookie_domain = \"example.com\"\nprotected = [\"https://odoo.example.com\"]\n",
    )
    .await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    let res = b.login("alice", PW).await;
    let set = res
        .set_cookie("__Secure-bulwark_session")
        .unwrap_or_else(|| panic!("{:?}", res.set_cookies()));
    assert!(set.contains("; Domain=example.com"), "{set}");
    assert!(
        set.contains("; Secure") && set.contains("HttpOnly"),
        "{set}"
    );
    // The other cookies stay on the portal's own host.
    let csrf = res
        .set_cookies()
        .into_iter()
        .chain(b.get("/login").await.set_cookies())
        .find(|c| c.contains("bulwark_csrf"));
    if let Some(csrf) = csrf {
        assert!(
            csrf.starts_with("__Host-") && !csrf.contains("Domain="),
            "{csrf}"
        );
    }
    // And the gateway reads the shared cookie.
    let value = b.cookie("__Secure-bulwark_session").unwrap();
    let res = t
        .browser_from("127.0.0.1")
        .with_header("cookie", &format!("__Secure-bulwark_session={value}"))
        .with_header("x-original-url", "https://odoo.example.com/")
        .get("/api/authz/auth-request")
        .await;
    // No rules: the default policy is deny, whoever asks.
    assert_eq!(res.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_session_ended_on_another_node_stops_passing_within_the_cache_bound() {
    let t = TestApp::with_config(&format!("{ODOO}\n")).await;
    assert_eq!(
        t.app.config.gateway.cache_seconds, 5,
        "the documented default"
    );
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    let ask = Ask::get("https://odoo.example.com/shop").by(&b);
    let res = ask.nginx(&t).await;
    assert_eq!(res.status, StatusCode::OK);
    // The check answers without setting cookies (no CSRF cookie for a proxy).
    assert!(res.headers.get(header::SET_COOKIE).is_none());

    // Another node deletes the session in the shared database: nothing is audited here.
    end_sessions_behind_the_cache(&t, "alice").await;
    t.clock.advance(4);
    assert_eq!(
        ask.nginx(&t).await.status,
        StatusCode::OK,
        "within the bound the cached session may still pass"
    );
    t.clock.advance(1);
    assert_eq!(
        ask.nginx(&t).await.status,
        StatusCode::UNAUTHORIZED,
        "after gateway.cache_seconds it does not"
    );
}

#[tokio::test]
async fn without_the_cache_every_check_reads_the_store() {
    let t = TestApp::with_config(&ODOO.replace(
        "default_policy = \"deny\"",
        "default_policy = \"deny\"\ncache_seconds = 0",
    ))
    .await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    let ask = Ask::get("https://odoo.example.com/shop").by(&b);
    assert_eq!(ask.nginx(&t).await.status, StatusCode::OK);
    end_sessions_behind_the_cache(&t, "alice").await;
    assert_eq!(ask.nginx(&t).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn junk_in_forwarded_for_cannot_borrow_the_proxys_address() {
    // A rule that trusts the proxy's own network (a mistake docs/gateway.md warns about)
    // must still not let a client in by making its own address unreadable.
    let t = TestApp::with_config(&ODOO.replace("10.20.0.0/16", "127.0.0.0/8")).await;
    for xff in [
        "junk, 203.0.113.7",
        "203.0.113.7",
        "garbage",
        "203.0.113.7, ",
    ] {
        let res = t
            .browser_from("127.0.0.1")
            .with_header("x-forwarded-for", xff)
            .with_header("x-original-url", "https://odoo.example.com/jsonrpc")
            .with_header("x-original-method", "POST")
            .get("/api/authz/auth-request")
            .await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{xff:?}");
    }
}

#[tokio::test]
async fn events_drop_only_the_cached_sessions_of_their_user() {
    let t = TestApp::with_config(ODOO).await;
    t.add_user("alice", PW, &["internal"]).await;
    t.add_user("bob", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    let ask = Ask::get("https://odoo.example.com/shop").by(&b);
    assert_eq!(ask.nginx(&t).await.status, StatusCode::OK);
    // Alice's session is ended behind the cache's back (as another node would)...
    end_sessions_behind_the_cache(&t, "alice").await;
    // ...then bob logs in on this node: an audited event about bob, not alice. Her cached
    // session survives it (a busy login page does not empty the cache)...
    t.browser().login("bob", PW).await;
    assert_eq!(ask.nginx(&t).await.status, StatusCode::OK);
    // ...and the first event about alice drops it.
    t.app
        .unlock_user(
            "alice",
            "test",
            &bulwark_server::services::ClientInfo::cli(),
        )
        .await
        .unwrap();
    assert_eq!(ask.nginx(&t).await.status, StatusCode::UNAUTHORIZED);
}

/// A `GET` of either endpoint is answered before the router; `HEAD` goes through the router
/// to the same check and gets the same status and identity; other methods get 405.
#[tokio::test]
async fn both_endpoints_answer_get_and_head_alike_and_refuse_other_methods() {
    let t = TestApp::with_config(ODOO).await;
    t.add_user("alice", PW, &["internal"]).await;
    let b = t.browser();
    b.login("alice", PW).await;
    let ask = Ask::get("https://odoo.example.com/shop/cart").by(&b);
    let proxy = || {
        ask.proxy(&t, "127.0.0.1")
            .with_header("x-original-url", ask.url)
            .with_header("x-forwarded-proto", "https")
            .with_header("x-forwarded-host", "odoo.example.com")
            .with_header("x-forwarded-uri", "/shop/cart")
    };
    for path in ["/api/authz/auth-request", "/api/authz/forward-auth"] {
        let got = proxy().get(path).await;
        assert_eq!(got.status, StatusCode::OK, "GET {path}: {}", got.body);
        assert_eq!(header(&got, "remote-user"), Some("alice"));
        assert_eq!(header(&got, "cache-control"), Some("no-store"));
        let head = proxy()
            .request(axum::http::Method::HEAD, path, None, Vec::new())
            .await;
        assert_eq!(head.status, StatusCode::OK, "HEAD {path}");
        assert_eq!(header(&head, "remote-user"), Some("alice"));
        for method in [axum::http::Method::POST, axum::http::Method::DELETE] {
            let other = proxy()
                .request(method.clone(), path, None, Vec::new())
                .await;
            assert_eq!(
                other.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
        }
    }
    // Anonymous: the same refusal whichever way the request went.
    let anonymous = Ask::get("https://odoo.example.com/shop/cart");
    let get = anonymous.nginx(&t).await;
    assert_eq!(get.status, StatusCode::UNAUTHORIZED);
    let head = anonymous
        .proxy(&t, "127.0.0.1")
        .with_header("x-original-url", anonymous.url)
        .request(
            axum::http::Method::HEAD,
            "/api/authz/auth-request",
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(head.status, StatusCode::UNAUTHORIZED);
    assert_eq!(head.location(), get.location());
}
