//! Second-factor pages: the second login step and the account security page (enrolment,
//! recovery codes, turning 2FA off, trusted devices).

use super::error::{throttle_message, with_retry_after, PageError};
use super::extract::{set_cookie, Client, CsrfCookie, EnrolmentAllowed, HalfSignedIn};
use super::pages::{
    after_login_target, form, render, safe_next, see_other, session_cookie, url_encode,
    DEVICE_COOKIE,
};
use crate::app::App;
use crate::clock::format_time;
use crate::services::ServiceError;
use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bulwark_core::enforcement::Standing;
use bulwark_core::recovery::RecoveryCode;
use serde::Deserialize;

#[derive(Template)]
#[template(path = "login_2fa.html")]
struct SecondStepPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    next: &'a str,
    totp: bool,
    email: bool,
    remember_days: u32,
    error: Option<String>,
    notice: Option<&'a str>,
}

#[derive(Debug, Deserialize, Default)]
pub struct NextQuery {
    #[serde(default)]
    next: String,
    #[serde(default)]
    sent: String,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    done: String,
}

async fn second_step_page(
    app: &App,
    csrf: &CsrfCookie,
    current: &crate::services::auth::CurrentSession,
    next: &str,
    status: StatusCode,
    error: Option<String>,
    notice: Option<&str>,
) -> Result<Response, PageError> {
    let options = app.second_factor_options(current).await?;
    Ok(render(
        status,
        &SecondStepPage {
            title: "Second step",
            signed_in: None,
            csrf: csrf.form_token(app),
            next,
            totp: options.totp,
            email: options.email,
            remember_days: options.remember_days,
            error,
            notice,
        },
    ))
}

pub async fn login_2fa_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    HalfSignedIn(current): HalfSignedIn,
    query: Result<Query<NextQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let next = safe_next(&app, &q.next).unwrap_or_default();
    let notice = (q.sent == "1")
        .then_some("We sent a code to your e-mail address. It works for 10 minutes.");
    second_step_page(&app, &csrf, &current, &next, StatusCode::OK, None, notice).await
}

#[derive(Debug, Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    remember: String,
    #[serde(default)]
    next: String,
}

pub async fn login_2fa_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    HalfSignedIn(current): HalfSignedIn,
    Client(client): Client,
    body: Result<Form<CodeForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    let next = safe_next(&app, &f.next).unwrap_or_default();
    match app
        .complete_second_factor(&current, &f.code, f.remember == "1", &client)
        .await
    {
        Ok(done) => {
            let mut cookies = vec![session_cookie(&app, done.token.expose())];
            if let Some(device) = &done.trusted_device {
                let days = i64::from(app.policy().two_factor.trusted_device_days);
                cookies.push(set_cookie(
                    &app,
                    DEVICE_COOKIE,
                    device.expose(),
                    Some(days * 86_400),
                ));
            }
            Ok(see_other(
                &after_login_target(current.change_required, done.standing, &next),
                cookies,
            ))
        }
        Err(ServiceError::InvalidInput(m)) => {
            second_step_page(
                &app,
                &csrf,
                &current,
                &next,
                StatusCode::UNAUTHORIZED,
                Some(m),
                None,
            )
            .await
        }
        Err(ServiceError::Throttled {
            retry_after,
            locked,
        }) => {
            let page = second_step_page(
                &app,
                &csrf,
                &current,
                &next,
                StatusCode::TOO_MANY_REQUESTS,
                Some(throttle_message(retry_after, locked)),
                None,
            )
            .await?;
            Ok(with_retry_after(page, retry_after))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct NextForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    next: String,
}

pub async fn login_2fa_email_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    HalfSignedIn(current): HalfSignedIn,
    Client(client): Client,
    body: Result<Form<NextForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    let next = safe_next(&app, &f.next).unwrap_or_default();
    match app.send_login_email_code(&current, &client).await {
        Ok(()) => Ok(see_other(
            &format!("/login/2fa?sent=1&next={}", url_encode(&next)),
            Vec::new(),
        )),
        Err(ServiceError::Throttled { retry_after, .. }) => {
            let page = second_step_page(
                &app,
                &csrf,
                &current,
                &next,
                StatusCode::TOO_MANY_REQUESTS,
                Some(
                    "You asked for too many codes. Use the last one you received, or wait an hour."
                        .into(),
                ),
                None,
            )
            .await?;
            Ok(with_retry_after(page, retry_after))
        }
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------
// Account security page

struct EnrolmentRow {
    qr_base64: String,
    secret: String,
    uri: String,
}

struct DeviceRow {
    id: i64,
    name: String,
    ip: String,
    created: String,
    last_used: String,
    expires: String,
}

#[derive(Template)]
#[template(path = "security.html")]
struct SecurityPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    login: &'a str,
    active: bool,
    pending: bool,
    required: bool,
    recovery_left: u32,
    enrolment: Option<EnrolmentRow>,
    devices: Vec<DeviceRow>,
    banner: Option<String>,
    notice: Option<&'a str>,
    error: Option<String>,
    later: Option<String>,
    /// Where to continue after enrolment (a safe target, or empty).
    next: String,
    show_account_link: bool,
}

async fn security_page(
    app: &App,
    csrf: &CsrfCookie,
    current: &crate::services::auth::CurrentSession,
    q: &NextQuery,
    status: StatusCode,
    error: Option<String>,
) -> Result<Response, PageError> {
    let user = &current.user;
    let st = app.two_factor_status(user).await?;
    let enrolment = app.pending_enrolment(user).await?.map(|e| EnrolmentRow {
        qr_base64: STANDARD.encode(e.qr_svg.as_bytes()),
        secret: e.secret_grouped.expose().to_string(),
        uri: e.uri.expose().to_string(),
    });
    let banner = match st.standing {
        Standing::Grace { deadline } => Some(format!("Your organisation requires two-factor authentication. Set it up before {}; after that you will not be able to use your account until you do.", format_time(deadline))),
        Standing::EnrolmentRequired => Some("Your organisation requires two-factor authentication. Set it up now to continue.".into()),
        _ if q.prompt == "required" && !st.active => Some("The application you opened requires two-factor authentication. Set it up below; you will then go on to it.".into()),
        _ => None,
    };
    let later = match st.standing {
        Standing::Grace { .. } if q.prompt == "grace" => {
            Some(safe_next(app, &q.next).unwrap_or_else(|| "/account".into()))
        }
        _ => None,
    };
    let notice = match q.done.as_str() {
        "disabled" => {
            Some("Two-factor authentication is off. Your trusted devices were forgotten.")
        }
        "device" => Some("That device was forgotten."),
        "devices" => Some("Every trusted device was forgotten."),
        _ => None,
    };
    let devices = st
        .trusted_devices
        .iter()
        .map(|d| DeviceRow {
            id: d.id,
            name: d.name.clone(),
            ip: d.last_ip.clone().unwrap_or_else(|| "unknown".into()),
            created: format_time(d.created_at),
            last_used: format_time(d.last_used_at),
            expires: format_time(d.expires_at),
        })
        .collect();
    Ok(render(
        status,
        &SecurityPage {
            title: "Account security",
            signed_in: Some(user.login.clone()),
            csrf: csrf.form_token(app),
            login: &user.login,
            active: st.active,
            pending: st.pending,
            required: st.required,
            recovery_left: st.recovery_codes_left,
            enrolment,
            devices,
            banner,
            notice,
            error,
            later,
            next: safe_next(app, &q.next).unwrap_or_default(),
            show_account_link: st.standing != Standing::EnrolmentRequired,
        },
    ))
}

pub async fn security_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    EnrolmentAllowed(current): EnrolmentAllowed,
    query: Result<Query<NextQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    security_page(&app, &csrf, &current, &q, StatusCode::OK, None).await
}

#[derive(Debug, Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

async fn page_error(
    app: &App,
    csrf: &CsrfCookie,
    current: &crate::services::auth::CurrentSession,
    e: ServiceError,
) -> Result<Response, PageError> {
    match e {
        ServiceError::InvalidInput(m) | ServiceError::Refused(m) => {
            security_page(
                app,
                csrf,
                current,
                &NextQuery::default(),
                StatusCode::BAD_REQUEST,
                Some(m),
            )
            .await
        }
        other => Err(other.into()),
    }
}

pub async fn enrol_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    EnrolmentAllowed(current): EnrolmentAllowed,
    Client(client): Client,
    body: Result<Form<PasswordForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    match app.begin_enrolment(&current, f.password, &client).await {
        Ok(()) => Ok(see_other(
            &match safe_next(&app, &f.next) {
                Some(next) => format!("/account/security?next={}", url_encode(&next)),
                None => "/account/security".into(),
            },
            Vec::new(),
        )),
        Err(e) => page_error(&app, &csrf, &current, e).await,
    }
}

#[derive(Template)]
#[template(path = "recovery_codes.html")]
struct RecoveryCodesPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    codes: Vec<String>,
    download: String,
    next: &'a str,
}

fn codes_page(
    app: &App,
    csrf: &CsrfCookie,
    login: &str,
    codes: &[RecoveryCode],
    next: Option<String>,
    cookie: Option<axum::http::HeaderValue>,
) -> Response {
    let next = next.unwrap_or_else(|| "/account/security".into());
    let shown: Vec<String> = codes.iter().map(|c| c.display().to_string()).collect();
    let text = format!(
        "Bulwark recovery codes for {login}\nEach code works once.\n\n{}\n",
        shown.join("\n")
    );
    let mut res = render(
        StatusCode::OK,
        &RecoveryCodesPage {
            title: "Recovery codes",
            signed_in: Some(login.to_string()),
            csrf: csrf.form_token(app),
            codes: shown,
            download: url_encode(&text),
            next: &next,
        },
    );
    if let Some(c) = cookie {
        res.headers_mut().append(axum::http::header::SET_COOKIE, c);
    }
    res
}

#[derive(Debug, Deserialize)]
pub struct ConfirmForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    next: String,
}

pub async fn confirm_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    EnrolmentAllowed(current): EnrolmentAllowed,
    Client(client): Client,
    body: Result<Form<ConfirmForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    match app.confirm_enrolment(&current, &f.code, &client).await {
        Ok((codes, token)) => Ok(codes_page(
            &app,
            &csrf,
            &current.user.login,
            &codes,
            safe_next(&app, &f.next),
            Some(session_cookie(&app, token.expose())),
        )),
        Err(ServiceError::Throttled {
            retry_after,
            locked,
        }) => Err(PageError::TooMany {
            retry_after,
            locked,
        }),
        Err(e) => page_error(&app, &csrf, &current, e).await,
    }
}

pub async fn recovery_codes_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    EnrolmentAllowed(current): EnrolmentAllowed,
    Client(client): Client,
    body: Result<Form<PasswordForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    match app
        .regenerate_recovery_codes(&current, f.password, &client)
        .await
    {
        Ok(codes) => Ok(codes_page(
            &app,
            &csrf,
            &current.user.login,
            &codes,
            None,
            None,
        )),
        Err(e) => page_error(&app, &csrf, &current, e).await,
    }
}

pub async fn disable_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    EnrolmentAllowed(current): EnrolmentAllowed,
    Client(client): Client,
    body: Result<Form<PasswordForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    match app.disable_two_factor(&current, f.password, &client).await {
        Ok(token) => Ok(see_other(
            "/account/security?done=disabled",
            vec![
                session_cookie(&app, token.expose()),
                set_cookie(&app, DEVICE_COOKIE, "", Some(0)),
            ],
        )),
        Err(e) => page_error(&app, &csrf, &current, e).await,
    }
}

#[derive(Debug, Deserialize)]
pub struct DeviceForm {
    #[serde(default)]
    csrf_token: String,
    device_id: i64,
}

pub async fn device_revoke_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    EnrolmentAllowed(current): EnrolmentAllowed,
    Client(client): Client,
    body: Result<Form<DeviceForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    app.revoke_trusted_device(&current.user, f.device_id, &client)
        .await?;
    Ok(see_other("/account/security?done=device", Vec::new()))
}

pub async fn devices_revoke_all_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    EnrolmentAllowed(current): EnrolmentAllowed,
    Client(client): Client,
    body: Result<Form<NextForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    app.revoke_all_trusted_devices(&current, &client).await?;
    Ok(see_other(
        "/account/security?done=devices",
        vec![set_cookie(&app, DEVICE_COOKIE, "", Some(0))],
    ))
}
