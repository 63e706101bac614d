//! The API keys page: list, create (password re-entry, shown once), revoke.

use super::error::PageError;
use super::extract::{Client, CsrfCookie, SignedIn};
use super::pages::{form, render, see_other};
use crate::app::App;
use crate::clock::format_time;
use crate::services::api_keys::{ExpiryChoice, KeyActor, KeyRef, KeyStatus, NewApiKeyInput};
use crate::services::auth::CurrentSession;
use crate::services::ServiceError;
use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use bulwark_core::SecretString;
use serde::Deserialize;

struct KeyRow {
    id: i64,
    name: String,
    prefix: String,
    scopes: String,
    created: String,
    expires: String,
    last_used: String,
    expired: bool,
}

struct ExpiryOption {
    value: String,
    label: String,
    selected: bool,
}

#[derive(Template)]
#[template(path = "api_keys.html")]
struct ApiKeysPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    login: &'a str,
    keys: Vec<KeyRow>,
    flush_secs: u64,
    expiry_options: Vec<ExpiryOption>,
    name: &'a str,
    scope_gateway: bool,
    scope_api_read: bool,
    scope_api_write: bool,
    notice: Option<&'a str>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "api_key_created.html")]
struct CreatedPage<'a> {
    title: &'a str,
    signed_in: Option<String>,
    csrf: String,
    name: &'a str,
    scopes: String,
    expires: String,
    key: &'a str,
}

#[derive(Debug, Deserialize, Default)]
pub struct DoneQuery {
    #[serde(default)]
    done: String,
}

/// What the create form had, to show it again after an error.
#[derive(Default)]
struct Draft<'a> {
    name: &'a str,
    gateway: bool,
    api_read: bool,
    api_write: bool,
}

/// Lifetimes offered in the form: common ones within the owner's maximum, the default and
/// the maximum themselves, and "never" only when no maximum applies.
fn expiry_options(max: Option<u32>, default: Option<u32>) -> Vec<ExpiryOption> {
    let mut days: Vec<u32> = [7, 30, 90, 180, 365]
        .into_iter()
        .chain(default)
        .chain(max)
        .filter(|d| max.is_none_or(|m| *d <= m))
        .collect();
    days.sort_unstable();
    days.dedup();
    let mut options: Vec<ExpiryOption> = days
        .into_iter()
        .map(|d| ExpiryOption {
            value: d.to_string(),
            label: if d == 1 {
                "1 day".into()
            } else {
                format!("{d} days")
            },
            selected: default == Some(d),
        })
        .collect();
    if max.is_none() {
        options.push(ExpiryOption {
            value: "never".into(),
            label: "Never".into(),
            selected: default.is_none(),
        });
    }
    options
}

async fn keys_page(
    app: &App,
    csrf: &CsrfCookie,
    current: &CurrentSession,
    status: StatusCode,
    draft: Draft<'_>,
    notice: Option<&str>,
    error: Option<String>,
) -> Result<Response, PageError> {
    let views = app.list_api_keys(KeyActor::Session(current), None).await?;
    let keys = views
        .into_iter()
        .filter(|v| v.status != KeyStatus::Revoked)
        .map(|v| KeyRow {
            id: v.record.id,
            name: v.record.name,
            prefix: v.record.display_prefix,
            scopes: v.record.scopes.to_stored(),
            created: format_time(v.record.created_at),
            expires: v
                .record
                .expires_at
                .map(format_time)
                .unwrap_or_else(|| "never".into()),
            last_used: v
                .last_used_at
                .map(format_time)
                .unwrap_or_else(|| "never".into()),
            expired: v.status == KeyStatus::Expired,
        })
        .collect();
    let (max, default) = app.api_key_lifetime(&current.user);
    Ok(render(
        status,
        &ApiKeysPage {
            title: "API keys",
            signed_in: Some(current.user.login.clone()),
            csrf: csrf.form_token(app),
            login: &current.user.login,
            keys,
            flush_secs: app.config.api_keys.flush_secs,
            expiry_options: expiry_options(max, default),
            name: draft.name,
            scope_gateway: draft.gateway,
            scope_api_read: draft.api_read,
            scope_api_write: draft.api_write,
            notice,
            error,
        },
    ))
}

pub async fn api_keys_get(
    State(app): State<App>,
    csrf: CsrfCookie,
    SignedIn(current): SignedIn,
    query: Result<Query<DoneQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let notice = match q.done.as_str() {
        "revoked" => Some("The key was revoked. Programs using it can no longer sign in."),
        _ => None,
    };
    let draft = Draft {
        gateway: true,
        ..Draft::default()
    };
    keys_page(&app, &csrf, &current, StatusCode::OK, draft, notice, None).await
}

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    scope_gateway: String,
    #[serde(default)]
    scope_api_read: String,
    #[serde(default)]
    scope_api_write: String,
    #[serde(default)]
    days: String,
    #[serde(default)]
    password: String,
}

fn parse_expiry(days: &str) -> Result<ExpiryChoice, ServiceError> {
    match days.trim() {
        "" => Ok(ExpiryChoice::Default),
        "never" => Ok(ExpiryChoice::Never),
        d => d.parse().map(ExpiryChoice::Days).map_err(|_| {
            ServiceError::InvalidInput("Choose when the key expires from the list.".into())
        }),
    }
}

pub async fn api_keys_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    SignedIn(current): SignedIn,
    Client(client): Client,
    body: Result<Form<CreateForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    let draft = Draft {
        name: &f.name,
        gateway: f.scope_gateway == "1",
        api_read: f.scope_api_read == "1",
        api_write: f.scope_api_write == "1",
    };
    let scopes: Vec<String> = [
        (draft.gateway, "gateway"),
        (draft.api_read, "api:read"),
        (draft.api_write, "api:write"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, s)| s.to_string())
    .collect();
    let result = match parse_expiry(&f.days) {
        Ok(expiry) => {
            app.create_api_key(
                KeyActor::Session(&current),
                &current.user.login,
                NewApiKeyInput {
                    name: f.name.clone(),
                    scopes,
                    expiry,
                    password: Some(SecretString::new(f.password)),
                },
                &client,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(created) => Ok(render(
            StatusCode::OK,
            &CreatedPage {
                title: "Your new API key",
                signed_in: Some(current.user.login.clone()),
                csrf: csrf.form_token(&app),
                name: &created.record.name,
                scopes: created.record.scopes.to_stored(),
                expires: created
                    .record
                    .expires_at
                    .map(format_time)
                    .unwrap_or_else(|| "never".into()),
                key: created.key.expose(),
            },
        )),
        Err(ServiceError::InvalidInput(m) | ServiceError::Refused(m)) => {
            keys_page(
                &app,
                &csrf,
                &current,
                StatusCode::BAD_REQUEST,
                draft,
                None,
                Some(m),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf_token: String,
    key_id: i64,
}

pub async fn api_key_revoke_post(
    State(app): State<App>,
    csrf: CsrfCookie,
    SignedIn(current): SignedIn,
    Client(client): Client,
    body: Result<Form<RevokeForm>, FormRejection>,
) -> Result<Response, PageError> {
    let f = form(body)?;
    csrf.verify(&app, &f.csrf_token)?;
    app.revoke_api_key(
        KeyActor::Session(&current),
        &current.user.login,
        &KeyRef::Id(f.key_id),
        &client,
    )
    .await?;
    Ok(see_other("/account/api-keys?done=revoked", Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(options: &[ExpiryOption]) -> Vec<(&str, bool)> {
        options
            .iter()
            .map(|o| (o.value.as_str(), o.selected))
            .collect()
    }

    #[test]
    fn expiry_options_stay_within_the_maximum() {
        assert_eq!(
            values(&expiry_options(Some(365), Some(90))),
            [
                ("7", false),
                ("30", false),
                ("90", true),
                ("180", false),
                ("365", false)
            ]
        );
        assert_eq!(
            values(&expiry_options(Some(45), Some(45))),
            [("7", false), ("30", false), ("45", true)]
        );
        let open = expiry_options(None, None);
        assert_eq!(
            open.last().map(|o| (o.value.as_str(), o.selected)),
            Some(("never", true))
        );
        assert!(expiry_options(None, Some(90))
            .iter()
            .any(|o| o.value == "never" && !o.selected));
    }

    #[test]
    fn expiry_text_is_parsed_strictly() {
        assert_eq!(parse_expiry("").ok(), Some(ExpiryChoice::Default));
        assert_eq!(parse_expiry("never").ok(), Some(ExpiryChoice::Never));
        assert_eq!(parse_expiry(" 30 ").ok(), Some(ExpiryChoice::Days(30)));
        for bad in ["-1", "3.5", "forever", "99999999999"] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
    }
}
