//! `/metrics` for Prometheus: loopback-only by default, or anyone with the bearer token.

use super::extract::client_ip;
use crate::app::App;
use crate::metrics::GroupCoverage;
use crate::services::compliance::ComplianceOptions;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The 2FA coverage per group walks every user: at most once a minute per node.
const COVERAGE_MAX_AGE: Duration = Duration::from_secs(60);

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], text).into_response()
}

pub async fn metrics_get(State(app): State<App>, req: Request) -> Response {
    let config = &app.config.metrics;
    if !config.enabled {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    match &config.token {
        Some(token) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
                let mut res = plain(StatusCode::UNAUTHORIZED, "a bearer token is needed\n");
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return res;
            }
        }
        None => {
            let peer = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            let client = client_ip(peer, req.headers(), &app.config.server.trusted_proxies);
            if !client.is_some_and(|ip| config.networks.iter().any(|n| n.contains(&ip))) {
                return plain(
                    StatusCode::FORBIDDEN,
                    "metrics are served to metrics.networks only (or set metrics.token)\n",
                );
            }
        }
    }
    let (queued, retrying) = match app.store.count_mail().await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: database unavailable");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n");
        }
    };
    let coverage = match app.metrics.cached_coverage(COVERAGE_MAX_AGE) {
        Some(c) => c,
        None => match coverage(&app).await {
            Ok(c) => {
                app.metrics.store_coverage(c.clone());
                c
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot compute the 2FA coverage");
                return plain(StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n");
            }
        },
    };
    let body = app.metrics.render(queued, retrying, &coverage);
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn coverage(app: &App) -> Result<Vec<GroupCoverage>, crate::services::ServiceError> {
    Ok(app
        .compliance_summary(ComplianceOptions::default())
        .await?
        .groups
        .iter()
        .map(|(group, (_, c))| GroupCoverage {
            group: group.clone(),
            active: c.active,
            with_two_factor: c.with_two_factor,
            exempt: c.exempt,
        })
        .collect())
}
