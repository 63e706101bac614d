//! Services: where decisions are made. Each public method reads the clock once, applies the
//! rules of `bulwark-core` and persists through the store traits.

pub mod admin;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod check_cache;
pub mod compliance;
pub mod passwords;
pub mod policy;
pub mod two_factor;
pub mod users;

use crate::app::App;
use bulwark_core::password::policy::PolicyViolation;
use bulwark_core::UnixTime;
use bulwark_store::{NewAuditEvent, StoreError};
use std::net::IpAddr;

/// What a service call can fail with; the web layer maps each to one status.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Wrong login or password (deliberately vague).
    #[error("incorrect login or password")]
    InvalidCredentials,
    /// Too many failures: retry later.
    #[error("too many failed attempts; try again in {retry_after} seconds")]
    Throttled { retry_after: i64, locked: bool },
    /// The new password breaks the policy; every failed rule is listed.
    #[error("the password does not meet the policy")]
    PolicyRejected(Vec<PolicyViolation>),
    /// A field is missing or malformed; the message is safe to show.
    #[error("{0}")]
    InvalidInput(String),
    /// The link is unknown, used or expired.
    #[error("this link is invalid or has expired")]
    InvalidLink,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// Refused for a reason safe to show (e.g. removing the last admin).
    #[error("{0}")]
    Refused(String),
    /// Too many password checks are waiting already: retry in `retry_after` seconds (503).
    #[error("too many logins at this moment; try again in {retry_after} seconds")]
    Busy { retry_after: i64 },
    /// The database cannot be reached.
    #[error("the service is temporarily unavailable")]
    Unavailable(String),
    /// A bug or an unexpected backend failure; details are logged, not shown.
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            StoreError::Conflict(what) => Self::Conflict(what.to_string()),
            StoreError::Unavailable(m) => Self::Unavailable(m),
            StoreError::Backend(m) => Self::Internal(m),
            e @ StoreError::SchemaTooNew { .. } => Self::Internal(e.to_string()),
        }
    }
}

/// Who is making a request: the client IP (resolved through trusted proxies) and browser.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The client as seen by CLI actions.
    pub fn cli() -> Self {
        Self {
            ip: None,
            user_agent: Some("bulwark-cli".into()),
        }
    }

    fn ip_string(&self) -> Option<String> {
        self.ip.map(|ip| ip.to_string())
    }

    fn user_agent_bounded(&self) -> Option<String> {
        self.user_agent
            .as_ref()
            .map(|ua| ua.chars().filter(|c| !c.is_control()).take(256).collect())
    }
}

/// An audit event being assembled.
#[derive(Debug)]
pub struct Audit(NewAuditEvent);

impl Audit {
    /// Starts an event with its stable name and outcome (`success`, `failure`, `denied`).
    pub fn event(event: &str, outcome: &str) -> Self {
        Self(NewAuditEvent {
            event: event.into(),
            outcome: outcome.into(),
            ..Default::default()
        })
    }

    /// Who acted.
    pub fn actor(mut self, actor: &str) -> Self {
        self.0.actor = Some(actor.into());
        self
    }

    /// Whom it concerned.
    pub fn subject(mut self, subject: &str) -> Self {
        self.0.subject = Some(subject.chars().take(128).collect());
        self
    }

    /// Why, in a few words (never a secret).
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    /// Where from.
    pub fn client(mut self, client: &ClientInfo) -> Self {
        self.0.ip = client.ip_string();
        self.0.user_agent = client.user_agent_bounded();
        self
    }
}

impl App {
    /// Appends an audit event. A failure to write is logged: it must not turn a login into an
    /// error. Every change to a user or a session is audited, so this is also where the
    /// gateway's caches of sessions and API keys are invalidated.
    pub async fn audit(&self, audit: Audit, now: UnixTime) {
        let e = &audit.0;
        self.forget_cached(
            &e.event,
            &e.outcome,
            e.detail.as_deref(),
            e.subject.as_deref(),
        );
        let mut event = audit.0;
        event.at = now;
        self.metrics
            .record_event(&event.event, &event.outcome, event.detail.as_deref());
        if let Err(e) = self.store.append_audit(&event).await {
            // The action goes ahead (it has happened, or refusing it would lock everyone out
            // while the database refuses writes); the gap is counted for alerting.
            self.metrics
                .audit_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(event = %event.event, error = %e, "cannot write audit event");
        }
    }
}

/// How the audit detail of an action stopped part-way by [`App::run_steps`] begins: other
/// processes read it to drop the user's cached sessions and keys, as for a success
/// ([`check_cache::changes_access`]).
pub const STOPPED_PART_WAY: &str = "stopped part-way";

impl App {
    /// Runs the steps of an action that changes `login`'s access in several statements. When
    /// one fails, the steps before it may have taken effect (an account disabled whose
    /// sessions could not be ended), so the attempt is audited as `stopped` (an event with
    /// outcome `failure`) with a detail saying where it stopped and why, and the error is
    /// returned. On success the caller audits what was done. Either way, and also when this
    /// future is dropped half-way, the user's cached sessions and keys are dropped here
    /// ([`check_cache::ForgetOnExit`]).
    pub(crate) async fn run_steps<T>(
        &self,
        login: &str,
        stopped: Audit,
        now: UnixTime,
        steps: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let _forget = self.forget_on_exit(login);
        match steps.await {
            Ok(done) => Ok(done),
            Err(e) => {
                let why = match &e {
                    ServiceError::Internal(_) => "an internal error".to_string(),
                    other => other.to_string(),
                };
                self.audit(
                    stopped.detail(format!(
                        "{STOPPED_PART_WAY} ({why}): the steps before may have taken effect"
                    )),
                    now,
                )
                .await;
                Err(e)
            }
        }
    }
}

/// A short, stable browser name from a user agent ("Firefox on Linux"): shown in lists and
/// used to bind trusted devices to the browser they were issued to.
pub fn browser_name(ua: Option<&str>) -> String {
    let Some(ua) = ua else {
        return "Unknown browser".into();
    };
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| *name)
    .unwrap_or("Browser");
    let os = [
        ("Android", "Android"),
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| *name);
    match os {
        Some(os) => format!("{browser} on {os}"),
        None => browser.to_string(),
    }
}
