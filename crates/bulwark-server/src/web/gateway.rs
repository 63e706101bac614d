//! Forward authentication for reverse proxies.
//!
//! - `GET /api/authz/auth-request` for nginx `auth_request`: the target comes from
//!   `X-Original-URL` and `X-Original-Method`. Answers 200, 401 (with the portal URL in
//!   `Location` when a browser should log in) or 403.
//! - `GET /api/authz/forward-auth` for Caddy `forward_auth` and Traefik ForwardAuth: the target
//!   comes from `X-Forwarded-Method/Proto/Host/Uri`. Answers 200, 302 to the portal, 401 (API
//!   clients) or 403.
//!
//! On 200 the identity goes to the application in `Remote-User`, `Remote-Groups`
//! (comma-separated), `Remote-Email` and `Remote-Name`. The target headers are believed only
//! from a peer in `server.trusted_proxies`; anything else is refused with 403, as is a target
//! that cannot be read unambiguously (the proxy turns any other status into a 500).
//!
//! The check reads the session (by the SHA-256 of its token) and its user from the store, or
//! from a cache kept at most `gateway.cache_seconds` (see `services::check_cache`): a
//! session ended on this node stops passing at the next request, one ended on another node
//! within that bound. It never writes on its own, apart from the throttled `last_seen` touch
//! every session gets, and never hashes a password.
//!
//! API keys. Programs present a key as `Authorization: Bearer bwk_…`, or as the password of
//! HTTP Basic (any user name) for clients that can only do Basic. A key is looked up only
//! when the rules may accept one: an `api_key` rule, or a rule for some users (subjects)
//! when there is no session, to learn who is asking. It is then checked for the `gateway`
//! scope, and the rules are decided again with its owner as the requester, so subject rules
//! apply to the key's owner. A key passes only `api_key` rules (and `bypass`): a key is not
//! a browser session and never satisfies `one_factor` or `two_factor`, whatever second
//! factor its owner has. Anything wrong with a key (missing, malformed, unknown, revoked,
//! expired, its owner disabled, no `gateway` scope) gets the same 401 with
//! `WWW-Authenticate` and no `Location`; the reason is logged, never the key. Checking a key
//! reads the store twice, or reuses a check at most `gateway.cache_seconds` old, and writes
//! nothing (its last use is kept in memory, see `services::api_keys`).

use super::extract::{client_ip, get_cookie};
use super::pages::url_encode;
use crate::app::App;
use crate::metrics::GatewayDecision;
use crate::services::api_keys::KeyCheck;
use crate::services::auth::CheckedSession;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bulwark_core::access::{normalized_path, Decision, Identity, Policy, Target};
use bulwark_core::api_key::{self, Scope};
use bulwark_core::enforcement::Standing;
use bulwark_core::redirect::safe_return_url;
use bulwark_store::SessionStage;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

/// Which proxy convention a request follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    /// nginx `auth_request`: 401 + `Location` for browsers.
    AuthRequest,
    /// Caddy / Traefik: 302 for browsers.
    ForwardAuth,
}

/// The request the proxy asks about, borrowed from its headers.
#[derive(Debug)]
struct Original<'a> {
    /// `http` or `https`, any case.
    scheme: &'a str,
    /// `host[:port]` as sent.
    authority: &'a str,
    /// The path and query as sent.
    uri: &'a str,
    /// Host name without port or brackets (compared without case).
    host: &'a str,
    /// The normalised path (see `access::normalize_path`).
    path: Cow<'a, str>,
    /// As sent (compared without case).
    method: &'a str,
}

impl Original<'_> {
    /// `https://host[:port]/path?query`, as the browser asked for it (built only when needed:
    /// for a return URL).
    fn url(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme.to_ascii_lowercase(),
            self.authority.to_ascii_lowercase(),
            self.uri
        )
    }
}

/// The nginx `auth_request` endpoint's path (routed in `web::gateway_routes`, taken before
/// the router by `web::Web`).
pub(super) const AUTH_REQUEST_PATH: &str = "/api/authz/auth-request";
/// The Caddy / Traefik endpoint's path.
pub(super) const FORWARD_AUTH_PATH: &str = "/api/authz/forward-auth";

impl Flavor {
    /// The endpoint of a path, if it is one of the two.
    pub(super) fn of_path(path: &str) -> Option<Self> {
        match path {
            AUTH_REQUEST_PATH => Some(Self::AuthRequest),
            FORWARD_AUTH_PATH => Some(Self::ForwardAuth),
            _ => None,
        }
    }
}

/// Answers a check (taken before the router for `GET`, see `web::Web`).
pub(super) async fn answer(app: &App, req: Request, flavor: Flavor) -> Response {
    finish(app, check(app, peer(&req), req.headers(), flavor).await)
}

pub async fn auth_request(State(app): State<App>, req: Request) -> Response {
    answer(&app, req, Flavor::AuthRequest).await
}

pub async fn forward_auth(State(app): State<App>, req: Request) -> Response {
    answer(&app, req, Flavor::ForwardAuth).await
}

/// What every answer gets: never cached (a cached "yes" would outlive a revocation), a log
/// line at debug level (the proxy logs requests), and for a refusal (which Caddy and
/// Traefik show to the browser) the headers of Bulwark's other pages.
fn finish(app: &App, mut res: Response) -> Response {
    let status = res.status();
    app.metrics.record_gateway(match status.as_u16() {
        200..=299 => GatewayDecision::Allowed,
        401 | 302 => GatewayDecision::Unauthenticated,
        403 => GatewayDecision::Forbidden,
        _ => GatewayDecision::Error,
    });
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !status.is_success() {
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    if status.is_server_error() {
        tracing::error!(status = status.as_u16(), "forward-auth check failed");
    } else {
        tracing::debug!(status = status.as_u16(), "forward-auth check");
    }
    res
}

fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

// Header names, parsed once: a lookup by `&str` parses and validates the name every time.
const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const REMOTE_USER: HeaderName = HeaderName::from_static("remote-user");
const REMOTE_GROUPS: HeaderName = HeaderName::from_static("remote-groups");
const REMOTE_EMAIL: HeaderName = HeaderName::from_static("remote-email");
const REMOTE_NAME: HeaderName = HeaderName::from_static("remote-name");

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Reads the target from the proxy's headers; `None` if missing or malformed.
fn original(headers: &HeaderMap, flavor: Flavor) -> Option<Original<'_>> {
    let (scheme, authority, uri, method) = match flavor {
        Flavor::AuthRequest => {
            let url = header_str(headers, &X_ORIGINAL_URL)?;
            let (scheme, rest) = url.split_once("://")?;
            let split = rest.find('/').unwrap_or(rest.len());
            let (authority, uri) = rest.split_at(split);
            let uri = if uri.is_empty() { "/" } else { uri };
            let method = header_str(headers, &X_ORIGINAL_METHOD).unwrap_or("GET");
            (scheme, authority, uri, method)
        }
        Flavor::ForwardAuth => (
            header_str(headers, &X_FORWARDED_PROTO).unwrap_or("https"),
            header_str(headers, &X_FORWARDED_HOST)?,
            header_str(headers, &X_FORWARDED_URI).unwrap_or("/"),
            header_str(headers, &X_FORWARDED_METHOD).unwrap_or("GET"),
        ),
    };
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    if authority.is_empty()
        || authority.contains(['@', '/', '\\', ' '])
        || !uri.starts_with('/')
        || uri.chars().any(|c| c.is_control() || c.is_whitespace())
        || !method.chars().all(|c| c.is_ascii_alphabetic())
    {
        return None;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    let path = normalized_path(uri).ok()?;
    Some(Original {
        scheme,
        authority,
        uri,
        host,
        path,
        method,
    })
}

async fn check(app: &App, peer: Option<IpAddr>, headers: &HeaderMap, flavor: Flavor) -> Response {
    let trusted = &app.config.server.trusted_proxies;
    if !peer.is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip))) {
        tracing::warn!(
            peer = ?peer,
            "forward-auth request from a peer outside server.trusted_proxies: refused"
        );
        return forbidden("this proxy is not in server.trusted_proxies");
    }
    let Some(target) = original(headers, flavor) else {
        return forbidden("the proxy sent no readable target (see docs/gateway.md)");
    };
    let ip = client_ip(peer, headers, trusted);
    let session = match get_cookie(headers, &app.session_cookie_name) {
        Some(cookie) => match app.authenticate_cached(cookie).await {
            Ok(s) => s.filter(|s| s.stage == SessionStage::Full),
            Err(e) => {
                tracing::error!(error = %e, "forward-auth: cannot read the session");
                return (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response();
            }
        },
        None => None,
    };
    let t = Target {
        host: target.host,
        path: &target.path,
        method: target.method,
        ip,
    };
    let identity = session.as_ref().map(|s| Identity {
        login: &s.login,
        groups: &s.groups,
    });
    let decision = app.config.gateway.compiled.decide(&t, identity.as_ref());
    let policy = match decision {
        Decision::Apply { policy, .. } => policy,
        // Only reached without a session: a rule for some users. A program that presents a
        // key is identified by it; a browser logs in first.
        Decision::NeedsIdentity { .. } => match credential(headers) {
            Credential::Key(_) | Credential::Malformed => {
                return api_key_check(app, headers, &t).await
            }
            Credential::None => Policy::OneFactor,
        },
    };
    match policy {
        Policy::Bypass => StatusCode::OK.into_response(),
        Policy::Deny => forbidden("denied by the access rules"),
        Policy::ApiKey => api_key_check(app, headers, &t).await,
        Policy::OneFactor | Policy::TwoFactor => match session {
            None => login_redirect(app, &target, flavor),
            Some(s) => {
                if s.change_required.is_some() {
                    return portal_redirect(app, "/password/change", flavor);
                }
                if s.standing == Standing::EnrolmentRequired {
                    return portal_redirect(app, "/account/security", flavor);
                }
                if policy == Policy::TwoFactor && !s.two_factor {
                    let next = safe_return_url(&target.url(), &app.config.gateway.origins)
                        .map(|u| format!("&next={}", url_encode(&u)))
                        .unwrap_or_default();
                    return portal_redirect(
                        app,
                        &format!("/account/security?prompt=required{next}"),
                        flavor,
                    );
                }
                allowed(&s)
            }
        },
    }
}

/// Longest `Authorization` header read; a key in Basic form needs about 80 bytes.
const MAX_AUTHORIZATION: usize = 1024;

/// What the request's `Authorization` header offers.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Credential {
    /// No header, or a credential that is not meant as an API key (another scheme, another
    /// kind of token): the request is not asking as an API key holder.
    None,
    /// Something with the key prefix, as a Bearer token or a Basic password; not yet checked.
    Key(String),
    /// A header that cannot be read (several, not text, too long, bad Basic encoding).
    Malformed,
}

/// Reads `Authorization: Bearer bwk_…` or `Authorization: Basic base64(any:bwk_…)`.
pub(super) fn credential(headers: &HeaderMap) -> Credential {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Credential::None;
    };
    if values.next().is_some() || value.len() > MAX_AUTHORIZATION {
        return Credential::Malformed;
    }
    let Ok(value) = value.to_str() else {
        return Credential::Malformed;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let rest = rest.trim();
    let presented = if scheme.eq_ignore_ascii_case("bearer") {
        rest.to_string()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((_user, password)) => password.to_string(),
            None => return Credential::Malformed,
        }
    } else {
        return Credential::None;
    };
    if api_key::looks_like_key(&presented) {
        Credential::Key(presented)
    } else {
        Credential::None
    }
}

/// An `api_key` rule (or a subject rule met by a program): the key must be valid for the
/// gateway, and the rules, decided again with its owner, must still ask for a key.
async fn api_key_check(app: &App, headers: &HeaderMap, t: &Target<'_>) -> Response {
    let presented = match credential(headers) {
        Credential::Key(k) => k,
        Credential::None => return unauthorized_api(),
        Credential::Malformed => {
            tracing::info!("forward-auth: unreadable Authorization header");
            return unauthorized_api();
        }
    };
    let key = match app
        .authenticate_api_key_cached(&presented, Scope::Gateway)
        .await
    {
        Ok(KeyCheck::Valid(k)) => k,
        Ok(KeyCheck::Refused(why)) => {
            tracing::info!(reason = why.as_str(), "forward-auth: API key refused");
            return unauthorized_api();
        }
        Err(e) => {
            tracing::error!(error = %e, "forward-auth: cannot check the API key");
            return (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response();
        }
    };
    let owner = Identity {
        login: &key.user.login,
        groups: &key.user.groups,
    };
    match app.config.gateway.compiled.decide(t, Some(&owner)) {
        Decision::Apply {
            policy: Policy::ApiKey,
            ..
        } => {
            let u = &key.user;
            identity_response(&u.login, &u.groups, u.email.as_deref(), &u.display_name)
        }
        Decision::Apply {
            policy: Policy::Bypass,
            ..
        } => StatusCode::OK.into_response(),
        Decision::Apply {
            policy: Policy::Deny,
            ..
        } => forbidden("denied by the access rules"),
        // A browser rule for this owner: a key is not a session.
        _ => unauthorized_api(),
    }
}

/// 200 with the identity headers of a session.
fn allowed(s: &CheckedSession) -> Response {
    identity_response(&s.login, &s.groups, s.email.as_deref(), &s.display_name)
}

/// 200 with `Remote-User`, `Remote-Groups`, `Remote-Email` and `Remote-Name`. A value a
/// header cannot carry is left out (values come from validated records).
///
/// Built at every check rather than kept with the cached session: keeping them cost about
/// 400 bytes per active session (bench_memory) for no measurable speed.
fn identity_response(login: &str, groups: &[String], email: Option<&str>, name: &str) -> Response {
    // Room for these four, `finish`'s and the server's (length, date): no growing.
    let mut h = HeaderMap::with_capacity(8);
    // The four values side by side in one buffer, each header a slice of it: one allocation
    // (and one for the buffer's shared count) instead of one per value and the groups' join.
    let email = email.unwrap_or("");
    let mut text = Vec::with_capacity(
        login.len() + email.len() + name.len() + groups.iter().map(|g| g.len() + 1).sum::<usize>(),
    );
    let end = |text: &mut Vec<u8>, value: &str| {
        text.extend_from_slice(value.as_bytes());
        text.len()
    };
    let user_end = end(&mut text, login);
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        text.extend_from_slice(g.as_bytes());
    }
    let groups_end = text.len();
    let email_end = end(&mut text, email);
    let name_end = end(&mut text, name);
    let text = axum::body::Bytes::from(text);
    let values = [
        (REMOTE_USER, 0..user_end),
        (REMOTE_GROUPS, user_end..groups_end),
        (REMOTE_EMAIL, groups_end..email_end),
        (REMOTE_NAME, email_end..name_end),
    ];
    for (name, range) in values {
        if let Ok(v) = HeaderValue::from_maybe_shared(text.slice(range)) {
            h.insert(name, v);
        }
    }
    let mut res = Response::new(axum::body::Body::empty());
    *res.headers_mut() = h;
    res
}

fn forbidden(why: &'static str) -> Response {
    (StatusCode::FORBIDDEN, format!("forbidden: {why}\n")).into_response()
}

/// For programs: no redirect, a challenge for an API key.
fn unauthorized_api() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"bulwark\""),
        )],
        "an API key is required\n",
    )
        .into_response()
}

/// Sends a browser to the portal's login, returning to the original URL afterwards when it
/// belongs to a protected application.
fn login_redirect(app: &App, target: &Original, flavor: Flavor) -> Response {
    let path = match safe_return_url(&target.url(), &app.config.gateway.origins) {
        Some(url) => format!("/login?next={}", url_encode(&url)),
        None => "/login".to_string(),
    };
    portal_redirect(app, &path, flavor)
}

fn portal_redirect(app: &App, path: &str, flavor: Flavor) -> Response {
    let location = app.url(path);
    let status = match flavor {
        Flavor::AuthRequest => StatusCode::UNAUTHORIZED,
        Flavor::ForwardAuth => StatusCode::FOUND,
    };
    match HeaderValue::from_str(&location) {
        Ok(v) => (status, [(header::LOCATION, v)], "log in first\n").into_response(),
        Err(_) => forbidden("cannot build the portal URL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn identity_headers_carry_each_value_and_leave_out_what_a_header_cannot() {
        let value = |res: &Response, name: &str| {
            res.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let groups = vec!["admins".to_string(), "internal".to_string()];
        let res = identity_response("alice", &groups, Some("a@example.com"), "Zoë Martin");
        assert_eq!(value(&res, "remote-user").as_deref(), Some("alice"));
        assert_eq!(
            value(&res, "remote-groups").as_deref(),
            Some("admins,internal")
        );
        assert_eq!(
            value(&res, "remote-email").as_deref(),
            Some("a@example.com")
        );
        assert_eq!(value(&res, "remote-name").as_deref(), Some("Zoë Martin"));

        // No groups, no e-mail: empty values. A name a header cannot carry is left out, and
        // only it.
        let res = identity_response("bob", &[], None, "Bob\nInjected: yes");
        assert_eq!(value(&res, "remote-user").as_deref(), Some("bob"));
        assert_eq!(value(&res, "remote-groups").as_deref(), Some(""));
        assert_eq!(value(&res, "remote-email").as_deref(), Some(""));
        assert_eq!(value(&res, "remote-name"), None);
        assert!(res.headers().get("injected").is_none());
    }

    #[test]
    fn targets_are_read_from_either_convention() {
        let nginx = headers(&[
            (
                "x-original-url",
                "https://Odoo.Example.com:8443/web/../jsonrpc?x=1",
            ),
            ("x-original-method", "post"),
        ]);
        let o = original(&nginx, Flavor::AuthRequest).unwrap();
        // Kept as sent; rules compare hosts and methods without case.
        assert_eq!(o.host, "Odoo.Example.com");
        assert_eq!(o.path, "/jsonrpc");
        assert_eq!(o.method, "post");
        assert_eq!(o.url(), "https://odoo.example.com:8443/web/../jsonrpc?x=1");
        let caddy = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "odoo.example.com"),
            ("x-forwarded-uri", "/web/static/x.css"),
            ("x-forwarded-method", "GET"),
        ]);
        let o = original(&caddy, Flavor::ForwardAuth).unwrap();
        assert_eq!(
            (o.host, o.path.as_ref()),
            ("odoo.example.com", "/web/static/x.css")
        );
    }

    fn auth(value: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).unwrap(),
        );
        h
    }

    #[test]
    fn credentials_are_read_from_bearer_and_basic() {
        let key = "bwk_0123456789abcdefghjkmnpqrstvwxyz01234567";
        let want = Credential::Key(key.into());
        assert_eq!(credential(&auth(format!("Bearer {key}").as_bytes())), want);
        assert_eq!(
            credential(&auth(format!("bearer   {key} ").as_bytes())),
            want
        );
        let basic = |s: &str| format!("Basic {}", STANDARD.encode(s));
        assert_eq!(
            credential(&auth(basic(&format!("alice:{key}")).as_bytes())),
            want
        );
        assert_eq!(
            credential(&auth(basic(&format!(":{key}")).as_bytes())),
            want
        );
        assert_eq!(
            credential(&auth(basic("x:bwk_short").as_bytes())),
            Credential::Key("bwk_short".into()),
            "checked later, refused there"
        );
        // Credentials that are not API keys leave the request a browser's.
        assert_eq!(credential(&HeaderMap::new()), Credential::None);
        assert_eq!(credential(&auth(b"Bearer eyJhbGciOi")), Credential::None);
        assert_eq!(
            credential(&auth(basic("alice:hunter2").as_bytes())),
            Credential::None
        );
        assert_eq!(credential(&auth(b"Digest username=x")), Credential::None);
        assert_eq!(credential(&auth(b"Bearer")), Credential::None);
        for bad in [
            &b"Basic !!!"[..],
            b"Basic",
            b"Basic YWxpY2U=",
            b"Basic /w==",
            b"Bearer \xff\xfe",
        ] {
            assert_eq!(credential(&auth(bad)), Credential::Malformed, "{bad:?}");
        }
        let long = format!("Bearer bwk_{}", "a".repeat(2000));
        assert_eq!(credential(&auth(long.as_bytes())), Credential::Malformed);
        let mut two = auth(format!("Bearer {key}").as_bytes());
        two.append(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        assert_eq!(credential(&two), Credential::Malformed);
    }

    #[test]
    fn unreadable_targets_are_none() {
        for h in [
            headers(&[]),
            headers(&[("x-original-url", "odoo.example.com/web")]),
            headers(&[("x-original-url", "ftp://odoo.example.com/web")]),
            headers(&[("x-original-url", "https://user@odoo.example.com/web")]),
            headers(&[("x-original-url", "https:///web")]),
            headers(&[("x-original-url", "https://odoo.example.com/web%00")]),
            headers(&[("x-original-url", "https://odoo.example.com/a\\b")]),
            headers(&[
                ("x-original-url", "https://odoo.example.com/web"),
                ("x-original-method", "G-ET"),
            ]),
        ] {
            assert!(original(&h, Flavor::AuthRequest).is_none(), "{h:?}");
        }
        assert!(original(
            &headers(&[("x-forwarded-uri", "/web")]),
            Flavor::ForwardAuth
        )
        .is_none());
    }
}
