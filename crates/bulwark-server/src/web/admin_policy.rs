//! The console's policy page: every setting of the runtime security policy in one form, the
//! changes audited with their old and new values, and the latest changes listed.

use super::admin::{query_params, require_fresh_password, AdminSession};
use super::error::PageError;
use super::extract::{Client, CsrfCookie};
use super::pages::{form, render, see_other};
use crate::app::App;
use crate::clock::format_time;
use crate::config::policy::{can_unset, label, parse_value, value_text, RULES};
use crate::services::auth::CurrentSession;
use crate::services::policy::setting_error;
use crate::services::ServiceError;
use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use bulwark_store::AuditFilter;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Policy changes listed under the form.
const HISTORY_ROWS: u32 = 20;

struct Field {
    name: String,
    /// The `id` of the input: the name with dots replaced (valid in CSS selectors).
    id: String,
    label: String,
    value: String,
    /// `number`, `switch`, `preset` or `text`.
    kind: &'static str,
    /// Shown under the input: where a value not set explicitly comes from.
    hint: String,
}

struct Section {
    title: &'static str,
    intro: &'static str,
    fields: Vec<Field>,
}

/// A choice of the "add a rule for a group" list.
struct RuleOption {
    name: &'static str,
    text: String,
    selected: bool,
}

struct HistoryRow {
    time: String,
    actor: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "admin_policy.html")]
struct PolicyPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    error: Option<String>,
    notice: Option<String>,
    sections: Vec<Section>,
    rules: Vec<RuleOption>,
    new_group: String,
    new_value: String,
    fresh: bool,
    history: Vec<HistoryRow>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PolicyQuery {
    changed: Option<u32>,
}

/// Which section a setting is shown in.
fn section_of(name: &str) -> usize {
    match name.split('.').take(2).collect::<Vec<_>>().as_slice() {
        ["policy", "groups"] => 1,
        ["policy", _] => 0,
        ["two_factor", _] => 2,
        ["sessions", _] => 3,
        ["lockout", "account"] => 4,
        ["lockout", "ip"] => 5,
        _ => 6,
    }
}

fn empty_sections() -> Vec<Section> {
    vec![
        Section {
            title: "Password rules",
            intro: "Rules not set here come from the preset: nist (length, strength, common passwords; no expiry) or strict (one of each character class, 90-day expiry).",
            fields: Vec::new(),
        },
        Section {
            title: "Password rules of a group",
            intro: "A group's rules can only tighten the rules above. Empty a field to drop the group's rule.",
            fields: Vec::new(),
        },
        Section {
            title: "Two-factor authentication",
            intro: "Members of these groups must set up a second factor within the grace days. A remembered browser skips the second factor on this device until it expires.",
            fields: Vec::new(),
        },
        Section {
            title: "Sessions",
            intro: "",
            fields: Vec::new(),
        },
        Section {
            title: "Lockout: wrong passwords for one account",
            intro: "",
            fields: Vec::new(),
        },
        Section {
            title: "Lockout: wrong passwords from one client address",
            intro: "",
            fields: Vec::new(),
        },
        Section {
            title: "Lockout: wrong second-factor codes",
            intro: "",
            fields: Vec::new(),
        },
    ]
}

/// The form's fields with the values in force, or with what the admin submitted (`typed`)
/// when the page is shown again after a refusal.
fn sections(app: &App, typed: &BTreeMap<String, String>) -> Vec<Section> {
    let mut out = empty_sections();
    for s in app.policy().settings() {
        let kind = match (&s.value, s.name.as_str()) {
            (_, "policy.preset") => "preset",
            (Value::Bool(_), _) => "switch",
            (Value::Array(_), _) => "text",
            _ => "number",
        };
        let hint = if s.set || !can_unset(&s.name) {
            String::new()
        } else {
            "From the preset.".into()
        };
        let value = typed
            .get(&s.name)
            .cloned()
            .unwrap_or_else(|| value_text(&s.value));
        let index = section_of(&s.name);
        if let Some(section) = out.get_mut(index) {
            section.fields.push(Field {
                id: format!("s-{}", s.name.replace('.', "-")),
                label: label(&s.name),
                name: s.name,
                value,
                kind,
                hint,
            });
        }
    }
    out
}

async fn history(app: &App) -> Vec<HistoryRow> {
    let filter = AuditFilter {
        event: Some("policy_changed".into()),
        limit: HISTORY_ROWS,
        ..AuditFilter::default()
    };
    match app.store.list_audit(&filter).await {
        Ok(rows) => rows
            .into_iter()
            .map(|e| HistoryRow {
                time: format_time(e.at),
                actor: e.actor.unwrap_or_default(),
                detail: e.detail.unwrap_or_default(),
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the policy history");
            Vec::new()
        }
    }
}

struct Shown<'a> {
    error: Option<String>,
    notice: Option<String>,
    typed: &'a BTreeMap<String, String>,
    new: (String, String, String),
}

async fn page(
    app: &App,
    csrf: &CsrfCookie,
    current: &CurrentSession,
    shown: Shown<'_>,
    status: StatusCode,
) -> Response {
    let (new_group, new_rule, new_value) = shown.new;
    render(
        status,
        &PolicyPage {
            title: "Security policy",
            signed_in: Some(current.user.login.clone()),
            csrf: csrf.form_token(app),
            error: shown.error,
            notice: shown.notice,
            sections: sections(app, shown.typed),
            rules: RULES
                .iter()
                .map(|r| RuleOption {
                    name: r,
                    text: label(&format!("policy.{r}")),
                    selected: *r == new_rule,
                })
                .collect(),
            new_group,
            new_value,
            fresh: app.password_fresh(current, app.now()),
            history: history(app).await,
        },
    )
}

pub async fn policy_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    AdminSession(current): AdminSession,
    query: Result<Query<PolicyQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let q = query_params(query)?;
    // Another node (or the CLI) may have changed it since this one last looked.
    app.refresh_policy().await?;
    let notice = q.changed.map(|n| match n {
        0 => "Nothing changed: every setting already had that value.".to_string(),
        1 => "Saved: 1 setting changed. Every node applies it within 5 seconds.".to_string(),
        n => format!("Saved: {n} settings changed. Every node applies them within 5 seconds."),
    });
    let shown = Shown {
        error: None,
        notice,
        typed: &BTreeMap::new(),
        new: (String::new(), String::new(), String::new()),
    };
    Ok(page(&app, &csrf, &current, shown, StatusCode::OK).await)
}

/// The fields of the form that are not settings.
const CONTROL_FIELDS: [&str; 5] = [
    "csrf_token",
    "password",
    "new_group",
    "new_rule",
    "new_value",
];

pub async fn policy_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    AdminSession(current): AdminSession,
    Client(client): Client,
    body: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, PageError> {
    let fields = form(body)?;
    let control = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    csrf.verify(&app, &control("csrf_token"))?;
    let typed: BTreeMap<String, String> = fields
        .iter()
        .filter(|(n, _)| !CONTROL_FIELDS.contains(&n.as_str()))
        .cloned()
        .collect();
    let new = (
        control("new_group").trim().to_lowercase(),
        control("new_rule"),
        control("new_value"),
    );
    let result = async {
        // Only what the admin changed is a change: a rule that comes from the preset stays
        // unset when its field is submitted untouched.
        let in_force: BTreeMap<String, String> = app
            .policy()
            .settings()
            .into_iter()
            .map(|s| (s.name, value_text(&s.value)))
            .collect();
        let mut changes: Vec<(String, Option<Value>)> = Vec::new();
        for (name, text) in &typed {
            if in_force.get(name).is_some_and(|v| v.trim() == text.trim()) {
                continue;
            }
            if text.trim().is_empty() && can_unset(name) {
                changes.push((name.clone(), None));
                continue;
            }
            let value = parse_value(name, text).map_err(|e| setting_error(&e))?;
            changes.push((name.clone(), Some(value)));
        }
        let (group, rule, value) = &new;
        if !group.is_empty() || !value.trim().is_empty() {
            let name = format!("policy.groups.{group}.{rule}");
            let value = parse_value(&name, value).map_err(|e| setting_error(&e))?;
            changes.push((name, Some(value)));
        }
        if changes.is_empty() {
            return Ok(0);
        }
        require_fresh_password(&app, &current, control("password"), &client).await?;
        let moved = app
            .change_policy(&current.user.login, &client, &changes)
            .await?;
        Ok(moved.len())
    }
    .await;
    match result {
        Ok(n) => Ok(see_other(&format!("/admin/policy?changed={n}"), Vec::new())),
        Err(
            ServiceError::InvalidInput(m) | ServiceError::Refused(m) | ServiceError::Conflict(m),
        ) => {
            let shown = Shown {
                error: Some(m),
                notice: None,
                typed: &typed,
                new,
            };
            Ok(page(&app, &csrf, &current, shown, StatusCode::BAD_REQUEST).await)
        }
        Err(e) => Err(e.into()),
    }
}
