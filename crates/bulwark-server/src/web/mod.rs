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
    let unfinished = Unfinished::default();
    Web {
        router: routes(app.clone(), unfinished.clone()),
        app,
        unfinished,
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
    unfinished: Unfinished,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web").finish_non_exhaustive()
    }
}

impl Web {
    /// The requests still running to their end (see [`Unfinished`]), to wait for at exit.
    pub fn unfinished(&self) -> Unfinished {
        self.unfinished.clone()
    }

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
fn routes(app: App, unfinished: Unfinished) -> Router {
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
        .layer(middleware::from_fn_with_state(unfinished, run_to_the_end))
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

/// A request that may change something runs to its end even if its client goes away.
///
/// When a connection closes, the server drops the request's future wherever it waits: an
/// action of several statements would stop between two of them, with nothing audited and
/// no mail sent. A "this wasn't me" link would be used up with the password removed but the
/// sessions and API keys kept; an account disabled with its keys still valid. So every
/// request but a `GET`, `HEAD` or `OPTIONS` runs as a task of its own that the closing
/// connection does not stop; those three only read, and a long read (an export) should stop
/// when nobody is there to receive it. A log line is written for the request either way.
///
/// Such a request no longer ends with its connection, so open connections no longer bound
/// how many run: [`Unfinished`] does, answering 503 with `Retry-After` beyond
/// [`MAX_UNFINISHED`].
async fn run_to_the_end(
    State(unfinished): State<Unfinished>,
    req: Request,
    next: Next,
) -> Response {
    use axum::http::Method;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    // For the two messages below; the path is shortened (and its tokens hidden) only then.
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let Ok(running) = unfinished.permits.clone().try_acquire_owned() else {
        tracing::warn!(
            %method,
            path = %log_path(uri.path()),
            "too many requests running at once: answered 503"
        );
        let busy = crate::services::ServiceError::Busy { retry_after: 1 };
        return if uri.path().starts_with("/api/") {
            api::ApiError::from(busy).into_response()
        } else {
            PageError::from(busy).into_response()
        };
    };
    let task = async move {
        let response = next.run(req).await;
        drop(running);
        response
    };
    match tokio::spawn(task).await {
        Ok(response) => response,
        Err(e) => {
            let path = log_path(uri.path());
            tracing::error!(%method, %path, error = %e, "request failed: its task stopped");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// How many requests [`run_to_the_end`] runs at once. Far above what a node answers in the
/// time its clients wait (a login takes a hashing thread for tens of milliseconds; at most
/// `passwords.max_queued_hashes` wait for one), it bounds the tasks of clients that send and go.
pub const MAX_UNFINISHED: u32 = 4096;

/// The requests that run to their end whatever their clients do ([`run_to_the_end`]): each
/// holds a permit while it runs; a server stopping takes every permit before it exits, so
/// that an action whose client went away is not cut short by the exit either.
#[derive(Clone)]
pub struct Unfinished {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    limit: u32,
}

impl Default for Unfinished {
    fn default() -> Self {
        Self::new(MAX_UNFINISHED)
    }
}

impl Unfinished {
    fn new(limit: u32) -> Self {
        Self {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(limit as usize)),
            limit,
        }
    }

    /// Waits until every request that must run to its end has ended, at most `limit`;
    /// `false` if some had not by then.
    pub async fn wait(&self, limit: std::time::Duration) -> bool {
        tokio::time::timeout(limit, self.permits.acquire_many(self.limit))
            .await
            .is_ok_and(|all| all.is_ok())
    }
}

/// The paths whose last part is a mailed link's token: whoever reads one in a log could
/// use the link (a "this wasn't me" link removes the password and hands out a reset link).
const LINK_PATHS: [&str; 4] = ["/password/reset/", "/invite/", "/not-me/", "/setup/"];

/// Paths that embed a token are logged with the token replaced.
fn log_path(path: &str) -> String {
    for prefix in LINK_PATHS {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    /// An action in two steps: `started` after the first, then it waits for `go`; `done`
    /// once the second is taken.
    struct TwoSteps {
        started: Arc<Notify>,
        go: Arc<Notify>,
        done: Arc<AtomicBool>,
    }

    fn two_steps(unfinished: Unfinished) -> (Router, TwoSteps) {
        two_steps_at("/action", unfinished)
    }

    fn two_steps_at(path: &str, unfinished: Unfinished) -> (Router, TwoSteps) {
        let steps = TwoSteps {
            started: Arc::new(Notify::new()),
            go: Arc::new(Notify::new()),
            done: Arc::new(AtomicBool::new(false)),
        };
        let (started, go, done) = (steps.started.clone(), steps.go.clone(), steps.done.clone());
        let action = move || async move {
            started.notify_one();
            go.notified().await;
            done.store(true, Ordering::SeqCst);
            StatusCode::NO_CONTENT
        };
        let router = Router::new()
            .route(path, get(action.clone()).post(action))
            .layer(middleware::from_fn_with_state(unfinished, run_to_the_end));
        (router, steps)
    }

    fn request(method: &str) -> Request {
        request_to(method, "/action")
    }

    fn request_to(method: &str, path: &str) -> Request {
        Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_post_whose_caller_goes_away_runs_to_its_end_and_the_exit_waits_for_it() {
        let unfinished = Unfinished::default();
        let (router, steps) = two_steps(unfinished.clone());
        let call = tokio::spawn(router.oneshot(request("POST")));
        steps.started.notified().await;
        // The connection closes: the server drops the request's future.
        call.abort();
        assert!(
            !unfinished.wait(Duration::from_millis(50)).await,
            "the action is still running"
        );
        steps.go.notify_one();
        assert!(unfinished.wait(Duration::from_secs(10)).await);
        assert!(
            steps.done.load(Ordering::SeqCst),
            "the second step was taken"
        );
    }

    #[tokio::test]
    async fn beyond_the_limit_a_post_is_answered_busy_and_a_get_still_runs() {
        let unfinished = Unfinished::new(1);
        let (router, steps) = two_steps_at("/api/v1/action", unfinished.clone());
        let first = tokio::spawn(router.clone().oneshot(request_to("POST", "/api/v1/action")));
        steps.started.notified().await;
        for (path, json) in [("/api/v1/action", true), ("/elsewhere", false)] {
            let res = router
                .clone()
                .oneshot(request_to("POST", path))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(res.headers()[header::RETRY_AFTER], "1", "{path}");
            let is_json = res.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap_or_default()
                .starts_with("application/json");
            assert_eq!(is_json, json, "{path}");
        }
        // Reads are not counted.
        let read = tokio::spawn(router.clone().oneshot(request_to("GET", "/api/v1/action")));
        steps.started.notified().await;
        steps.go.notify_one();
        steps.go.notify_one();
        for call in [first, read] {
            assert_eq!(
                call.await.unwrap().unwrap().status(),
                StatusCode::NO_CONTENT
            );
        }
        assert!(unfinished.wait(Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn a_get_stops_with_its_caller() {
        let unfinished = Unfinished::default();
        let (router, steps) = two_steps(unfinished.clone());
        let call = tokio::spawn(router.oneshot(request("GET")));
        steps.started.notified().await;
        call.abort();
        assert!(call.await.is_err_and(|e| e.is_cancelled()));
        steps.go.notify_one();
        tokio::task::yield_now().await;
        assert!(unfinished.wait(Duration::from_millis(50)).await);
        assert!(!steps.done.load(Ordering::SeqCst));
    }
}
