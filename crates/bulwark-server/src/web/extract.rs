//! Extractors: the client (IP through trusted proxies), the session, and the CSRF cookie.

use super::error::PageError;
use crate::app::App;
use crate::config::Config;
use crate::services::auth::CurrentSession;
use crate::services::ClientInfo;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use bulwark_core::enforcement::Standing;
use bulwark_core::token;
use bulwark_store::SessionStage;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The cookie that may be shared with the protected applications' hosts.
const SHARED_COOKIE: &str = "bulwark_session";

/// The domain a cookie is set for: only the session cookie, only with `gateway.cookie_domain`.
fn cookie_domain<'a>(config: &'a Config, base: &str) -> Option<&'a str> {
    (base == SHARED_COOKIE)
        .then_some(config.gateway.cookie_domain.as_deref())
        .flatten()
}

/// Name of a cookie: `__Host-` prefixed when cookies are Secure, so no subdomain can set it;
/// `__Secure-` for a session cookie shared with a parent domain (`__Host-` forbids a domain).
pub fn cookie_name(app: &App, base: &str) -> String {
    cookie_name_for(&app.config, base)
}

fn cookie_name_for(config: &Config, base: &str) -> String {
    match (config.server.secure_cookies, cookie_domain(config, base)) {
        (true, None) => format!("__Host-{base}"),
        (true, Some(_)) => format!("__Secure-{base}"),
        (false, _) => base.to_string(),
    }
}

/// The session cookie's name under a configuration (kept in `App`, read on every check).
pub fn session_cookie_name_for(config: &Config) -> String {
    cookie_name_for(config, SHARED_COOKIE)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, Secure when configured.
/// `max_age` of `Some(0)` deletes the cookie; `None` makes it last for the browser session.
pub fn set_cookie(app: &App, base: &str, value: &str, max_age: Option<i64>) -> HeaderValue {
    let mut c = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Lax",
        cookie_name(app, base),
        value
    );
    if app.config.server.secure_cookies {
        c.push_str("; Secure");
    }
    if let Some(domain) = cookie_domain(&app.config, base) {
        c.push_str(&format!("; Domain={domain}"));
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    // Values are base64url tokens and fixed names, always valid header text.
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// The value of a cookie in the request, if present (first occurrence wins).
pub fn get_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Parsed once: a lookup by `&str` parses and validates the name every time.
const X_FORWARDED_FOR: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-forwarded-for");

/// The client's IP: the TCP peer, or — only when the peer is a trusted proxy — the nearest
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
///
/// The header is read right to left, the order proxies append in, and only as far as needed:
/// entries left of the client's address are the client's own claims and are never read. An
/// entry that is not an address, met before the client's, makes the address unknown (`None`)
/// rather than falling back to the proxy's own address, which a `networks` rule might cover.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    // Right to left over every X-Forwarded-For value, without collecting them: the first
    // address that is not a trusted proxy is the client. A value that is not text voids the
    // whole header.
    let values = headers.get_all(&X_FORWARDED_FOR);
    if values.iter().any(|v| v.to_str().is_err()) {
        return None;
    }
    let mut nearest = peer;
    for value in values.iter().rev() {
        let text = value.to_str().ok()?;
        for entry in text.rsplit(',') {
            let entry = entry.trim();
            let ip = entry
                .parse::<IpAddr>()
                .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
                .ok()?;
            if !is_trusted(&ip) {
                return Some(ip);
            }
            nearest = ip;
        }
    }
    Some(nearest)
}

/// The requesting client.
#[derive(Debug, Clone)]
pub struct Client(pub ClientInfo);

impl FromRequestParts<App> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let ip = client_ip(peer, &parts.headers, &app.config.server.trusted_proxies);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Self(ClientInfo { ip, user_agent }))
    }
}

/// The browser's CSRF cookie, set by [`csrf_cookie_layer`] on first contact.
#[derive(Debug, Clone)]
pub struct CsrfCookie {
    value: String,
    /// True when the request carried no cookie: any form it posts is refused.
    fresh: bool,
}

impl CsrfCookie {
    /// The token to embed in forms.
    pub fn form_token(&self, app: &App) -> String {
        token::csrf_token(&app.csrf_key(), &self.value)
    }

    /// Checks a submitted form token.
    pub fn verify(&self, app: &App, submitted: &str) -> Result<(), PageError> {
        if !self.fresh && token::csrf_matches(&app.csrf_key(), &self.value, submitted) {
            Ok(())
        } else {
            Err(PageError::Csrf)
        }
    }
}

impl FromRequestParts<App> for CsrfCookie {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _app: &App) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CsrfCookie>()
            .cloned()
            .ok_or(PageError::Internal)
    }
}

/// Gives every browser a random CSRF cookie (reusing the one it has).
pub async fn csrf_cookie_layer(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let name = cookie_name(&app, "bulwark_csrf");
    let existing = get_cookie(req.headers(), &name)
        .filter(|v| token::looks_like_token(v))
        .map(str::to_string);
    let cookie = match existing {
        Some(value) => CsrfCookie {
            value,
            fresh: false,
        },
        None => CsrfCookie {
            value: token::generate().0.expose().to_string(),
            fresh: true,
        },
    };
    let set = cookie
        .fresh
        .then(|| set_cookie(&app, "bulwark_csrf", &cookie.value, None));
    req.extensions_mut().insert(cookie);
    let mut res = next.run(req).await;
    if let Some(v) = set {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// The signed-in session, if any.
#[derive(Debug, Clone)]
pub struct MaybeSession(pub Option<CurrentSession>);

impl FromRequestParts<App> for MaybeSession {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        match get_cookie(&parts.headers, &app.session_cookie_name) {
            Some(value) => Ok(Self(app.authenticate(value).await?)),
            None => Ok(Self(None)),
        }
    }
}

/// A signed-in session that may use the whole site: anonymous visitors are sent to the login
/// page, users who must change their password to the change page.
#[derive(Debug, Clone)]
pub struct SignedIn(pub CurrentSession);

/// A signed-in session, even one that must change its password first (the change page
/// itself). A session whose enrolment is overdue and needs no password change is sent to the
/// enrolment page: after the grace period nothing else is reachable.
#[derive(Debug, Clone)]
pub struct SignedInAnyState(pub CurrentSession);

/// A fully logged-in session: anonymous visitors go to the login page, half-logged-in ones
/// to the second step.
async fn signed_in(parts: &mut Parts, app: &App) -> Result<CurrentSession, PageError> {
    match MaybeSession::from_request_parts(parts, app).await?.0 {
        Some(s) if s.session.stage == SessionStage::Full => Ok(s),
        Some(_) => Err(PageError::Redirect("/login/2fa".into())),
        None => {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/account");
            let next = if parts.method == axum::http::Method::GET {
                super::pages::safe_local_next(next)
            } else {
                None
            };
            Err(PageError::Redirect(match next {
                Some(n) => format!("/login?next={}", super::pages::url_encode(&n)),
                None => "/login".into(),
            }))
        }
    }
}

impl FromRequestParts<App> for SignedIn {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let s = signed_in(parts, app).await?;
        if s.change_required.is_some() {
            return Err(PageError::Redirect("/password/change".into()));
        }
        if s.standing == Standing::EnrolmentRequired {
            return Err(PageError::Redirect("/account/security".into()));
        }
        Ok(Self(s))
    }
}

impl FromRequestParts<App> for SignedInAnyState {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let s = signed_in(parts, app).await?;
        if s.change_required.is_none() && s.standing == Standing::EnrolmentRequired {
            return Err(PageError::Redirect("/account/security".into()));
        }
        Ok(Self(s))
    }
}

/// A full session that may reach the security (enrolment) pages even when enrolment is
/// overdue; a forced password change still comes first.
#[derive(Debug, Clone)]
pub struct EnrolmentAllowed(pub CurrentSession);

impl FromRequestParts<App> for EnrolmentAllowed {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let s = signed_in(parts, app).await?;
        if s.change_required.is_some() {
            return Err(PageError::Redirect("/password/change".into()));
        }
        Ok(Self(s))
    }
}

/// A half-logged-in session waiting for its second factor.
#[derive(Debug, Clone)]
pub struct HalfSignedIn(pub CurrentSession);

impl FromRequestParts<App> for HalfSignedIn {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        match MaybeSession::from_request_parts(parts, app).await?.0 {
            Some(s) if s.session.stage == SessionStage::SecondFactor => Ok(Self(s)),
            Some(_) => Err(PageError::Redirect("/account".into())),
            None => Err(PageError::Redirect("/login".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        h
    }

    #[test]
    fn forwarded_for_lines_are_read_as_one_list_right_to_left() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 198.51.100.7"),
        );
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("10.0.0.9, 10.0.0.5"),
        );
        assert_eq!(
            client_ip(Some(peer), &h, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        // A line that is not text makes the whole header unreadable.
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.1\xff").unwrap(),
        );
        assert_eq!(client_ip(Some(peer), &h, &trusted), None);
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip(Some(peer), &headers("198.51.100.1"), &trusted),
            Some(peer)
        );
    }

    #[test]
    fn forwarded_for_is_read_right_to_left_from_trusted_proxies() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        // The client may forge the leftmost entries; the proxy appends the real one.
        let ip = client_ip(
            Some(peer),
            &headers("1.1.1.1, 198.51.100.7, 10.0.0.5"),
            &trusted,
        );
        assert_eq!(ip, Some("198.51.100.7".parse().unwrap()));
        assert_eq!(
            client_ip(Some(peer), &HeaderMap::new(), &trusted),
            Some(peer)
        );
        // Junk the client put in front of its own address is never read, so it cannot make
        // the client look like the proxy (whose network a rule might trust).
        assert_eq!(
            client_ip(Some(peer), &headers("junk, 203.0.113.9"), &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(peer), &headers("not-an-ip, 10.0.0.5"), &trusted),
            None,
            "junk where the client's address should be: unknown, not the proxy"
        );
        assert_eq!(client_ip(Some(peer), &headers("garbage"), &trusted), None);
        assert_eq!(
            client_ip(Some(peer), &headers("203.0.113.9, "), &trusted),
            None
        );
        // Addresses with ports, and only proxies: the first hop.
        assert_eq!(
            client_ip(
                Some(peer),
                &headers("203.0.113.9:5555, [2001:db8::1]:443"),
                &trusted
            ),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(peer), &headers("10.0.0.7, 10.0.0.5"), &trusted),
            Some("10.0.0.7".parse().unwrap())
        );
    }

    #[test]
    fn cookie_lookup_finds_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("xbulwark_session=a; bulwark_session=b"),
        );
        assert_eq!(get_cookie(&h, "bulwark_session"), Some("b"));
        assert_eq!(get_cookie(&h, "other"), None);
    }
}
