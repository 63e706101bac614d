//! Server-rendered pages. Each handler extracts input, calls one service method and maps
//! the result to a page or a redirect.

use super::error::{throttle_message, with_retry_after, PageError};
use super::extract::{
    cookie_name, get_cookie, set_cookie, Client, CsrfCookie, MaybeSession, SignedIn,
    SignedInAnyState,
};
use crate::app::App;
use crate::clock::format_time;
use crate::services::auth::{ChangeReason, SetPasswordInput};
use crate::services::{browser_name, ServiceError};
use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use bulwark_core::enforcement::Standing;
use bulwark_core::password::policy::PasswordPolicy;
use bulwark_store::{SessionStage, TokenPurpose};
use serde::Deserialize;

// ---------------------------------------------------------------------------------------
// Helpers

/// A 303 redirect, with cookies to set.
pub fn see_other(location: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    for c in cookies {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

pub(crate) fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    message: &'a str,
    link: Option<(&'a str, &'a str)>,
}

/// A page with a title, a sentence and an optional link.
pub fn message_page(
    status: StatusCode,
    title: &str,
    message: &str,
    link: Option<(&str, &str)>,
) -> Response {
    render(
        status,
        &MessagePage {
            title,
            signed_in: None,
            csrf: String::new(),
            message,
            link,
        },
    )
}

/// Accepts a post-login target only if it is a path on this site, or an absolute URL of an
/// application the gateway protects (`gateway.protected`).
pub fn safe_next(app: &App, next: &str) -> Option<String> {
    safe_local_next(next)
        .or_else(|| bulwark_core::redirect::safe_return_url(next, &app.config.gateway.origins))
}

/// A path on this site to continue to after login (no scheme, no host, no `//` or `/\` that
/// browsers read as another host, no control characters); `None` for anything else.
pub fn safe_local_next(next: &str) -> Option<String> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.len() <= 1024
        && !next.chars().any(|c| c.is_control() || c.is_whitespace())
        && !next.to_ascii_lowercase().contains("%5c")
        && !next.to_ascii_lowercase().starts_with("/%2f");
    ok.then(|| next.to_string())
}

/// Percent-encodes a string for a query parameter.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn form<T>(result: Result<Form<T>, FormRejection>) -> Result<T, PageError> {
    result.map(|Form(f)| f).map_err(|e| {
        let status = if e.status().is_client_error() {
            e.status()
        } else {
            StatusCode::BAD_REQUEST
        };
        tracing::info!(status = status.as_u16(), "rejected form: {}", e.body_text());
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "The form is too large.",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "The form was not sent as a web form.",
            _ => "The form could not be read.",
        };
        PageError::Rejected(status, message.into())
    })
}

/// Name of the trusted-device cookie.
pub(crate) const DEVICE_COOKIE: &str = "bulwark_device";

/// Where a fully logged-in user goes next: a forced password change first, then overdue
/// enrolment, then the enrolment prompt during grace, then where they were going.
pub(crate) fn after_login_target(
    change: Option<ChangeReason>,
    standing: Standing,
    next: &str,
) -> String {
    let next = if next.is_empty() { "/account" } else { next };
    if change.is_some() {
        "/password/change".into()
    } else if standing == Standing::EnrolmentRequired {
        "/account/security".into()
    } else if let Standing::Grace { .. } = standing {
        format!("/account/security?prompt=grace&next={}", url_encode(next))
    } else {
        next.to_string()
    }
}

pub(crate) fn session_cookie(app: &App, token: &str) -> HeaderValue {
    set_cookie(app, "bulwark_session", token, None)
}

fn clear_session_cookie(app: &App) -> HeaderValue {
    set_cookie(app, "bulwark_session", "", Some(0))
}

/// Plain-words list of what the policy asks for, shown next to every new-password field.
fn policy_rules(p: &PasswordPolicy) -> Vec<String> {
    let mut r = vec![format!("{} to {} characters.", p.min_length, p.max_length)];
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            format!("At least 1 {one}.")
        } else {
            format!("At least {n} {many}.")
        }
    };
    if p.min_lower > 0 {
        r.push(plural(p.min_lower, "lowercase letter", "lowercase letters"));
    }
    if p.min_upper > 0 {
        r.push(plural(p.min_upper, "uppercase letter", "uppercase letters"));
    }
    if p.min_digit > 0 {
        r.push(plural(p.min_digit, "digit", "digits"));
    }
    if p.min_special > 0 {
        r.push(plural(
            p.min_special,
            "symbol or punctuation character",
            "symbols or punctuation characters",
        ));
    }
    if p.min_score > 0 {
        r.push(
            "Hard to guess: not a common word, name or pattern. A few unrelated words work well."
                .into(),
        );
    }
    if p.blocklist {
        r.push("Not on a list of common or breached passwords.".into());
    }
    if p.history > 0 {
        r.push(format!("Not one of your last {} passwords.", p.history));
    }
    if p.expiry_days > 0 {
        r.push(format!("It expires after {} days.", p.expiry_days));
    }
    r
}

fn violations(e: ServiceError) -> Result<Vec<String>, PageError> {
    match e {
        ServiceError::PolicyRejected(v) => Ok(v.iter().map(ToString::to_string).collect()),
        ServiceError::InvalidInput(m) | ServiceError::Conflict(m) => Ok(vec![m]),
        ServiceError::InvalidCredentials => {
            Ok(vec!["Your current password is not correct.".into()])
        }
        other => Err(other.into()),
    }
}

// ---------------------------------------------------------------------------------------
// Root, 404

pub async fn root_get() -> Response {
    see_other("/account", Vec::new())
}

pub async fn not_found() -> PageError {
    PageError::NotFound
}

// ---------------------------------------------------------------------------------------
// Login and logout

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    login: &'a str,
    next: &'a str,
    error: Option<String>,
    notice: Option<&'a str>,
}

#[derive(Debug, Deserialize, Default)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
    #[serde(default)]
    done: String,
}

pub async fn login_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    session: MaybeSession,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let next = safe_next(&app, &q.next).unwrap_or_default();
    if session.0.is_some() {
        return see_other(if next.is_empty() { "/account" } else { &next }, Vec::new());
    }
    let notice = match q.done.as_str() {
        "password" => Some("Your password is set. Log in with it now."),
        "logout" => Some("You are logged out."),
        _ => None,
    };
    render(
        StatusCode::OK,
        &LoginPage {
            title: "Log in",
            signed_in: None,
            csrf: csrf.form_token(&app),
            login: "",
            next: &next,
            error: None,
            notice,
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

pub async fn login_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    Client(client): Client,
    headers: HeaderMap,
    body: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    let next = safe_next(&app, &f.next).unwrap_or_default();
    let page = |status: StatusCode, error: String| {
        render(
            status,
            &LoginPage {
                title: "Log in",
                signed_in: None,
                csrf: csrf.form_token(&app),
                login: &f.login,
                next: &next,
                error: Some(error),
                notice: None,
            },
        )
    };
    let device = get_cookie(&headers, &cookie_name(&app, DEVICE_COOKIE)).map(str::to_string);
    match app
        .login(&f.login, f.password.clone(), &client, device.as_deref())
        .await
    {
        Ok(ok) => {
            let target = if ok.stage == SessionStage::SecondFactor {
                if next.is_empty() {
                    "/login/2fa".to_string()
                } else {
                    format!("/login/2fa?next={}", url_encode(&next))
                }
            } else {
                after_login_target(ok.change_required, ok.standing, &next)
            };
            Ok(see_other(
                &target,
                vec![session_cookie(&app, ok.token.expose())],
            ))
        }
        Err(ServiceError::InvalidCredentials) => Ok(page(
            StatusCode::UNAUTHORIZED,
            "Incorrect login or password.".into(),
        )),
        Err(ServiceError::InvalidInput(m)) => Ok(page(StatusCode::BAD_REQUEST, m)),
        Err(ServiceError::Throttled {
            retry_after,
            locked,
        }) => Ok(with_retry_after(
            page(
                StatusCode::TOO_MANY_REQUESTS,
                throttle_message(retry_after, locked),
            ),
            retry_after,
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnlyForm {
    #[serde(default)]
    csrf_token: String,
}

pub async fn logout_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    session: MaybeSession,
    Client(client): Client,
    body: Result<Form<CsrfOnlyForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    if let Some(current) = session.0 {
        app.logout(&current, &client).await?;
    }
    Ok(see_other(
        "/login?done=logout",
        vec![clear_session_cookie(&app)],
    ))
}

// ---------------------------------------------------------------------------------------
// Account

struct SessionRow {
    id: i64,
    browser: String,
    ip: String,
    created: String,
    last_seen: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    user: &'a bulwark_store::UserRecord,
    groups: String,
    password_info: String,
    two_factor_info: String,
    sessions: Vec<SessionRow>,
    notice: Option<&'a str>,
}

#[derive(Debug, Deserialize, Default)]
pub struct AccountQuery {
    #[serde(default)]
    done: String,
}

pub async fn account_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    SignedIn(current): SignedIn,
    query: Result<Query<AccountQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let sessions = app
        .store
        .list_user_sessions(current.user.id)
        .await
        .map_err(ServiceError::from)?;
    let rows = sessions
        .into_iter()
        .map(|s| SessionRow {
            id: s.id,
            browser: browser_name(s.user_agent.as_deref()),
            ip: s.ip.clone().unwrap_or_else(|| "unknown".into()),
            created: format_time(s.created_at),
            last_seen: format_time(s.last_seen_at),
            current: s.id == current.session.id,
        })
        .collect();
    let policy = app.policy_for(&current.user.groups);
    let password_info = match current.user.password_changed_at {
        Some(at) => match policy.expires_at(at) {
            Some(exp) => format!("changed {}, expires {}", format_time(at), format_time(exp)),
            None => format!("changed {}", format_time(at)),
        },
        None => "not set".into(),
    };
    let tf = app.two_factor_status(&current.user).await?;
    let two_factor_info = if tf.active {
        format!("on, {} recovery codes left", tf.recovery_codes_left)
    } else if tf.required {
        "off — required by your organisation".to_string()
    } else {
        "off".to_string()
    };
    let notice = match q.done.as_str() {
        "password" => Some("Your password was changed. Every other session was logged out."),
        "session" => Some("That session was logged out."),
        _ => None,
    };
    Ok(render(
        StatusCode::OK,
        &AccountPage {
            title: "My account",
            signed_in: Some(current.user.login.clone()),
            csrf: csrf.form_token(&app),
            user: &current.user,
            groups: if current.user.groups.is_empty() {
                "none".into()
            } else {
                current.user.groups.join(", ")
            },
            password_info,
            two_factor_info,
            sessions: rows,
            notice,
        },
    ))
}

#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf_token: String,
    session_id: i64,
}

pub async fn session_revoke_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    SignedIn(current): SignedIn,
    Client(client): Client,
    body: Result<Form<RevokeForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    app.revoke_own_session(&current.user, f.session_id, &client)
        .await?;
    Ok(see_other("/account?done=session", Vec::new()))
}

pub async fn sessions_revoke_all_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    SignedIn(current): SignedIn,
    Client(client): Client,
    body: Result<Form<CsrfOnlyForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    app.revoke_all_own_sessions(&current, &client).await?;
    Ok(see_other(
        "/login?done=logout",
        vec![clear_session_cookie(&app)],
    ))
}

// ---------------------------------------------------------------------------------------
// Password change (voluntary, expired or forced)

#[derive(Template)]
#[template(path = "password_change.html")]
struct PasswordChangePage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    login: &'a str,
    reason: Option<&'a str>,
    error_intro: &'a str,
    errors: Vec<String>,
    rules: Vec<String>,
    min_length: usize,
    max_length: usize,
}

fn change_page(
    app: &App,
    csrf: &CsrfCookie,
    current: &crate::services::auth::CurrentSession,
    errors: Vec<String>,
    status: StatusCode,
) -> Response {
    let policy = app.policy_for(&current.user.groups);
    let reason = current.change_required.map(|r| match r {
        ChangeReason::Forced => {
            "Your administrator asks you to choose a new password before you continue."
        }
        ChangeReason::Expired => "Your password has expired. Choose a new one to continue.",
    });
    render(
        status,
        &PasswordChangePage {
            title: "Change password",
            signed_in: Some(current.user.login.clone()),
            csrf: csrf.form_token(app),
            login: &current.user.login,
            reason,
            error_intro: "The password was not changed:",
            errors,
            rules: policy_rules(&policy),
            min_length: policy.min_length,
            max_length: policy.max_length,
        },
    )
}

pub async fn password_change_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    SignedInAnyState(current): SignedInAnyState,
) -> Response {
    change_page(&app, &csrf, &current, Vec::new(), StatusCode::OK)
}

#[derive(Debug, Deserialize)]
pub struct PasswordChangeForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    confirm_password: String,
}

pub async fn password_change_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    SignedInAnyState(current): SignedInAnyState,
    Client(client): Client,
    body: Result<Form<PasswordChangeForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    match app
        .change_password(
            &current,
            f.current_password,
            f.new_password,
            f.confirm_password,
            &client,
        )
        .await
    {
        Ok(token) => Ok(see_other(
            "/account?done=password",
            vec![session_cookie(&app, token.expose())],
        )),
        Err(ServiceError::Throttled {
            retry_after,
            locked,
        }) => Err(PageError::TooMany {
            retry_after,
            locked,
        }),
        Err(e) => Ok(change_page(
            &app,
            &csrf,
            &current,
            violations(e)?,
            StatusCode::BAD_REQUEST,
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Forgot password

#[derive(Template)]
#[template(path = "password_forgot.html")]
struct ForgotPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    sent: bool,
    minutes: i64,
}

pub async fn password_forgot_get(State(app): State<App>, csrf: CsrfCookie) -> Response {
    render(
        StatusCode::OK,
        &ForgotPage {
            title: "Forgot password",
            signed_in: None,
            csrf: csrf.form_token(&app),
            sent: false,
            minutes: app.config.links.reset_minutes,
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct ForgotForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    login_or_email: String,
}

pub async fn password_forgot_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    Client(client): Client,
    body: Result<Form<ForgotForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    if f.login_or_email.trim().is_empty() || f.login_or_email.len() > 320 {
        return Err(PageError::BadRequest(
            "Enter your login or e-mail address.".into(),
        ));
    }
    // The work runs apart from the response, so neither its result nor its duration tells
    // whether an account matched.
    let worker = app.clone();
    tokio::spawn(async move {
        if let Err(e) = worker
            .request_password_reset(&f.login_or_email, &client)
            .await
        {
            tracing::warn!(error = %e, "password reset request failed");
        }
    });
    Ok(render(
        StatusCode::OK,
        &ForgotPage {
            title: "Forgot password",
            signed_in: None,
            csrf: csrf.form_token(&app),
            sent: true,
            minutes: app.config.links.reset_minutes,
        },
    ))
}

// ---------------------------------------------------------------------------------------
// Links from mail or the console: reset, invitation, first setup.
//
// The link's token moves from the URL into a short-lived HttpOnly cookie at once, so it
// does not linger in the address bar, history or a screenshot of the form.

const LINK_COOKIE: &str = "bulwark_link";

fn purpose_tag(p: TokenPurpose) -> &'static str {
    match p {
        TokenPurpose::Setup => "s",
        TokenPurpose::PasswordReset => "r",
        TokenPurpose::Invitation => "i",
        TokenPurpose::NotMe => "n",
    }
}

fn link_from_cookie(app: &App, headers: &HeaderMap) -> Option<(TokenPurpose, String)> {
    let value = get_cookie(headers, &cookie_name(app, LINK_COOKIE))?;
    let (tag, token) = value.split_once('.')?;
    let purpose = match tag {
        "s" => TokenPurpose::Setup,
        "r" => TokenPurpose::PasswordReset,
        "i" => TokenPurpose::Invitation,
        _ => return None,
    };
    Some((purpose, token.to_string()))
}

fn invalid_link() -> Response {
    message_page(
        StatusCode::BAD_REQUEST,
        "This link cannot be used",
        "The link is invalid, was already used, or has expired. Ask for a new one.",
        Some(("/password/forgot", "Get a new link")),
    )
}

async fn link_get(app: App, purpose: TokenPurpose, token: String) -> Result<Response, PageError> {
    match app.inspect_link(purpose, &token).await {
        Ok(_) => {
            let value = format!("{}.{}", purpose_tag(purpose), token);
            let ttl = match purpose {
                TokenPurpose::Setup => app.config.links.setup_minutes * 60,
                TokenPurpose::PasswordReset => app.config.links.reset_minutes * 60,
                TokenPurpose::Invitation | TokenPurpose::NotMe => 3600,
            };
            Ok(see_other(
                "/password/set",
                vec![set_cookie(&app, LINK_COOKIE, &value, Some(ttl))],
            ))
        }
        Err(ServiceError::InvalidLink) => Ok(invalid_link()),
        Err(e) => Err(e.into()),
    }
}

pub async fn reset_link_get(
    State(app): State<App>,
    Path(token): Path<String>,
) -> Result<Response, PageError> {
    link_get(app, TokenPurpose::PasswordReset, token).await
}

pub async fn invitation_link_get(
    State(app): State<App>,
    Path(token): Path<String>,
) -> Result<Response, PageError> {
    link_get(app, TokenPurpose::Invitation, token).await
}

pub async fn setup_link_get(
    State(app): State<App>,
    Path(token): Path<String>,
) -> Result<Response, PageError> {
    link_get(app, TokenPurpose::Setup, token).await
}

#[derive(Template)]
#[template(path = "password_set.html")]
struct PasswordSetPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    intro: &'a str,
    button: &'a str,
    setup: bool,
    login: &'a str,
    email: &'a str,
    display_name: &'a str,
    error_intro: &'a str,
    errors: Vec<String>,
    rules: Vec<String>,
    min_length: usize,
    max_length: usize,
}

struct SetForm<'a> {
    login: &'a str,
    email: &'a str,
    display_name: &'a str,
}

fn set_page(
    app: &App,
    csrf: &CsrfCookie,
    info: &crate::services::auth::LinkInfo,
    values: SetForm<'_>,
    errors: Vec<String>,
    status: StatusCode,
) -> Response {
    let groups: Vec<String> = match &info.user {
        Some(u) => u.groups.clone(),
        None => vec!["admins".into(), "internal".into()],
    };
    let policy = app.policy_for(&groups);
    let (title, intro, button) = match info.purpose {
        TokenPurpose::Setup => (
            "Create the first administrator",
            "Bulwark has no administrator yet. Choose the login and password of the first one.",
            "Create administrator",
        ),
        // A "this wasn't me" link never reaches this page itself: it ends in a reset link.
        TokenPurpose::PasswordReset | TokenPurpose::NotMe => (
            "Choose a new password",
            "Choose a new password for your account. Every session will be logged out.",
            "Set password",
        ),
        TokenPurpose::Invitation => (
            "Welcome: choose your password",
            "Choose the password for your new account.",
            "Set password",
        ),
    };
    let login = info
        .user
        .as_ref()
        .map(|u| u.login.as_str())
        .unwrap_or(values.login);
    render(
        status,
        &PasswordSetPage {
            title,
            signed_in: None,
            csrf: csrf.form_token(app),
            intro,
            button,
            setup: info.purpose == TokenPurpose::Setup,
            login,
            email: values.email,
            display_name: values.display_name,
            error_intro: "Please fix the following:",
            errors,
            rules: policy_rules(&policy),
            min_length: policy.min_length,
            max_length: policy.max_length,
        },
    )
}

pub async fn password_set_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let Some((purpose, token)) = link_from_cookie(&app, &headers) else {
        return Ok(invalid_link());
    };
    match app.inspect_link(purpose, &token).await {
        Ok(info) => Ok(set_page(
            &app,
            &csrf,
            &info,
            SetForm {
                login: "",
                email: "",
                display_name: "",
            },
            Vec::new(),
            StatusCode::OK,
        )),
        Err(ServiceError::InvalidLink) => Ok(invalid_link()),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct SetPasswordForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    confirm_password: String,
    #[serde(default)]
    login: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    display_name: String,
}

pub async fn password_set_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    headers: HeaderMap,
    Client(client): Client,
    body: Result<Form<SetPasswordForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    let Some((purpose, token)) = link_from_cookie(&app, &headers) else {
        return Ok(invalid_link());
    };
    let info = match app.inspect_link(purpose, &token).await {
        Ok(info) => info,
        Err(ServiceError::InvalidLink) => return Ok(invalid_link()),
        Err(e) => return Err(e.into()),
    };
    let input = SetPasswordInput {
        password: f.new_password,
        confirm: f.confirm_password,
        login: f.login.clone(),
        email: f.email.clone(),
        display_name: f.display_name.clone(),
    };
    match app.complete_link(purpose, &token, input, &client).await {
        Ok(_) => Ok(see_other(
            "/login?done=password",
            vec![set_cookie(&app, LINK_COOKIE, "", Some(0))],
        )),
        Err(ServiceError::InvalidLink) => Ok(invalid_link()),
        Err(e) => {
            let errors = violations(e)?;
            let values = SetForm {
                login: &f.login,
                email: &f.email,
                display_name: &f.display_name,
            };
            Ok(set_page(
                &app,
                &csrf,
                &info,
                values,
                errors,
                StatusCode::BAD_REQUEST,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_accepts_only_local_paths() {
        assert_eq!(safe_local_next("/account"), Some("/account".into()));
        assert_eq!(
            safe_local_next("/web?debug=1#x"),
            Some("/web?debug=1#x".into())
        );
        for bad in [
            "",
            "account",
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "/%5cevil",
            "/%2F/evil",
            "/a\nb",
            "/ a",
            "\\\\evil",
        ] {
            assert_eq!(safe_local_next(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn browser_names_are_short() {
        assert_eq!(browser_name(Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36")), "Chrome on Linux");
        assert_eq!(browser_name(None), "Unknown browser");
    }
}

#[derive(Template)]
#[template(path = "not_me.html")]
struct NotMePage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    login: String,
    action: String,
}

/// The "this wasn't me" link from a mail: asks to confirm first, because mail scanners and
/// link previews open links by themselves and must not lock anyone out.
pub async fn not_me_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    Path(token): Path<String>,
) -> Result<Response, PageError> {
    match app.inspect_link(TokenPurpose::NotMe, &token).await {
        Ok(info) => Ok(render(
            StatusCode::OK,
            &NotMePage {
                title: "Secure your account",
                signed_in: None,
                csrf: csrf.form_token(&app),
                login: info.user.map(|u| u.login).unwrap_or_default(),
                action: format!("/not-me/{token}"),
            },
        )),
        Err(ServiceError::InvalidLink) => Ok(invalid_link()),
        Err(e) => Err(e.into()),
    }
}

pub async fn not_me_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    Client(client): Client,
    Path(token): Path<String>,
    body: Result<Form<CsrfOnlyForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    match app.report_not_me(&token, &client).await {
        Ok(reset) => Ok(see_other(
            &format!("/password/reset/{}", reset.expose()),
            Vec::new(),
        )),
        Err(ServiceError::InvalidLink) => Ok(invalid_link()),
        Err(e) => Err(e.into()),
    }
}
