//! The JSON API under `/api/v1`.
//!
//! Callers authenticate with the session cookie of a full login (unsafe methods also need the
//! `X-CSRF-Token` header, whose value `GET /api/v1/me` returns), or with an API key as
//! `Authorization: Bearer` (or the HTTP Basic password) with the `api:read` scope, `api:write`
//! for unsafe methods. Admin routes need a member of `admins` whose session passed a second
//! factor; an API key never reaches them, and cannot make API keys.
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with the stable codes of
//! [`ErrorCode`]. Every route is declared once in [`api_routes!`], which builds both the router
//! and the OpenAPI document served at `/api/v1/openapi.json`, so the two cannot disagree.

use super::extract::{get_cookie, Client, CsrfCookie};
use super::gateway::{credential, Credential};
use crate::app::App;
use crate::services::api_keys::{
    ApiKeyView, AuthenticatedKey, ExpiryChoice, KeyActor, KeyCheck, KeyRef, KeyStatus,
    NewApiKeyInput, Refusal,
};
use crate::services::auth::CurrentSession;
use crate::services::ServiceError;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bulwark_core::account::GroupName;
use bulwark_core::api_key::Scope;
use bulwark_core::enforcement::Standing;
use bulwark_core::SecretString;
use bulwark_store::{AuditFilter, SessionStage, UserFilter, UserRecord};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------
// Errors

/// Stable error codes of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    CsrfFailed,
    PasswordChangeRequired,
    EnrolmentRequired,
    PasswordConfirmationRequired,
    NotFound,
    InvalidInput,
    PolicyRejected,
    Conflict,
    Refused,
    Throttled,
    Busy,
    Unavailable,
    Internal,
}

impl ErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::CsrfFailed => "csrf_failed",
            Self::PasswordChangeRequired => "password_change_required",
            Self::EnrolmentRequired => "enrolment_required",
            Self::PasswordConfirmationRequired => "password_confirmation_required",
            Self::NotFound => "not_found",
            Self::InvalidInput => "invalid_input",
            Self::PolicyRejected => "policy_rejected",
            Self::Conflict => "conflict",
            Self::Refused => "refused",
            Self::Throttled => "throttled",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    const ALL: [Self; 15] = [
        Self::Unauthorized,
        Self::Forbidden,
        Self::CsrfFailed,
        Self::PasswordChangeRequired,
        Self::EnrolmentRequired,
        Self::PasswordConfirmationRequired,
        Self::NotFound,
        Self::InvalidInput,
        Self::PolicyRejected,
        Self::Conflict,
        Self::Refused,
        Self::Throttled,
        Self::Busy,
        Self::Unavailable,
        Self::Internal,
    ];
}

/// An API error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<i64>,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "not found")
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let bad = StatusCode::BAD_REQUEST;
        match e {
            ServiceError::InvalidCredentials => Self::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "incorrect login or password",
            ),
            ServiceError::Throttled { retry_after, .. } => Self {
                retry_after: Some(retry_after),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::Throttled,
                    format!("too many attempts; retry in {retry_after} seconds"),
                )
            },
            ServiceError::PolicyRejected(v) => Self::new(
                bad,
                ErrorCode::PolicyRejected,
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            ServiceError::InvalidInput(m) => Self::new(bad, ErrorCode::InvalidInput, m),
            ServiceError::InvalidLink => Self::new(
                bad,
                ErrorCode::InvalidInput,
                "the link is invalid or has expired",
            ),
            ServiceError::NotFound => Self::not_found(),
            ServiceError::Conflict(m) => Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, m),
            ServiceError::Refused(m) => Self::new(StatusCode::CONFLICT, ErrorCode::Refused, m),
            ServiceError::Busy { retry_after } => Self {
                retry_after: Some(retry_after),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Busy,
                    format!(
                        "too many password checks at this moment; retry in {retry_after} seconds"
                    ),
                )
            },
            ServiceError::Unavailable(cause) => {
                tracing::error!(cause = %cause, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "the service is temporarily unavailable",
                )
            }
            ServiceError::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message}});
        let mut res = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.max(1).to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        res
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

// ---------------------------------------------------------------------------------------
// Callers

/// Who is calling: a browser session or an API key.
pub enum Principal {
    Session(Box<CurrentSession>),
    Key(Arc<AuthenticatedKey>),
}

impl Principal {
    fn user(&self) -> &UserRecord {
        match self {
            Self::Session(s) => &s.user,
            Self::Key(k) => &k.user,
        }
    }

    fn session_id(&self) -> Option<i64> {
        match self {
            Self::Session(s) => Some(s.session.id),
            Self::Key(_) => None,
        }
    }

    fn key_actor(&self) -> KeyActor<'_> {
        match self {
            Self::Session(s) => KeyActor::Session(s),
            Self::Key(k) => KeyActor::Key(k),
        }
    }
}

/// A caller with a full, unrestricted session, or an API key with the `api:read` scope
/// (`api:write` for unsafe methods). Unsafe methods by session are CSRF-checked.
pub struct Caller(pub Principal);

/// Like [`Caller`], but a session that still owes a password change or an enrolment is let
/// through (`GET /me`, so a client can tell the user what to do).
pub struct AnyCaller(pub Principal);

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
}

async fn caller(parts: &Parts, app: &App) -> Result<Principal, ApiError> {
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    match credential(&parts.headers) {
        Credential::Key(presented) => {
            let needed = if safe {
                Scope::ApiRead
            } else {
                Scope::ApiWrite
            };
            return match app.authenticate_api_key(&presented, needed).await? {
                KeyCheck::Valid(k) => Ok(Principal::Key(k)),
                // The holder has a valid key: they may learn what its owner must do.
                KeyCheck::Refused(Refusal::OwnerMustEnrol) => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::EnrolmentRequired,
                    "the key's owner must set up two-factor authentication (their grace period \
                     is over); the key works again once they have",
                )),
                KeyCheck::Refused(why) => {
                    tracing::info!(reason = why.as_str(), "API: key refused");
                    Err(unauthorized(&format!(
                        "the API key is not valid for this call (it needs the {} scope, and must \
                         be current and not revoked)",
                        needed.as_str()
                    )))
                }
            };
        }
        Credential::Malformed => return Err(unauthorized("unreadable Authorization header")),
        Credential::None => {}
    }
    let no_session = || unauthorized("sign in first (session cookie) or send an API key");
    let cookie = get_cookie(&parts.headers, &app.session_cookie_name).ok_or_else(no_session)?;
    let current = app
        .authenticate(cookie)
        .await?
        .filter(|s| s.session.stage == SessionStage::Full)
        .ok_or_else(no_session)?;
    if !safe {
        let csrf = parts.extensions.get::<CsrfCookie>().cloned();
        let submitted = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if csrf.is_none_or(|c| c.verify(app, submitted).is_err()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::CsrfFailed,
                "missing or wrong X-CSRF-Token header (GET /api/v1/me returns it)",
            ));
        }
    }
    Ok(Principal::Session(Box::new(current)))
}

impl FromRequestParts<App> for AnyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        caller(parts, app).await.map(Self)
    }
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let principal = caller(parts, app).await?;
        if let Principal::Session(current) = &principal {
            if current.change_required.is_some() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::PasswordChangeRequired,
                    "the password must be changed first",
                ));
            }
            if current.standing == Standing::EnrolmentRequired {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::EnrolmentRequired,
                    "two-factor authentication must be set up first",
                ));
            }
        }
        Ok(Self(principal))
    }
}

/// An administrator whose session passed a second factor.
pub struct Admin(pub CurrentSession);

impl FromRequestParts<App> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let current =
            match Caller::from_request_parts(parts, app).await?.0 {
                Principal::Session(s) => *s,
                Principal::Key(_) => return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Forbidden,
                    "administration needs a session that passed a second factor, not an API key",
                )),
            };
        if !current.user.in_group(GroupName::ADMINS) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "administrators only",
            ));
        }
        if !current.session.two_factor {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "administration needs a session that passed a second factor",
            ));
        }
        Ok(Self(current))
    }
}

// ---------------------------------------------------------------------------------------
// Routes, declared once

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    User,
    Admin,
}

/// One documented route.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    /// Path under `/api/v1`, with `{param}` segments (the same syntax in axum and OpenAPI).
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// Name of the response schema in `components.schemas`.
    pub response: &'static str,
}

macro_rules! api_routes {
    (@method GET) => { get };
    (@method POST) => { post };
    (@method DELETE) => { delete };
    ($( $method:ident $path:literal => $handler:path, $access:ident, $response:literal, $summary:literal; )*) => {
        /// Every route of the API, in documentation order.
        pub const ENDPOINTS: &[Endpoint] = &[$(Endpoint {
            method: stringify!($method),
            path: $path,
            access: Access::$access,
            summary: $summary,
            response: $response,
        }),*];

        /// The API router, to be nested under `/api/v1`.
        pub fn routes() -> Router<App> {
            let mut router = Router::new();
            $( router = router.route($path, api_routes!(@method $method)($handler)); )*
            router.fallback(|| async { ApiError::not_found() })
        }
    };
}

api_routes! {
    GET "/openapi.json" => openapi_get, Public, "OpenApi", "This document.";
    GET "/me" => me_get, User, "Me", "The signed-in user, their two-factor state and the CSRF token for unsafe calls.";
    GET "/me/sessions" => my_sessions_get, User, "SessionList", "The caller's active sessions.";
    DELETE "/me/sessions/{id}" => my_session_delete, User, "Done", "Ends one of the caller's sessions.";
    GET "/me/trusted-devices" => my_devices_get, User, "TrustedDeviceList", "Browsers the caller trusts for the second factor.";
    DELETE "/me/trusted-devices/{id}" => my_device_delete, User, "Done", "Forgets one trusted browser.";
    GET "/me/api-keys" => my_keys_get, User, "ApiKeyList", "The caller's API keys (never the keys themselves).";
    POST "/me/api-keys" => my_keys_post, User, "CreatedApiKey", "Makes an API key and returns it, once. Needs a session and the password; an API key cannot make keys.";
    POST "/me/confirm-password" => confirm_password_post, User, "Done", "Checks the caller's password again (body `{\"password\"}`; a session, not an API key). Administrative changes need one within the last 10 minutes.";
    DELETE "/me/api-keys/{id}" => my_key_delete, User, "Done", "Revokes one of the caller's API keys.";
    GET "/users" => users_get, Admin, "UserList", "Users, filtered by `search` and `group`, paged by `limit` (at most 500) and `offset`.";
    GET "/users/{login}" => user_get, Admin, "User", "One user.";
    POST "/users/{login}/unlock" => user_unlock_post, Admin, "Done", "Clears the user's failed-login lock.";
    POST "/users/{login}/reset-2fa" => user_reset_2fa_post, Admin, "Done", "Removes the user's authenticator, recovery codes, trusted devices and sessions; mails the user.";
    POST "/users" => users_post, Admin, "User", "Creates a user without a password from `{login, email, display_name?, groups?}` and mails the invitation.";
    DELETE "/users/{login}" => user_delete, Admin, "Done", "Deletes the user and everything that belongs to them (the audit log keeps their events).";
    POST "/users/{login}/disable" => user_disable_post, Admin, "Done", "Disables the account: ends its sessions, revokes its trusted devices and API keys.";
    POST "/users/{login}/enable" => user_enable_post, Admin, "Done", "Enables the account again.";
    POST "/users/{login}/force-password-change" => user_force_change_post, Admin, "Done", "The user must choose a new password at the next login.";
    POST "/users/{login}/revoke-sessions" => user_revoke_sessions_post, Admin, "Done", "Ends every session of the user.";
    POST "/users/{login}/revoke-trusted-devices" => user_revoke_devices_post, Admin, "Done", "Forgets every browser the user trusted for the second factor.";
    POST "/users/{login}/invite" => user_invite_post, Admin, "Done", "Mails the user a link to choose a password.";
    POST "/users/{login}/groups" => user_groups_post, Admin, "User", "Replaces the user's groups with `{groups: [...]}`.";
    GET "/audit" => audit_get, Admin, "AuditEventList", "Audit events, newest first, filtered by `subject`, `event`, `since` and `until` (Unix seconds, 2026-11-23 or 2026-11-23T19:02 UTC), paged by `limit` (at most 500) and `before` (the previous page's `next_before`).";
    GET "/audit/verify" => audit_verify_get, Admin, "AuditVerification", "Checks the audit log's hash chain and checkpoint signatures; `intact: false` comes with the first broken link.";
    GET "/reports/compliance" => compliance_get, Admin, "ComplianceReport", "Two-factor coverage per group, users without two-factor, expired passwords, stale accounts (`stale_days`, default 90), users with two or fewer recovery codes, 2FA resets and lockouts. `format=csv` gives one line per active user instead (streamed).";
    GET "/policy" => policy_get, Admin, "Policy", "The security policy in force: password rules (those not `set` come from the preset), two-factor enforcement, trusted-device lifetime, session timeouts and lockout thresholds.";
    POST "/policy" => policy_post, Admin, "PolicyChange", "Changes settings from `{settings: {name: value}}`, all or none; `null` returns a password rule to its preset. Each moved setting is audited (`policy_changed`) with its old and new value; every node applies it within 5 seconds.";
    GET "/groups" => groups_get, Admin, "GroupList", "The built-in groups and how many active members each has.";
}

// ---------------------------------------------------------------------------------------
// Handlers

fn user_json(u: &UserRecord) -> Value {
    json!({
        "login": u.login,
        "email": u.email,
        "display_name": u.display_name,
        "active": u.active,
        "groups": u.groups,
        "created_at": u.created_at,
        "last_login_at": u.last_login_at,
        "password_changed_at": u.password_changed_at,
        "must_change_password": u.must_change_password,
        "device_account": u.device_account,
    })
}

fn standing_json(s: Standing) -> Value {
    match s {
        Standing::Optional => json!({"state": "optional"}),
        Standing::Exempt => json!({"state": "exempt"}),
        Standing::Satisfied => json!({"state": "satisfied"}),
        Standing::Grace { deadline } => json!({"state": "grace", "deadline": deadline}),
        Standing::EnrolmentRequired => json!({"state": "enrolment_required"}),
    }
}

async fn openapi_get(State(app): State<App>) -> Json<Value> {
    Json(openapi(&app.config.server.public_url))
}

async fn me_get(State(app): State<App>, csrf: CsrfCookie, AnyCaller(me): AnyCaller) -> ApiResult {
    let user = me.user();
    let status = app.two_factor_status(user).await?;
    let mut body = user_json(user);
    let (session_two_factor, change_required) = match &me {
        Principal::Session(s) => (s.session.two_factor, s.change_required.is_some()),
        Principal::Key(_) => (false, false),
    };
    body["two_factor"] = json!({
        "active": status.active,
        "required": status.required,
        "standing": standing_json(status.standing),
        "recovery_codes_left": status.recovery_codes_left,
        "session_passed_second_factor": session_two_factor,
    });
    body["password_change_required"] = json!(change_required);
    if let Principal::Session(_) = me {
        body["csrf_token"] = json!(csrf.form_token(&app));
    }
    Ok(Json(body))
}

async fn my_sessions_get(State(app): State<App>, Caller(me): Caller) -> ApiResult {
    let sessions = app
        .store
        .list_user_sessions(me.user().id)
        .await
        .map_err(ServiceError::from)?;
    let items: Vec<Value> = sessions
        .iter()
        .filter(|s| s.stage == SessionStage::Full)
        .map(|s| {
            json!({
                "id": s.id,
                "created_at": s.created_at,
                "last_seen_at": s.last_seen_at,
                "ip": s.ip,
                "user_agent": s.user_agent,
                "two_factor": s.two_factor,
                "current": Some(s.id) == me.session_id(),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

fn id_param(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| ApiError::not_found())
}

async fn my_session_delete(
    State(app): State<App>,
    Client(client): Client,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    app.revoke_own_session(me.user(), id_param(&id)?, &client)
        .await?;
    Ok(Json(json!({"done": true})))
}

async fn my_devices_get(State(app): State<App>, Caller(me): Caller) -> ApiResult {
    let status = app.two_factor_status(me.user()).await?;
    let items: Vec<Value> = status
        .trusted_devices
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "name": d.name,
                "created_at": d.created_at,
                "last_used_at": d.last_used_at,
                "last_ip": d.last_ip,
                "expires_at": d.expires_at,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn my_device_delete(
    State(app): State<App>,
    Client(client): Client,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    app.revoke_trusted_device(me.user(), id_param(&id)?, &client)
        .await?;
    Ok(Json(json!({"done": true})))
}

fn key_json(k: &ApiKeyView) -> Value {
    json!({
        "id": k.record.id,
        "name": k.record.name,
        "prefix": k.record.display_prefix,
        "scopes": k.record.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "created_at": k.record.created_at,
        "expires_at": k.record.expires_at,
        "last_used_at": k.last_used_at,
        "revoked_at": k.record.revoked_at,
        "status": match k.status {
            KeyStatus::Active => "active",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        },
    })
}

async fn my_keys_get(State(app): State<App>, Caller(me): Caller) -> ApiResult {
    let keys = app.list_api_keys(me.key_actor(), None).await?;
    Ok(Json(
        json!({ "items": keys.iter().map(key_json).collect::<Vec<_>>() }),
    ))
}

/// No `Debug`: it carries a password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    name: String,
    scopes: Vec<String>,
    /// Lifetime in days; absent: the configured default.
    #[serde(default)]
    days: Option<u32>,
    password: SecretString,
}

async fn my_keys_post(
    State(app): State<App>,
    Client(client): Client,
    Caller(me): Caller,
    body: Result<Json<NewKeyBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    if let Principal::Key(_) = me {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "an API key cannot make API keys: sign in with a session",
        ));
    }
    let b = json_body(body)?;
    let owner = me.user().login.clone();
    let created = app
        .create_api_key(
            me.key_actor(),
            &owner,
            NewApiKeyInput {
                name: b.name,
                scopes: b.scopes,
                expiry: b.days.map_or(ExpiryChoice::Default, ExpiryChoice::Days),
                password: Some(b.password),
            },
            &client,
        )
        .await?;
    Ok(Json(json!({
        "key": created.key.expose(),
        "id": created.record.id,
        "name": created.record.name,
        "prefix": created.record.display_prefix,
        "expires_at": created.record.expires_at,
    })))
}

async fn my_key_delete(
    State(app): State<App>,
    Client(client): Client,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let owner = me.user().login.clone();
    app.revoke_api_key(me.key_actor(), &owner, &KeyRef::Id(id_param(&id)?), &client)
        .await?;
    Ok(Json(json!({"done": true})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FormatQuery {
    format: Option<String>,
}

async fn compliance_get(
    State(app): State<App>,
    _: Admin,
    format: Result<Query<FormatQuery>, axum::extract::rejection::QueryRejection>,
    options: Result<Query<super::admin::ComplianceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidInput, m);
    let Query(format) = format.map_err(|e| invalid(e.body_text()))?;
    let options = super::admin::ComplianceQuery::options(options).map_err(invalid)?;
    match format.format.as_deref().unwrap_or("json") {
        "json" => {
            let report = app.compliance_report(options, None).await?;
            Ok(Json(crate::services::compliance::report_json(&report)).into_response())
        }
        "csv" => Ok(super::admin::compliance_csv(app, options)),
        _ => Err(invalid("format must be json or csv".into())),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuditQuery {
    subject: Option<String>,
    event: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

async fn audit_get(
    State(app): State<App>,
    _: Admin,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidInput, m);
    let Query(q) = query.map_err(|e| invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(invalid("limit must be between 1 and 500".into()));
    }
    let time = |name: &str, v: Option<String>| -> Result<Option<i64>, ApiError> {
        v.filter(|v| !v.trim().is_empty())
            .map(|v| {
                crate::clock::parse_time(&v).ok_or_else(|| {
                    invalid(format!(
                        "{name} must be Unix seconds, 2026-11-23 or 2026-11-23T19:02 (UTC)"
                    ))
                })
            })
            .transpose()
    };
    let filter = AuditFilter {
        subject: q.subject.filter(|s| !s.trim().is_empty()),
        event: q.event.filter(|s| !s.trim().is_empty()),
        since: time("since", q.since)?,
        until: time("until", q.until)?,
        before_id: q.before,
        limit,
    };
    let events = app.search_audit(&filter).await?;
    let next_before = (events.len() == limit as usize)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(Json(json!({
        "items": events.iter().map(crate::services::audit::event_json).collect::<Vec<_>>(),
        "next_before": next_before,
    })))
}

async fn audit_verify_get(State(app): State<App>, _: Admin) -> ApiResult {
    use crate::services::audit::ChainStart;
    let r = app.verify_audit().await?;
    let start = match r.start {
        ChainStart::Genesis => json!({"from": "genesis"}),
        ChainStart::Checkpoint { last_id, at } => {
            json!({"from": "checkpoint", "after_id": last_id, "pruned_at": at})
        }
    };
    Ok(Json(json!({
        "intact": r.intact(),
        "problem": r.problem,
        "checked": r.checked,
        "checkpoints": r.checkpoints,
        "start": start,
        "head": r.head.map(|(id, hash)| json!({"id": id, "hash": hash})),
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UsersQuery {
    search: Option<String>,
    group: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn users_get(
    State(app): State<App>,
    _: Admin,
    query: Result<Query<UsersQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidInput,
            e.body_text(),
        )
    })?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidInput,
            "limit must be between 1 and 500",
        ));
    }
    let filter = UserFilter {
        search: q.search.filter(|s| !s.trim().is_empty()),
        group: q.group.filter(|s| !s.trim().is_empty()),
        limit,
        offset: q.offset.unwrap_or(0),
    };
    let users = app.list_users(&filter).await?;
    Ok(Json(json!({
        "items": users.iter().map(user_json).collect::<Vec<_>>(),
        "limit": filter.limit,
        "offset": filter.offset,
    })))
}

async fn user_get(State(app): State<App>, _: Admin, Path(login): Path<String>) -> ApiResult {
    let user = app.user_by_login(&login).await.map_err(|e| match e {
        ServiceError::InvalidInput(_) => ApiError::not_found(),
        e => e.into(),
    })?;
    let status = app.two_factor_status(&user).await?;
    let locked_until = app.user_lock(&user).await?;
    let mut body = user_json(&user);
    body["two_factor"] = json!({
        "active": status.active,
        "required": status.required,
        "standing": standing_json(status.standing),
        "recovery_codes_left": status.recovery_codes_left,
        "trusted_devices": status.trusted_devices.len(),
    });
    body["locked_until"] = json!(locked_until);
    Ok(Json(body))
}

/// No `Debug`: it carries a password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: SecretString,
}

async fn confirm_password_post(
    State(app): State<App>,
    Client(client): Client,
    Caller(me): Caller,
    body: Result<Json<PasswordBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Principal::Session(current) = me else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "an API key has no password to confirm: sign in with a session",
        ));
    };
    let b = json_body(body)?;
    app.confirm_password(&current, b.password.expose().to_string(), &client)
        .await?;
    Ok(Json(json!({"done": true})))
}

/// Administrative changes need a password check within the last 10 minutes.
fn fresh_password(app: &App, admin: &CurrentSession) -> Result<(), ApiError> {
    if app.password_fresh(admin, app.now()) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::PasswordConfirmationRequired,
        "confirm your password first (POST /api/v1/me/confirm-password): it was last checked more than 10 minutes ago",
    ))
}

async fn user_unlock_post(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    Path(login): Path<String>,
) -> ApiResult {
    fresh_password(&app, &admin)?;
    app.unlock_user(&login, &admin.user.login, &client).await?;
    Ok(Json(json!({"done": true})))
}

async fn user_reset_2fa_post(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    Path(login): Path<String>,
) -> ApiResult {
    fresh_password(&app, &admin)?;
    app.admin_reset_two_factor(&login, &admin.user.login, &client)
        .await?;
    Ok(Json(json!({"done": true})))
}

async fn policy_get(State(app): State<App>, _: Admin) -> ApiResult {
    // Another node may have changed it since this one last looked.
    app.refresh_policy().await?;
    Ok(Json(json!({"settings": app.policy().settings()})))
}

/// The body of `POST /policy`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    settings: serde_json::Map<String, Value>,
}

async fn policy_post(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    body: Result<Json<PolicyBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    fresh_password(&app, &admin)?;
    let changes: Vec<(String, Option<Value>)> = json_body(body)?
        .settings
        .into_iter()
        .map(|(name, v)| (name, (!v.is_null()).then_some(v)))
        .collect();
    let changed = app
        .change_policy(&admin.user.login, &client, &changes)
        .await?;
    Ok(Json(
        json!({"changed": changed, "settings": app.policy().settings()}),
    ))
}

/// The body of `POST /users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    login: String,
    email: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// The body of `POST /users/{login}/groups`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsBody {
    groups: Vec<String>,
}

fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidInput,
            e.body_text(),
        )
    })
}

async fn users_post(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    body: Result<Json<NewUserBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    fresh_password(&app, &admin)?;
    let b = json_body(body)?;
    let user = app
        .add_user(
            crate::services::users::NewUserInput {
                login: b.login,
                email: Some(b.email),
                display_name: b.display_name,
                groups: b.groups,
                password: None,
                must_change_password: false,
            },
            &admin.user.login,
            &client,
        )
        .await?;
    app.invite_user(&user.login, &admin.user.login, &client)
        .await?;
    Ok(Json(user_json(&user)))
}

async fn user_delete(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    Path(login): Path<String>,
) -> ApiResult {
    fresh_password(&app, &admin)?;
    app.delete_user(&login, &admin.user.login, &client).await?;
    Ok(Json(json!({"done": true})))
}

async fn set_active(
    app: &App,
    admin: &CurrentSession,
    login: &str,
    active: bool,
    client: &crate::services::ClientInfo,
) -> ApiResult {
    fresh_password(app, admin)?;
    app.set_user_active(login, active, &admin.user.login, client)
        .await?;
    Ok(Json(json!({"done": true})))
}

async fn user_disable_post(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    Path(login): Path<String>,
) -> ApiResult {
    set_active(&app, &admin, &login, false, &client).await
}

async fn user_enable_post(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    Path(login): Path<String>,
) -> ApiResult {
    set_active(&app, &admin, &login, true, &client).await
}

async fn user_force_change_post(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    Path(login): Path<String>,
) -> ApiResult {
    fresh_password(&app, &admin)?;
    app.force_password_change(&login, true, &admin.user.login, &client)
        .await?;
    Ok(Json(json!({"done": true})))
}

async fn user_revoke_sessions_post(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    Path(login): Path<String>,
) -> ApiResult {
    fresh_password(&app, &admin)?;
    let n = app
        .revoke_user_sessions(&login, &admin.user.login, &client)
        .await?;
    Ok(Json(json!({"done": true, "revoked": n})))
}

async fn user_revoke_devices_post(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    Path(login): Path<String>,
) -> ApiResult {
    fresh_password(&app, &admin)?;
    let n = app
        .revoke_user_trusted_devices(&login, &admin.user.login, &client)
        .await?;
    Ok(Json(json!({"done": true, "revoked": n})))
}

async fn user_invite_post(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    Path(login): Path<String>,
) -> ApiResult {
    fresh_password(&app, &admin)?;
    app.invite_user(&login, &admin.user.login, &client).await?;
    Ok(Json(json!({"done": true})))
}

async fn user_groups_post(
    State(app): State<App>,
    Client(client): Client,
    Admin(admin): Admin,
    Path(login): Path<String>,
    body: Result<Json<GroupsBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    fresh_password(&app, &admin)?;
    let b = json_body(body)?;
    let user = app
        .update_user_groups(
            &login,
            &[],
            &[],
            Some(&b.groups),
            &admin.user.login,
            &client,
        )
        .await?;
    Ok(Json(user_json(&user)))
}

async fn groups_get(State(app): State<App>, _: Admin) -> ApiResult {
    let mut items = Vec::new();
    for name in [GroupName::ADMINS, GroupName::INTERNAL, GroupName::PORTAL] {
        let group = GroupName::parse(name).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let members = app
            .store
            .count_active_in_group(&group)
            .await
            .map_err(ServiceError::from)?;
        items.push(json!({"name": name, "active_members": members}));
    }
    Ok(Json(json!({ "items": items })))
}

// ---------------------------------------------------------------------------------------
// OpenAPI

fn schemas() -> Value {
    let user = json!({
        "type": "object",
        "required": ["login", "display_name", "active", "groups", "created_at"],
        "properties": {
            "login": {"type": "string"},
            "email": {"type": ["string", "null"]},
            "display_name": {"type": "string"},
            "active": {"type": "boolean"},
            "groups": {"type": "array", "items": {"type": "string"}},
            "created_at": {"type": "integer", "description": "Unix time"},
            "last_login_at": {"type": ["integer", "null"]},
            "password_changed_at": {"type": ["integer", "null"]},
            "must_change_password": {"type": "boolean"},
            "device_account": {"type": "boolean"},
            "locked_until": {"type": ["integer", "null"]},
            "two_factor": {"$ref": "#/components/schemas/TwoFactor"},
        },
    });
    let mut me = user.clone();
    me["required"] = json!(["login", "display_name", "groups", "two_factor"]);
    me["properties"]["csrf_token"] = json!({"type": "string", "description": "Send it as X-CSRF-Token on POST and DELETE (sessions only; absent for an API key)."});
    me["properties"]["password_change_required"] = json!({"type": "boolean"});
    let list = |item: &str| {
        json!({
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}}},
        })
    };
    let mut user_list = list("User");
    user_list["properties"]["limit"] = json!({"type": "integer"});
    user_list["properties"]["offset"] = json!({"type": "integer"});
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": codes},
                    "message": {"type": "string"},
                },
            }},
        },
        "Done": {"type": "object", "required": ["done"], "properties": {"done": {"type": "boolean"}}},
        "OpenApi": {"type": "object", "description": "An OpenAPI 3.1 document."},
        "TwoFactor": {
            "type": "object",
            "properties": {
                "active": {"type": "boolean"},
                "required": {"type": "boolean"},
                "standing": {
                    "type": "object",
                    "required": ["state"],
                    "properties": {
                        "state": {"type": "string", "enum": ["optional", "exempt", "satisfied", "grace", "enrolment_required"]},
                        "deadline": {"type": "integer", "description": "Unix time the grace period ends"},
                    },
                },
                "recovery_codes_left": {"type": "integer"},
                "trusted_devices": {"type": "integer"},
                "session_passed_second_factor": {"type": "boolean"},
            },
        },
        "User": user,
        "Me": me,
        "UserList": user_list,
        "Session": {
            "type": "object",
            "required": ["id", "created_at", "last_seen_at", "two_factor", "current"],
            "properties": {
                "id": {"type": "integer"},
                "created_at": {"type": "integer"},
                "last_seen_at": {"type": "integer"},
                "ip": {"type": ["string", "null"]},
                "user_agent": {"type": ["string", "null"]},
                "two_factor": {"type": "boolean"},
                "current": {"type": "boolean"},
            },
        },
        "SessionList": list("Session"),
        "TrustedDevice": {
            "type": "object",
            "required": ["id", "name", "created_at", "last_used_at", "expires_at"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "created_at": {"type": "integer"},
                "last_used_at": {"type": "integer"},
                "last_ip": {"type": ["string", "null"]},
                "expires_at": {"type": "integer"},
            },
        },
        "TrustedDeviceList": list("TrustedDevice"),
        "Group": {
            "type": "object",
            "required": ["name", "active_members"],
            "properties": {"name": {"type": "string"}, "active_members": {"type": "integer"}},
        },
        "GroupList": list("Group"),
        "ComplianceReport": {
            "type": "object",
            "required": ["generated_at", "stale_days", "totals", "groups", "counts", "events"],
            "properties": {
                "generated_at": {"type": "integer"},
                "stale_days": {"type": "integer"},
                "totals": {"$ref": "#/components/schemas/Coverage"},
                "groups": {"type": "array", "items": {"$ref": "#/components/schemas/Coverage"}},
                "counts": {"type": "object", "properties": {
                    "without_two_factor": {"type": "integer"},
                    "password_expired": {"type": "integer"},
                    "stale": {"type": "integer"},
                    "few_recovery_codes": {"type": "integer"},
                }},
                "events": {"type": "object", "properties": {
                    "two_factor_resets": {"$ref": "#/components/schemas/Last30And90"},
                    "lockouts": {"$ref": "#/components/schemas/Last30And90"},
                }},
                "without_two_factor": {"type": "array", "items": {"$ref": "#/components/schemas/UserCompliance"}},
                "password_expired": {"type": "array", "items": {"$ref": "#/components/schemas/UserCompliance"}},
                "stale": {"type": "array", "items": {"$ref": "#/components/schemas/UserCompliance"}},
                "few_recovery_codes": {"type": "array", "items": {"$ref": "#/components/schemas/UserCompliance"}},
                "truncated": {"type": "boolean"},
            },
        },
        "Coverage": {
            "type": "object",
            "required": ["active", "with_two_factor", "exempt", "percent"],
            "properties": {
                "name": {"type": "string", "description": "The group (absent in totals)"},
                "two_factor_required": {"type": "boolean"},
                "active": {"type": "integer"},
                "with_two_factor": {"type": "integer"},
                "exempt": {"type": "integer", "description": "Device accounts, left out of the share"},
                "percent": {"type": "number", "description": "with_two_factor / (active - exempt), one decimal"},
            },
        },
        "Last30And90": {"type": "object", "properties": {"last_30_days": {"type": "integer"}, "last_90_days": {"type": "integer"}}},
        "UserCompliance": {
            "type": "object",
            "required": ["login", "groups", "two_factor", "standing"],
            "properties": {
                "login": {"type": "string"},
                "email": {"type": ["string", "null"]},
                "display_name": {"type": "string"},
                "groups": {"type": "array", "items": {"type": "string"}},
                "two_factor": {"type": "boolean"},
                "standing": {"type": "string", "enum": ["optional", "exempt", "satisfied", "grace", "enrolment_required"]},
                "grace_deadline": {"type": ["integer", "null"]},
                "recovery_codes_left": {"type": "integer"},
                "last_login_at": {"type": ["integer", "null"]},
                "password_changed_at": {"type": ["integer", "null"]},
                "password_expires_at": {"type": ["integer", "null"]},
                "password_expired": {"type": "boolean"},
                "stale": {"type": "boolean"},
            },
        },
        "AuditEvent": {
            "type": "object",
            "required": ["id", "at", "event", "outcome", "prev_hash", "hash"],
            "properties": {
                "id": {"type": "integer"},
                "at": {"type": "integer", "description": "Unix time"},
                "actor": {"type": ["string", "null"], "description": "Who acted: a login, `cli` or `system`"},
                "subject": {"type": ["string", "null"], "description": "Whom it concerned (a login)"},
                "event": {"type": "string"},
                "outcome": {"type": "string", "enum": ["success", "failure", "denied"]},
                "detail": {"type": ["string", "null"]},
                "ip": {"type": ["string", "null"]},
                "user_agent": {"type": ["string", "null"]},
                "prev_hash": {"type": ["string", "null"], "description": "SHA-256 (hex) of the event before"},
                "hash": {"type": ["string", "null"], "description": "SHA-256 (hex) of this event and prev_hash"},
            },
        },
        "AuditEventList": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEvent"}},
                "next_before": {"type": ["integer", "null"], "description": "Pass as `before` for the next page; null on the last"},
            },
        },
        "Policy": {
            "type": "object",
            "required": ["settings"],
            "properties": {"settings": {"type": "array", "items": {"$ref": "#/components/schemas/Setting"}}},
        },
        "Setting": {
            "type": "object",
            "required": ["name", "value", "set"],
            "properties": {
                "name": {"type": "string", "description": "Dotted, as in the configuration file: `policy.min_length`, `policy.groups.GROUP.RULE`, `two_factor.required_groups`, `sessions.idle_minutes`, `lockout.account.lock_after`…"},
                "value": {"description": "A number, a boolean, the preset name or a list of groups"},
                "set": {"type": "boolean", "description": "Stored explicitly; false: from the preset"},
            },
        },
        "PolicyChange": {
            "type": "object",
            "required": ["changed", "settings"],
            "properties": {
                "changed": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "old": {"description": "null: was not set (from the preset)"},
                        "new": {"description": "null: now from the preset"},
                    },
                }},
                "settings": {"type": "array", "items": {"$ref": "#/components/schemas/Setting"}},
            },
        },
        "AuditVerification": {
            "type": "object",
            "required": ["intact", "checked", "checkpoints", "start"],
            "properties": {
                "intact": {"type": "boolean"},
                "problem": {"type": ["string", "null"], "description": "The first broken link"},
                "checked": {"type": "integer", "description": "Events checked"},
                "checkpoints": {"type": "integer", "description": "Checkpoint signatures checked"},
                "start": {"type": "object", "properties": {
                    "from": {"type": "string", "enum": ["genesis", "checkpoint"]},
                    "after_id": {"type": "integer"},
                    "pruned_at": {"type": "integer"},
                }},
                "head": {"type": ["object", "null"], "properties": {"id": {"type": "integer"}, "hash": {"type": "string"}}},
            },
        },
        "ApiKey": {
            "type": "object",
            "required": ["id", "name", "prefix", "scopes", "created_at", "status"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "prefix": {"type": "string", "description": "The first characters of the key, to recognise it"},
                "scopes": {"type": "array", "items": {"type": "string", "enum": ["gateway", "api:read", "api:write"]}},
                "created_at": {"type": "integer"},
                "expires_at": {"type": ["integer", "null"]},
                "last_used_at": {"type": ["integer", "null"]},
                "revoked_at": {"type": ["integer", "null"]},
                "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
            },
        },
        "ApiKeyList": list("ApiKey"),
        "NewApiKey": {
            "type": "object",
            "required": ["name", "scopes", "password"],
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string"},
                "scopes": {"type": "array", "items": {"type": "string", "enum": ["gateway", "api:read", "api:write"]}},
                "days": {"type": "integer", "minimum": 1, "description": "Lifetime; absent: the configured default"},
                "password": {"type": "string", "description": "The caller's password, checked again"},
            },
        },
        "NewUser": {
            "type": "object",
            "required": ["login", "email"],
            "additionalProperties": false,
            "properties": {
                "login": {"type": "string"},
                "email": {"type": "string"},
                "display_name": {"type": "string"},
                "groups": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Groups": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": false,
            "properties": {"groups": {"type": "array", "items": {"type": "string"}}},
        },
        "PasswordConfirmation": {
            "type": "object",
            "required": ["password"],
            "additionalProperties": false,
            "properties": {"password": {"type": "string", "description": "The caller's password"}},
        },
        "CreatedApiKey": {
            "type": "object",
            "required": ["key", "id", "name", "prefix"],
            "properties": {
                "key": {"type": "string", "description": "The key: shown this once, stored only as a digest"},
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "prefix": {"type": "string"},
                "expires_at": {"type": ["integer", "null"]},
            },
        },
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    })
}

/// The request body schema of the routes that take one.
fn request_schema(e: &Endpoint) -> Option<&'static str> {
    match (e.method, e.path) {
        ("POST", "/me/api-keys") => Some("NewApiKey"),
        ("POST", "/me/confirm-password") => Some("PasswordConfirmation"),
        ("POST", "/users") => Some("NewUser"),
        ("POST", "/users/{login}/groups") => Some("Groups"),
        _ => None,
    }
}

/// The OpenAPI 3.1 document of every route in [`ENDPOINTS`].
pub fn openapi(server_url: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for e in ENDPOINTS {
        let mut responses = serde_json::Map::new();
        responses.insert(
            "200".into(),
            json!({
                "description": "Success",
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", e.response)}}},
            }),
        );
        if e.access != Access::Public {
            responses.insert("401".into(), error_response("Not signed in"));
            responses.insert(
                "403".into(),
                error_response(
                    "CSRF header missing, password change or enrolment due, or not allowed",
                ),
            );
        }
        if e.path.contains('{') {
            responses.insert("404".into(), error_response("No such object"));
        }
        responses.insert("503".into(), error_response("The database is unavailable"));
        let parameters: Vec<Value> = e
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "schema": {"type": if name == "id" { "integer" } else { "string" }},
                })
            })
            .chain(
                (e.path == "/users")
                    .then(|| {
                        [
                            ("search", "string"),
                            ("group", "string"),
                            ("limit", "integer"),
                            ("offset", "integer"),
                        ]
                        .map(|(name, ty)| {
                            json!({"name": name, "in": "query", "required": false, "schema": {"type": ty}})
                        })
                    })
                    .into_iter()
                    .flatten(),
            )
            .collect();
        let mut operation = json!({
            "operationId": format!("{}{}", e.method.to_lowercase(), e.path.replace(['/', '{', '}', '.', '-'], "_")),
            "summary": e.summary,
            "tags": [match e.access { Access::Public => "meta", Access::User => "me", Access::Admin => "admin" }],
            "responses": responses,
        });
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if let Some(schema) = request_schema(e) {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}},
            });
            operation["responses"]["400"] = error_response("Malformed body or invalid values");
        }
        match e.access {
            Access::Public => operation["security"] = json!([]),
            Access::User | Access::Admin => {}
        }
        let entry = paths.entry(e.path.to_string()).or_insert_with(|| json!({}));
        entry[e.method.to_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Bulwark API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Errors are {\"error\": {\"code\", \"message\"}} with stable codes. Unsafe methods need the X-CSRF-Token header returned by GET /me.",
        },
        "servers": [{"url": format!("{server_url}/api/v1")}],
        "security": [{"session": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "bulwark_session", "description": "The session cookie of a full login (named __Host-bulwark_session or __Secure-bulwark_session when cookies are Secure)."},
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key (bwk_...) with the api:read scope, or api:write for POST and DELETE. Not accepted by admin routes. HTTP Basic with the key as the password works too."},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_reference_resolves() {
        let doc = openapi("https://auth.example.com");
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(schemas.contains_key(&name), "missing schema {name}");
        }
        for e in ENDPOINTS {
            assert!(
                doc["paths"][e.path][e.method.to_lowercase()].is_object(),
                "{} {} not documented",
                e.method,
                e.path
            );
        }
    }
}
