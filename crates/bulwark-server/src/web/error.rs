//! One mapping from service errors to pages and status codes.

use crate::services::ServiceError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::pages::message_page;

/// What a page handler can fail with.
#[derive(Debug)]
pub enum PageError {
    /// Malformed or missing input; the message is shown.
    BadRequest(String),
    /// The request body was refused before reaching the handler (too large, wrong type).
    Rejected(StatusCode, String),
    /// Missing or wrong CSRF token.
    Csrf,
    /// Signed in, but not allowed here; the message says why.
    Forbidden(String),
    NotFound,
    /// Throttled: 429 with `Retry-After`.
    TooMany {
        retry_after: i64,
        locked: bool,
    },
    /// Too many password checks waiting: 503 with `Retry-After`.
    Busy {
        retry_after: i64,
    },
    /// The database is unreachable: 503.
    Unavailable,
    /// A bug: 500 with a generic page; the cause was logged where it was converted.
    Internal,
    /// Answer with a redirect instead (e.g. not signed in).
    Redirect(String),
}

impl From<ServiceError> for PageError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidInput(m)
            | ServiceError::Conflict(m)
            | ServiceError::Refused(m) => Self::BadRequest(m),
            ServiceError::InvalidCredentials => {
                Self::BadRequest("Incorrect login or password.".into())
            }
            ServiceError::PolicyRejected(v) => Self::BadRequest(
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            ServiceError::InvalidLink => {
                Self::BadRequest("This link is invalid, was already used, or has expired.".into())
            }
            ServiceError::NotFound => Self::NotFound,
            ServiceError::Throttled {
                retry_after,
                locked,
            } => Self::TooMany {
                retry_after,
                locked,
            },
            ServiceError::Busy { retry_after } => Self::Busy { retry_after },
            ServiceError::Unavailable(cause) => {
                tracing::error!(cause = %cause, "database unavailable");
                Self::Unavailable
            }
            ServiceError::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                Self::Internal
            }
        }
    }
}

/// The sentence shown when throttled.
pub fn throttle_message(retry_after: i64, locked: bool) -> String {
    let wait = if retry_after >= 120 {
        format!("{} minutes", (retry_after + 59) / 60)
    } else if retry_after == 1 {
        "1 second".to_string()
    } else {
        format!("{retry_after} seconds")
    };
    if locked {
        format!("Too many failed attempts: this account or address is locked. Try again in {wait}, or ask an administrator to unlock it.")
    } else {
        format!("Too many failed attempts. Wait {wait} before trying again.")
    }
}

/// Adds `Retry-After` to a response.
pub fn with_retry_after(mut res: Response, retry_after: i64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&retry_after.max(1).to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            Self::BadRequest(m) => message_page(StatusCode::BAD_REQUEST, "Something is not right", &m, None),
            Self::Rejected(status, m) => message_page(status, "Something is not right", &m, None),
            Self::Csrf => message_page(
                StatusCode::FORBIDDEN,
                "This form has expired",
                "The form was not sent from this site, or your browser blocked its cookie. Go back, reload the page and try again.",
                Some(("/login", "Go to log in")),
            ),
            Self::Forbidden(m) => message_page(StatusCode::FORBIDDEN, "Not allowed", &m, Some(("/account", "Go to my account"))),
            Self::NotFound => message_page(StatusCode::NOT_FOUND, "Page not found", "There is nothing at this address.", Some(("/account", "Go to my account"))),
            Self::TooMany { retry_after, locked } => with_retry_after(
                message_page(StatusCode::TOO_MANY_REQUESTS, "Too many attempts", &throttle_message(retry_after, locked), None),
                retry_after,
            ),
            Self::Busy { retry_after } => with_retry_after(
                message_page(StatusCode::SERVICE_UNAVAILABLE, "Too many logins right now", "Bulwark is checking as many passwords as it can at this moment. Try again in a few seconds.", None),
                retry_after,
            ),
            Self::Unavailable => message_page(StatusCode::SERVICE_UNAVAILABLE, "Temporarily unavailable", "Bulwark cannot reach its database right now. Try again in a minute.", None),
            Self::Internal => message_page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "An unexpected error occurred. It has been logged; try again later.", None),
            Self::Redirect(to) => super::pages::see_other(&to, Vec::new()),
        }
    }
}
