//! The `[metrics]` section: who may read `/metrics`.

use super::ConfigError;
use bulwark_core::SecretString;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    enabled: Option<bool>,
    token: Option<String>,
    networks: Option<Vec<String>>,
}

/// The validated metrics settings.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// With a token, `/metrics` needs `Authorization: Bearer TOKEN` (from anywhere).
    #[serde(serialize_with = "super::redacted")]
    pub token: Option<SecretString>,
    /// Without a token, only clients in these networks may read it (default: loopback).
    pub networks: Vec<IpNet>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            token: None,
            networks: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
        }
    }
}

pub(super) fn validate(raw: RawMetrics) -> Result<MetricsConfig, ConfigError> {
    let d = MetricsConfig::default();
    let token = match raw.token {
        Some(t) if t.len() < 16 => {
            return Err(ConfigError::new(
                "metrics.token",
                "must be at least 16 characters (e.g. `openssl rand -hex 24`)",
            ))
        }
        Some(t) => Some(SecretString::new(t)),
        None => None,
    };
    let networks = match raw.networks {
        None => d.networks,
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.parse::<IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError::new(
                            format!("metrics.networks[{i}]"),
                            format!("`{n}` is not an IP network like 10.0.0.0/8 or an address"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(MetricsConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        token,
        networks,
    })
}
