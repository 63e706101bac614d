//! The HTTP layer: routes, extractors (client, session, CSRF), security headers.
//! Handlers translate; services decide.

mod admin;
mod admin_policy;
mod api;
mod api_keys;
mod error;
mod extract;
mod gateway;
mod metrics;
mod pages;
mod security;

pub use api::{openapi, ENDPOINTS};
pub use error::PageError;
pub use extract::{client_ip, session_cookie_name_for, Client, CsrfCookie};

use crate::app::App;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::time::Instant;
use tracing::Instrument;

/// Bulwark's web service, ready to serve: the full router with every middleware, with the
/// gateway's two check endpoints answered before it.
pub fn router(app: App) -> Web {
    Web {
        router: routes(app.clone()),
        app,
    }
}

/// What [`router`] returns: the router, and the forward-auth checks taken before it.
///
/// A check runs for every request to every protected application. Through the router it
/// also paid for the path lookup and for the extensions recorded for every matched route
/// (its parameters and its path, in a map allocated per request): about a tenth of a check's
/// time in process. A `GET` of `/api/authz/auth-request` or `/api/authz/forward-auth` is
/// answered directly; any other method on those paths goes to the router, which has the same
/// routes (`HEAD` answered like `GET`, 405 for the rest).
#[derive(Clone)]
pub struct Web {
    app: App,
    router: Router,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web").finish_non_exhaustive()
    }
}

impl Web {
    /// For `axum::serve`, with the peer's address in each request (`ConnectInfo`).
    pub fn into_make_service_with_connect_info<C>(
        self,
    ) -> axum::extract::connect_info::IntoMakeServiceWithConnectInfo<Self, C> {
        axum::ServiceExt::<Request>::into_make_service_with_connect_info(self)
    }
}

impl tower::Service<Request> for Web {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        futures_util::future::BoxFuture<'static, Result<Response, std::convert::Infallible>>,
        <Router as tower::Service<Request>>::Future,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::<Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use futures_util::future::Either;
        if req.method() == axum::http::Method::GET {
            if let Some(flavor) = gateway::Flavor::of_path(req.uri().path()) {
                let app = self.app.clone();
                return Either::Left(Box::pin(async move {
                    Ok(gateway::answer(&app, req, flavor).await)
                }));
            }
        }
        Either::Right(self.router.call(req))
    }
}

/// Every route with every middleware.
fn routes(app: App) -> Router {
    let limit = app.config.server.max_body_bytes;
    let csp = content_security_policy(&app);
    Router::new()
        .route("/", get(pages::root_get))
        .route("/healthz", get(healthz))
        .route("/static/bulwark.css", get(stylesheet))
        .route("/login", get(pages::login_get).post(pages::login_post))
        .route("/logout", post(pages::logout_post))
        .route("/account", get(pages::account_get))
        .route("/admin", get(admin::admin_root_get))
        .route("/admin/users", get(admin::users_get))
        .route(
            "/admin/users/new",
            get(admin::user_new_get).post(admin::user_new_post),
        )
        .route("/admin/users/{login}", get(admin::user_get))
        .route("/admin/users/{login}/action", post(admin::user_action_post))
        .route(
            "/admin/policy",
            get(admin_policy::policy_get).post(admin_policy::policy_post),
        )
        .route("/admin/audit", get(admin::audit_get))
        .route("/admin/audit.jsonl", get(admin::audit_export_get))
        .route("/admin/compliance", get(admin::compliance_get))
        .route(
            "/admin/compliance/invite",
            post(admin::compliance_invite_post),
        )
        .route("/admin/compliance.csv", get(admin::compliance_csv_get))
        .route("/admin/compliance.json", get(admin::compliance_json_get))
        .route("/account/sessions/revoke", post(pages::session_revoke_post))
        .route(
            "/account/sessions/revoke-all",
            post(pages::sessions_revoke_all_post),
        )
        .route(
            "/password/change",
            get(pages::password_change_get).post(pages::password_change_post),
        )
        .route(
            "/password/forgot",
            get(pages::password_forgot_get).post(pages::password_forgot_post),
        )
        .route("/password/reset/{token}", get(pages::reset_link_get))
        .route("/invite/{token}", get(pages::invitation_link_get))
        .route(
            "/not-me/{token}",
            get(pages::not_me_get).post(pages::not_me_post),
        )
        .route("/setup/{token}", get(pages::setup_link_get))
        .route(
            "/password/set",
            get(pages::password_set_get).post(pages::password_set_post),
        )
        .route(
            "/login/2fa",
            get(security::login_2fa_get).post(security::login_2fa_post),
        )
        .route("/login/2fa/email", post(security::login_2fa_email_post))
        .route("/account/security", get(security::security_get))
        .route("/account/security/enrol", post(security::enrol_post))
        .route("/account/security/confirm", post(security::confirm_post))
        .route(
            "/account/security/recovery-codes",
            post(security::recovery_codes_post),
        )
        .route("/account/security/disable", post(security::disable_post))
        .route(
            "/account/security/devices/revoke",
            post(security::device_revoke_post),
        )
        .route(
            "/account/security/devices/revoke-all",
            post(security::devices_revoke_all_post),
        )
        .nest("/api/v1", api::routes())
        .route(
            "/account/api-keys",
            get(api_keys::api_keys_get).post(api_keys::api_keys_post),
        )
        .route(
            "/account/api-keys/revoke",
            post(api_keys::api_key_revoke_post),
        )
        .fallback(pages::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            extract::csrf_cookie_layer,
        ))
        .layer(middleware::from_fn_with_state(
            (app.clone(), csp),
            security_headers,
        ))
        .layer(middleware::from_fn(request_log))
        .merge(gateway_routes())
        .with_state(app)
}

/// The forward-auth endpoints, asked about every request to every protected application:
/// no CSRF cookie (no browser reads these answers as pages), no middleware at all. The
/// handlers log and set their few headers themselves (see `gateway::finish`).
fn gateway_routes() -> Router<App> {
    Router::new()
        .route(gateway::AUTH_REQUEST_PATH, get(gateway::auth_request))
        .route(gateway::FORWARD_AUTH_PATH, get(gateway::forward_auth))
        // Read by Prometheus, not browsers: no CSRF cookie either.
        .route("/metrics", get(metrics::metrics_get))
}

async fn healthz(State(app): State<App>) -> Response {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
    }
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/bulwark.css"),
    )
        .into_response()
}

/// The pages' Content-Security-Policy: no script at all. `form-action` covers the redirects
/// that follow a form, so it also lists the protected applications: the login and the second
/// step send the browser back to them.
fn content_security_policy(app: &App) -> HeaderValue {
    let mut form_action = String::from("'self'");
    for source in app
        .config
        .gateway
        .origins
        .iter()
        .filter_map(|o| o.csp_source())
    {
        form_action.push(' ');
        form_action.push_str(&source);
    }
    let csp = format!("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'");
    HeaderValue::from_str(&csp).unwrap_or_else(|_| {
        // Origins are validated host names, ports and schemes; this cannot happen.
        HeaderValue::from_static("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    })
}

/// Headers every response carries: no framing, no sniffing, no referrer (links can carry
/// tokens), a CSP without inline script, HSTS when served over HTTPS.
async fn security_headers(
    State((app, csp)): State<(App, HeaderValue)>,
    req: Request,
    next: Next,
) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if app.config.server.https {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    res
}

/// One log line per request, inside a span carrying a request id. The query string is never
/// logged (it could hold a token); neither are bodies or cookies.
async fn request_log(req: Request, next: Next) -> Response {
    let id = request_id();
    let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %log_path(req.uri().path()));
    let started = Instant::now();
    async move {
        let mut res = next.run(req).await;
        let status = res.status();
        let ms = started.elapsed().as_millis();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), ms, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), ms, "request");
        }
        if let Ok(v) = HeaderValue::from_str(&id) {
            res.headers_mut().insert("x-request-id", v);
        }
        res
    }
    .instrument(span)
    .await
}

/// Paths that embed a token are logged with the token replaced.
fn log_path(path: &str) -> String {
    for prefix in ["/password/reset/", "/invite/", "/setup/"] {
        if path.starts_with(prefix) {
            return format!("{prefix}<token>");
        }
    }
    path.chars().take(200).collect()
}

fn request_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    bulwark_core::hex(&b)
}
