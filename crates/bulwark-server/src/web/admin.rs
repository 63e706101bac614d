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
    attachment(&mut res, &app, "json");
    Ok(res)
}

fn attachment(res: &mut Response, app: &App, extension: &str) {
    let date = crate::clock::format_iso(app.now());
    let name = format!(
        "attachment; filename=\"bulwark-compliance-{}.{extension}\"",
        date.get(..10).unwrap_or("report")
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
}

/// The CSV export as a streamed body: one page of users at a time, paused while the client
/// reads, so memory stays bounded at any number of users. A database failure midway cuts the
/// response (the client sees an incomplete transfer, never a partial file that looks whole).
pub fn compliance_csv(app: App, options: ComplianceOptions) -> Response {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
    let task_app = app.clone();
    tokio::spawn(async move {
        if tx
            .send_data(Bytes::from_static(CsvWriter::HEADER.as_bytes()))
            .await
            .is_err()
        {
            return;
        }
        let mut scan = match task_app.compliance_scan(options).await {
            Ok(scan) => scan,
            Err(e) => {
                tracing::error!(error = %e, "compliance export failed");
                tx.abort(std::io::Error::other("compliance export failed"));
                return;
            }
        };
        loop {
            match scan.next_page().await {
                Ok(Some(page)) => {
                    let text: String = page.iter().map(CsvWriter::line).collect();
                    if !text.is_empty() && tx.send_data(Bytes::from(text)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "compliance export failed");
                    tx.abort(std::io::Error::other("compliance export failed"));
                    return;
                }
            }
        }
    });
    let mut res = Response::new(Body::new(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    attachment(&mut res, &app, "csv");
    res
}
