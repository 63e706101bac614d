//! The admin console: pages for members of `admins` whose session passed a second factor.

use super::error::PageError;
use super::extract::{CsrfCookie, SignedIn};
use super::pages::render;
use crate::app::App;
use crate::clock::format_time;
use crate::services::auth::CurrentSession;
use crate::services::compliance::{
    report_json, ComplianceOptions, Coverage, CsvWriter, UserCompliance,
};
use askama::Template;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bulwark_core::account::GroupName;
use serde::Deserialize;

/// Rows of each list shown on the compliance page (the downloads have everyone).
const PAGE_LIST_LIMIT: usize = 200;

/// A signed-in administrator whose session passed a second factor.
pub struct AdminSession(pub CurrentSession);

impl FromRequestParts<App> for AdminSession {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let SignedIn(current) = SignedIn::from_request_parts(parts, app).await?;
        if !current.user.in_group(GroupName::ADMINS) {
            return Err(PageError::Forbidden(
                "This page is for administrators.".into(),
            ));
        }
        if !current.session.two_factor {
            return Err(PageError::Forbidden(
                "Administration needs a login with a second factor. Set up two-factor authentication, then log out and in again.".into(),
            ));
        }
        Ok(Self(current))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ComplianceQuery {
    stale_days: Option<String>,
    invited: Option<String>,
}

impl ComplianceQuery {
    pub fn options(
        query: Result<Query<Self>, QueryRejection>,
    ) -> Result<ComplianceOptions, String> {
        let q = query.map(|Query(q)| q).map_err(|e| e.body_text())?;
        let mut options = ComplianceOptions::default();
        if let Some(days) = q.stale_days.filter(|d| !d.trim().is_empty()) {
            options.stale_days = days
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|d| (1..=3650).contains(d))
                .ok_or("stale_days must be a number of days between 1 and 3650")?;
        }
        Ok(options)
    }
}

struct GroupRow {
    name: String,
    required: bool,
    active: u64,
    with_two_factor: u64,
    exempt: u64,
    percent: String,
}

struct ListRow {
    login: String,
    groups: String,
    detail: String,
    last_login: String,
}

struct List {
    title: &'static str,
    detail_label: &'static str,
    count: u64,
    truncated: bool,
    rows: Vec<ListRow>,
}

#[derive(Template)]
#[template(path = "admin_compliance.html")]
struct CompliancePage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    generated: String,
    summary: &'a crate::services::compliance::ComplianceSummary,
    all: &'a Coverage,
    all_percent: String,
    groups: Vec<GroupRow>,
    lists: Vec<List>,
    notice: Option<String>,
    fresh: bool,
}

fn percent(c: &Coverage) -> String {
    format!("{:.1} %", c.percent())
}

fn list(
    title: &'static str,
    detail_label: &'static str,
    count: u64,
    users: &[UserCompliance],
    detail: impl Fn(&UserCompliance) -> String,
) -> List {
    List {
        title,
        detail_label,
        count,
        truncated: (users.len() as u64) < count,
        rows: users
            .iter()
            .map(|u| ListRow {
                login: u.login.clone(),
                groups: u.groups.join(", "),
                detail: detail(u),
                last_login: u
                    .last_login_at
                    .map(format_time)
                    .unwrap_or_else(|| "never".into()),
            })
            .collect(),
    }
}

pub async fn compliance_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    AdminSession(current): AdminSession,
    query: Result<Query<ComplianceQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let invited = query
        .as_ref()
        .ok()
        .and_then(|Query(q)| q.invited.as_deref())
        .and_then(|n| n.parse::<u64>().ok());
    let options = ComplianceQuery::options(query).map_err(PageError::BadRequest)?;
    let r = app
        .compliance_report(options, Some(PAGE_LIST_LIMIT))
        .await?;
    let s = &r.summary;
    let groups = s
        .groups
        .iter()
        .map(|(name, (required, c))| GroupRow {
            name: name.clone(),
            required: *required,
            active: c.active,
            with_two_factor: c.with_two_factor,
            exempt: c.exempt,
            percent: percent(c),
        })
        .collect();
    let time = |t: Option<i64>| t.map(format_time).unwrap_or_else(|| "never".into());
    let lists = vec![
        list(
            "Users without two-factor",
            "Enrolment",
            s.without_two_factor,
            &r.without_two_factor,
            |u| match u.grace_deadline() {
                Some(d) => format!("due by {}", format_time(d)),
                None if u.standing_name() == "enrolment_required" => "overdue".into(),
                None => "not required".into(),
            },
        ),
        list(
            "Passwords past expiry",
            "Expired",
            s.password_expired,
            &r.password_expired,
            |u| time(u.password_expires_at),
        ),
        list(
            "No login recently",
            "Last password change",
            s.stale,
            &r.stale,
            |u| time(u.password_changed_at),
        ),
        list(
            "Two or fewer recovery codes left",
            "Codes left",
            s.few_recovery_codes,
            &r.few_recovery_codes,
            |u| u.recovery_codes_left.to_string(),
        ),
    ];
    Ok(render(
        StatusCode::OK,
        &CompliancePage {
            title: "Compliance",
            signed_in: Some(current.user.login.clone()),
            csrf: csrf.form_token(&app),
            generated: format_time(s.generated_at),
            summary: s,
            all: &s.all,
            all_percent: percent(&s.all),
            groups,
            lists,
            notice: invited.map(|n| {
                format!("{n} users without two-factor authentication were mailed an invitation.")
            }),
            fresh: app.password_fresh(&current, app.now()),
        },
    ))
}

pub async fn compliance_csv_get(
    State(app): State<App>,
    _: AdminSession,
    query: Result<Query<ComplianceQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let options = ComplianceQuery::options(query).map_err(PageError::BadRequest)?;
    Ok(compliance_csv(app, options))
}

pub async fn compliance_json_get(
    State(app): State<App>,
    _: AdminSession,
    query: Result<Query<ComplianceQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let options = ComplianceQuery::options(query).map_err(PageError::BadRequest)?;
    let report = app.compliance_report(options, None).await?;
    let mut res = axum::Json(report_json(&report)).into_response();
    attachment(&mut res, &app, "compliance", "json");
    Ok(res)
}

/// Marks a response as a download named `bulwark-{what}-{date}.{extension}`.
fn attachment(res: &mut Response, app: &App, what: &str, extension: &str) {
    let date = crate::clock::format_iso(app.now());
    let name = format!(
        "attachment; filename=\"bulwark-{what}-{}.{extension}\"",
        date.get(..10).unwrap_or("export")
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
}

type Chunks = http_body_util::channel::Sender<Bytes, std::io::Error>;

/// A download whose body `produce` sends a chunk at a time: it waits while the client reads,
/// so memory stays bounded at any size. If `produce` gives up (an error, logged by it), the
/// response is cut off: the client sees an incomplete transfer, never a short file that looks
/// whole.
fn streamed_download<F, Fut>(
    app: &App,
    content_type: &'static str,
    what: &str,
    extension: &str,
    produce: F,
) -> Response
where
    F: FnOnce(Chunks) -> Fut,
    Fut: std::future::Future<Output = Result<(), Chunks>> + Send + 'static,
{
    let (tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
    let job = produce(tx);
    tokio::spawn(async move {
        if let Err(tx) = job.await {
            tx.abort(std::io::Error::other("the export failed"));
        }
    });
    let mut res = Response::new(Body::new(body));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    attachment(&mut res, app, what, extension);
    res
}

/// The CSV export as a streamed body: one page of users at a time, paused while the client
/// reads, so memory stays bounded at any number of users. A database failure midway cuts the
/// response (the client sees an incomplete transfer, never a partial file that looks whole).
pub fn compliance_csv(app: App, options: ComplianceOptions) -> Response {
    let task_app = app.clone();
    streamed_download(
        &app,
        "text/csv; charset=utf-8",
        "compliance",
        "csv",
        move |mut tx| async move {
            if tx
                .send_data(Bytes::from_static(CsvWriter::HEADER.as_bytes()))
                .await
                .is_err()
            {
                return Ok(());
            }
            let failed = |e: ServiceError| {
                tracing::error!(error = %e, "compliance export failed");
            };
            let mut scan = match task_app.compliance_csv_scan(options).await {
                Ok(scan) => scan,
                Err(e) => {
                    failed(e);
                    return Err(tx);
                }
            };
            loop {
                match scan.next_csv().await {
                    Ok(Some(text)) => {
                        if !text.is_empty() && tx.send_data(Bytes::from(text)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        failed(e);
                        return Err(tx);
                    }
                }
            }
        },
    )
}

// ---------------------------------------------------------------------------------------
// Users

use super::extract::Client;
use super::pages::{form, see_other, url_encode};
use crate::services::admin::UserStatus;
use crate::services::users::NewUserInput;
use crate::services::{browser_name, ClientInfo, ServiceError};
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path};
use bulwark_store::AuditFilter;

pub async fn admin_root_get(_: AdminSession) -> Response {
    see_other("/admin/users", Vec::new())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UsersQuery {
    q: String,
    group: String,
    status: String,
    after: String,
    done: String,
}

struct UserRow {
    login: String,
    name: String,
    groups: String,
    two_factor: &'static str,
    last_login: String,
    password_changed: String,
    state: String,
}

#[derive(Template)]
#[template(path = "admin_users.html")]
struct UsersPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    notice: Option<String>,
    q: String,
    group: String,
    groups: Vec<String>,
    status: &'static str,
    statuses: Vec<(&'static str, &'static str)>,
    rows: Vec<UserRow>,
    paged: bool,
    first_href: String,
    next_href: Option<String>,
}

/// The query parameters, or a 400 page saying what is wrong with them.
pub(super) fn query_params<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, PageError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| PageError::BadRequest(e.body_text()))
}

fn some_text(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

pub async fn users_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    AdminSession(current): AdminSession,
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let q = query_params(query)?;
    let status = if q.status.is_empty() {
        UserStatus::All
    } else {
        UserStatus::parse(&q.status)
            .ok_or_else(|| PageError::BadRequest("Unknown filter.".into()))?
    };
    let page = app
        .admin_user_page(
            some_text(&q.q),
            some_text(&q.group),
            status,
            some_text(&q.after),
        )
        .await?;
    let mut locked = std::collections::HashSet::new();
    for u in &page.users {
        if app.user_lock(&u.user).await?.is_some() {
            locked.insert(u.user.id);
        }
    }
    let rows = page
        .users
        .iter()
        .map(|u| {
            let mut state = Vec::new();
            if !u.user.active {
                state.push("disabled");
            }
            if locked.contains(&u.user.id) {
                state.push("locked");
            }
            if u.user.device_account {
                state.push("device account");
            }
            if u.user.must_change_password {
                state.push("must change password");
            }
            UserRow {
                login: u.user.login.clone(),
                name: u.user.display_name.clone(),
                groups: u.user.groups.join(", "),
                two_factor: if u.totp_active { "on" } else { "off" },
                last_login: u
                    .user
                    .last_login_at
                    .map(format_time)
                    .unwrap_or_else(|| "never".into()),
                password_changed: u
                    .user
                    .password_changed_at
                    .map(format_time)
                    .unwrap_or_else(|| "not set".into()),
                state: if state.is_empty() {
                    "active".into()
                } else {
                    state.join(", ")
                },
            }
        })
        .collect();
    let base = format!(
        "/admin/users?q={}&group={}&status={}",
        url_encode(q.q.trim()),
        url_encode(q.group.trim()),
        status.as_str()
    );
    let notice = match q.done.as_str() {
        "deleted" => Some("The user was deleted.".to_string()),
        _ => None,
    };
    Ok(render(
        StatusCode::OK,
        &UsersPage {
            title: "Users",
            signed_in: Some(current.user.login.clone()),
            csrf: csrf.form_token(&app),
            notice,
            q: q.q.trim().to_string(),
            group: q.group.trim().to_string(),
            groups: app.known_groups(),
            status: status.as_str(),
            statuses: UserStatus::ALL
                .iter()
                .map(|s| (s.as_str(), s.label()))
                .collect(),
            rows,
            paged: !q.after.is_empty(),
            next_href: page
                .next_after
                .map(|after| format!("{base}&after={}", url_encode(&after))),
            first_href: base,
        },
    ))
}

struct Action {
    name: &'static str,
    label: &'static str,
    hint: &'static str,
    danger: bool,
}

#[derive(Template)]
#[template(path = "admin_user.html")]
struct UserDetailPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    notice: Option<String>,
    error: Option<String>,
    user: &'a bulwark_store::UserRecord,
    groups: String,
    groups_value: String,
    state: String,
    two_factor: String,
    codes_left: u32,
    password: String,
    last_login: String,
    created: String,
    fresh: bool,
    actions: Vec<Action>,
    sessions: Vec<(String, String, String, String, &'static str)>,
    devices: Vec<(String, String, String, String)>,
    keys: Vec<(String, String, String, String, &'static str)>,
    events: Vec<(String, String, String, String, String, String)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DetailQuery {
    done: String,
}

pub async fn user_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    AdminSession(current): AdminSession,
    Path(login): Path<String>,
    query: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let done = query.map(|Query(q)| q.done).unwrap_or_default();
    user_page(
        &app,
        &csrf,
        &current,
        &login,
        notice_for(&done),
        None,
        StatusCode::OK,
    )
    .await
}

fn notice_for(done: &str) -> Option<String> {
    Some(
        match done {
            "unlock" => "The account is unlocked.",
            "reset-2fa" => {
                "Two-factor authentication was reset; the user was mailed and must enrol again."
            }
            "disable" => {
                "The account is disabled; its sessions, trusted browsers and API keys are gone."
            }
            "enable" => "The account is enabled again.",
            "force-password-change" => "The user must choose a new password at the next login.",
            "revoke-sessions" => "Every session of the user was ended.",
            "revoke-devices" => "Every trusted browser of the user was forgotten.",
            "groups" => "The groups were changed.",
            "invite" => "An invitation was mailed.",
            "created" => "The user was created and invited by e-mail.",
            _ => return None,
        }
        .to_string(),
    )
}

async fn user_page(
    app: &App,
    csrf: &CsrfCookie,
    current: &CurrentSession,
    login: &str,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response, PageError> {
    let user = app.user_by_login(login).await.map_err(|e| match e {
        ServiceError::InvalidInput(_) => PageError::NotFound,
        e => e.into(),
    })?;
    let now = app.now();
    let tf = app.two_factor_status(&user).await?;
    let locked_until = app.user_lock(&user).await?;
    let policy = app.policy_for(&user.groups);
    let mut state = vec![if user.active { "active" } else { "disabled" }.to_string()];
    if let Some(until) = locked_until {
        state.push(format!("locked until {}", format_time(until)));
    }
    if user.device_account {
        state.push(format!(
            "device account (networks: {})",
            user.allowed_networks.join(", ")
        ));
    }
    if user.must_change_password {
        state.push("must change password".into());
    }
    let two_factor = if tf.active {
        "on".to_string()
    } else {
        match tf.standing {
            bulwark_core::enforcement::Standing::Grace { deadline } => {
                format!("off, required by {}", format_time(deadline))
            }
            bulwark_core::enforcement::Standing::EnrolmentRequired => {
                "off, required and overdue".into()
            }
            bulwark_core::enforcement::Standing::Exempt => "exempt (device account)".into(),
            _ => "off".into(),
        }
    };
    let password = match (user.has_password, user.password_changed_at) {
        (false, _) => "not set".to_string(),
        (true, Some(at)) => match policy.expires_at(at) {
            Some(exp) if exp <= now => {
                format!("changed {}, expired {}", format_time(at), format_time(exp))
            }
            Some(exp) => format!("changed {}, expires {}", format_time(at), format_time(exp)),
            None => format!("changed {}", format_time(at)),
        },
        (true, None) => "set".into(),
    };
    let sessions = app
        .store
        .list_user_sessions(user.id)
        .await
        .map_err(ServiceError::from)?
        .into_iter()
        .map(|s| {
            (
                browser_name(s.user_agent.as_deref()),
                s.ip.unwrap_or_else(|| "unknown".into()),
                format_time(s.created_at),
                format_time(s.last_seen_at),
                if s.two_factor { "yes" } else { "no" },
            )
        })
        .collect();
    let devices = tf
        .trusted_devices
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                d.last_ip.clone().unwrap_or_else(|| "unknown".into()),
                format_time(d.last_used_at),
                format_time(d.expires_at),
            )
        })
        .collect();
    let keys = app
        .store
        .list_user_api_keys(user.id)
        .await
        .map_err(ServiceError::from)?
        .into_iter()
        .map(|k| {
            let status = if k.revoked_at.is_some() {
                "revoked"
            } else if k.expires_at.is_some_and(|e| e <= now) {
                "expired"
            } else {
                "active"
            };
            (
                k.name,
                k.display_prefix,
                k.scopes.to_stored(),
                k.last_used_at
                    .map(format_time)
                    .unwrap_or_else(|| "never".into()),
                status,
            )
        })
        .collect();
    let events = app
        .search_audit(&AuditFilter {
            subject: Some(user.login.clone()),
            limit: 20,
            ..Default::default()
        })
        .await?
        .into_iter()
        .map(|e| {
            (
                format_time(e.at),
                e.event,
                e.outcome,
                e.actor.unwrap_or_default(),
                e.ip.unwrap_or_default(),
                e.detail.unwrap_or_default(),
            )
        })
        .collect();
    let mut actions = Vec::new();
    let mut add = |name, label, hint, danger| {
        actions.push(Action {
            name,
            label,
            hint,
            danger,
        })
    };
    if locked_until.is_some() {
        add("unlock", "Unlock", "Lifts the login lock now.", false);
    }
    if tf.active || tf.pending {
        add("reset-2fa", "Reset two-factor", "Removes the authenticator, recovery codes, trusted browsers and sessions; the user is mailed and must enrol again.", true);
    }
    add(
        "force-password-change",
        "Require a new password",
        "The user must choose a new password at the next login.",
        false,
    );
    add(
        "revoke-sessions",
        "End every session",
        "Logs the user out everywhere.",
        false,
    );
    add(
        "revoke-devices",
        "Forget trusted browsers",
        "Every browser must pass the second factor again.",
        false,
    );
    add(
        "groups",
        "Save groups",
        "Members of admins administer Bulwark.",
        false,
    );
    if user.email.is_some() {
        add(
            "invite",
            "Send an invitation",
            "Mails a link to choose a password (for a new user, or one who lost access).",
            false,
        );
    }
    if user.active {
        add(
            "disable",
            "Disable the account",
            "Ends its sessions and revokes its trusted browsers and API keys.",
            true,
        );
    } else {
        add(
            "enable",
            "Enable the account",
            "The user can log in again.",
            false,
        );
    }
    add(
        "delete",
        "Delete the account",
        "Removes the user and everything that belongs to them. The audit log keeps their events.",
        true,
    );
    Ok(render(
        status,
        &UserDetailPage {
            title: &user.login,
            signed_in: Some(current.user.login.clone()),
            csrf: csrf.form_token(app),
            notice,
            error,
            groups: if user.groups.is_empty() {
                "none".into()
            } else {
                user.groups.join(", ")
            },
            groups_value: user.groups.join(", "),
            state: state.join("; "),
            two_factor,
            codes_left: tf.recovery_codes_left,
            password,
            last_login: user
                .last_login_at
                .map(format_time)
                .unwrap_or_else(|| "never".into()),
            created: format_time(user.created_at),
            fresh: app.password_fresh(current, now),
            actions,
            sessions,
            devices,
            keys,
            events,
            user: &user,
        },
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ActionForm {
    csrf_token: String,
    action: String,
    password: String,
    groups: String,
    confirm: String,
}

/// Opens sensitive acts: a recent password check, or the password typed in the form.
pub(super) async fn require_fresh_password(
    app: &App,
    current: &CurrentSession,
    password: String,
    client: &ClientInfo,
) -> Result<(), ServiceError> {
    if app.password_fresh(current, app.now()) {
        return Ok(());
    }
    if password.is_empty() {
        return Err(ServiceError::InvalidInput(
            "Type your password to confirm: it was last checked more than 10 minutes ago.".into(),
        ));
    }
    app.confirm_password(current, password, client).await
}

pub async fn user_action_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    AdminSession(current): AdminSession,
    Client(client): Client,
    Path(login): Path<String>,
    body: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    let actor = current.user.login.clone();
    let result = async {
        require_fresh_password(&app, &current, f.password, &client).await?;
        match f.action.as_str() {
            "unlock" => app.unlock_user(&login, &actor, &client).await,
            "reset-2fa" => app.admin_reset_two_factor(&login, &actor, &client).await,
            "disable" | "enable" => app
                .set_user_active(&login, f.action == "enable", &actor, &client)
                .await
                .map(drop),
            "force-password-change" => {
                app.force_password_change(&login, true, &actor, &client)
                    .await
            }
            "revoke-sessions" => app
                .revoke_user_sessions(&login, &actor, &client)
                .await
                .map(drop),
            "revoke-devices" => app
                .revoke_user_trusted_devices(&login, &actor, &client)
                .await
                .map(drop),
            "groups" => {
                let groups: Vec<String> = f
                    .groups
                    .split(',')
                    .map(|g| g.trim().to_string())
                    .filter(|g| !g.is_empty())
                    .collect();
                app.update_user_groups(&login, &[], &[], Some(&groups), &actor, &client)
                    .await
                    .map(drop)
            }
            "invite" => app.invite_user(&login, &actor, &client).await.map(drop),
            "delete" if f.confirm == "yes" => app.delete_user(&login, &actor, &client).await,
            "delete" => Err(ServiceError::InvalidInput(
                "Tick the box to confirm the deletion.".into(),
            )),
            _ => Err(ServiceError::InvalidInput("Unknown action.".into())),
        }
    }
    .await;
    match result {
        Ok(()) if f.action == "delete" => Ok(see_other("/admin/users?done=deleted", Vec::new())),
        Ok(()) => Ok(see_other(
            &format!("/admin/users/{}?done={}", url_encode(&login), f.action),
            Vec::new(),
        )),
        // Mistakes the admin can fix are shown on the user's page, with what was refused.
        Err(
            ServiceError::InvalidInput(m) | ServiceError::Refused(m) | ServiceError::Conflict(m),
        ) => {
            user_page(
                &app,
                &csrf,
                &current,
                &login,
                None,
                Some(m),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NewUserForm {
    csrf_token: String,
    login: String,
    email: String,
    display_name: String,
    groups: String,
    password: String,
}

#[derive(Template)]
#[template(path = "admin_user_new.html")]
struct NewUserPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    error: Option<String>,
    login: String,
    email: String,
    display_name: String,
    groups: String,
    fresh: bool,
}

pub async fn user_new_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    AdminSession(current): AdminSession,
) -> Response {
    render(
        StatusCode::OK,
        &NewUserPage {
            title: "Add a user",
            signed_in: Some(current.user.login.clone()),
            csrf: csrf.form_token(&app),
            error: None,
            login: String::new(),
            email: String::new(),
            display_name: String::new(),
            groups: "internal".into(),
            fresh: app.password_fresh(&current, app.now()),
        },
    )
}

pub async fn user_new_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    AdminSession(current): AdminSession,
    Client(client): Client,
    body: Result<Form<NewUserForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    let actor = current.user.login.clone();
    let groups: Vec<String> = f
        .groups
        .split(',')
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    let result = async {
        require_fresh_password(&app, &current, f.password.clone(), &client).await?;
        if f.email.trim().is_empty() {
            return Err(ServiceError::InvalidInput(
                "An e-mail address is needed to send the invitation.".into(),
            ));
        }
        let user = app
            .add_user(
                NewUserInput {
                    login: f.login.trim().to_string(),
                    email: Some(f.email.trim().to_string()),
                    display_name: f.display_name.trim().to_string(),
                    groups,
                    password: None,
                    must_change_password: false,
                },
                &actor,
                &client,
            )
            .await?;
        app.invite_user(&user.login, &actor, &client).await?;
        Ok(user.login)
    }
    .await;
    match result {
        Ok(login) => Ok(see_other(
            &format!("/admin/users/{}?done=created", url_encode(&login)),
            Vec::new(),
        )),
        Err(
            ServiceError::InvalidInput(m) | ServiceError::Refused(m) | ServiceError::Conflict(m),
        ) => Ok(render(
            StatusCode::BAD_REQUEST,
            &NewUserPage {
                title: "Add a user",
                signed_in: Some(current.user.login.clone()),
                csrf: csrf.form_token(&app),
                error: Some(m),
                login: f.login,
                email: f.email,
                display_name: f.display_name,
                groups: f.groups,
                fresh: app.password_fresh(&current, app.now()),
            },
        )),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------
// Audit log

/// Events per page in the console.
const AUDIT_PAGE: u32 = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    subject: String,
    event: String,
    since: String,
    until: String,
    before: String,
    verify: String,
}

impl AuditQuery {
    fn filter(&self, limit: u32) -> Result<AuditFilter, PageError> {
        let time = |name: &str, v: &str| -> Result<Option<i64>, PageError> {
            some_text(v)
                .map(|v| {
                    crate::clock::parse_time(&v).ok_or_else(|| {
                        PageError::BadRequest(format!(
                            "{name}: `{v}` is not a time. Use 2026-11-23 or 2026-11-23T08:00 (UTC)."
                        ))
                    })
                })
                .transpose()
        };
        let before = some_text(&self.before)
            .map(|b| {
                b.parse::<i64>()
                    .map_err(|_| PageError::BadRequest("Unknown page.".into()))
            })
            .transpose()?;
        Ok(AuditFilter {
            subject: some_text(&self.subject),
            event: some_text(&self.event),
            since: time("From", &self.since)?,
            until: time("Before", &self.until)?,
            before_id: before,
            limit,
        })
    }

    fn query_string(&self) -> String {
        format!(
            "subject={}&event={}&since={}&until={}",
            url_encode(self.subject.trim()),
            url_encode(self.event.trim()),
            url_encode(self.since.trim()),
            url_encode(self.until.trim())
        )
    }
}

#[derive(Template)]
#[template(path = "admin_audit.html")]
struct AuditPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    verification: Option<(bool, String)>,
    subject: String,
    event: String,
    since: String,
    until: String,
    export_href: String,
    rows: Vec<AuditRow>,
    next_href: Option<String>,
}

struct AuditRow {
    id: i64,
    time: String,
    event: String,
    outcome: String,
    subject: String,
    actor: String,
    ip: String,
    detail: String,
}

pub async fn audit_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    AdminSession(current): AdminSession,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let q = query_params(query)?;
    let filter = q.filter(AUDIT_PAGE)?;
    let events = app.search_audit(&filter).await?;
    let verification = if q.verify.is_empty() {
        None
    } else {
        let v = app.verify_audit().await?;
        Some(match &v.problem {
            None => (
                true,
                format!(
                    "The audit log is intact: {} events checked{}.",
                    v.checked,
                    v.head
                        .as_ref()
                        .map(|(id, hash)| format!("; the newest is {id}, hash {hash}"))
                        .unwrap_or_default()
                ),
            ),
            Some(problem) => (false, format!("The audit log is BROKEN: {problem}.")),
        })
    };
    let qs = q.query_string();
    let next_href = (events.len() == AUDIT_PAGE as usize)
        .then(|| {
            events
                .last()
                .map(|e| format!("/admin/audit?{qs}&before={}", e.id))
        })
        .flatten();
    let rows = events
        .into_iter()
        .map(|e| AuditRow {
            id: e.id,
            time: format_time(e.at),
            event: e.event,
            outcome: e.outcome,
            subject: e.subject.unwrap_or_default(),
            actor: e.actor.unwrap_or_default(),
            ip: e.ip.unwrap_or_default(),
            detail: e.detail.unwrap_or_default(),
        })
        .collect();
    Ok(render(
        StatusCode::OK,
        &AuditPage {
            title: "Audit log",
            signed_in: Some(current.user.login.clone()),
            csrf: csrf.form_token(&app),
            verification,
            subject: q.subject.trim().into(),
            event: q.event.trim().into(),
            since: q.since.trim().into(),
            until: q.until.trim().into(),
            export_href: format!("/admin/audit.jsonl?{qs}"),
            rows,
            next_href,
        },
    ))
}

/// Every matching event as JSON lines, oldest first, streamed a page at a time.
pub async fn audit_export_get(
    State(app): State<App>,
    _: AdminSession,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let q = query_params(query)?;
    let filter = q.filter(0)?;
    let task_app = app.clone();
    Ok(streamed_download(
        &app,
        "application/jsonl; charset=utf-8",
        "audit",
        "jsonl",
        move |mut tx| async move {
            let mut after = 0;
            loop {
                let page = match task_app.store.audit_chain(after, 1000).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "audit export failed");
                        return Err(tx);
                    }
                };
                let Some(last) = page.last() else {
                    return Ok(());
                };
                after = last.id;
                let mut text = String::new();
                for r in page
                    .iter()
                    .filter(|r| crate::services::audit::matches(&filter, r))
                {
                    text.push_str(&crate::services::audit::event_json(r).to_string());
                    text.push('\n');
                }
                if !text.is_empty() && tx.send_data(Bytes::from(text)).await.is_err() {
                    return Ok(());
                }
            }
        },
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct InviteForm {
    csrf_token: String,
    password: String,
}

/// Mails every user without 2FA an invitation to set it up.
pub async fn compliance_invite_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    AdminSession(current): AdminSession,
    Client(client): Client,
    body: Result<Form<InviteForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    require_fresh_password(&app, &current, f.password, &client).await?;
    let sent = app
        .invite_users_without_two_factor(&current.user.login, &client)
        .await?;
    Ok(see_other(
        &format!("/admin/compliance?invited={sent}"),
        Vec::new(),
    ))
}
