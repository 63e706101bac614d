//! The `[api_keys]` section: how long keys may live (per group, strictest wins), how many a
//! user may hold, and how often last-use times are written.

use super::ConfigError;
use bulwark_core::account::GroupName;
use bulwark_core::api_key::MAX_DAYS;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiKeys {
    max_days: Option<u32>,
    default_days: Option<u32>,
    max_per_user: Option<u32>,
    flush_secs: Option<u64>,
    #[serde(default)]
    groups: BTreeMap<String, RawGroup>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    max_days: Option<u32>,
}

/// The validated API key settings.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKeysConfig {
    /// Longest lifetime of a new key, in days; 0: no maximum (keys may never expire).
    pub max_days: u32,
    /// Lifetime offered when none is chosen; 0: never expires (only without a maximum).
    pub default_days: u32,
    /// Keys (not revoked) one user may hold.
    pub max_per_user: u32,
    /// Seconds between writes of last-use times: the most they lag behind, and the most a
    /// crash loses.
    pub flush_secs: u64,
    /// Per-group maxima (days). They only tighten: a member of several groups gets the
    /// smallest of them and `max_days`.
    pub groups: BTreeMap<String, u32>,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self {
            max_days: 365,
            default_days: 90,
            max_per_user: 20,
            flush_secs: 60,
            groups: BTreeMap::new(),
        }
    }
}

impl ApiKeysConfig {
    /// The longest lifetime a member of `groups` may give a key; `None`: no maximum.
    pub fn max_days_for<S: AsRef<str>>(&self, groups: &[S]) -> Option<u32> {
        groups
            .iter()
            .filter_map(|g| self.groups.get(g.as_ref()).copied())
            .chain((self.max_days > 0).then_some(self.max_days))
            .min()
    }

    /// The lifetime offered to a member of `groups` by default; `None`: never expires.
    pub fn default_days_for<S: AsRef<str>>(&self, groups: &[S]) -> Option<u32> {
        let default = (self.default_days > 0).then_some(self.default_days);
        match (default, self.max_days_for(groups)) {
            (Some(d), Some(max)) => Some(d.min(max)),
            (None, max) => max,
            (d, None) => d,
        }
    }
}

pub(super) fn validate(raw: RawApiKeys) -> Result<ApiKeysConfig, ConfigError> {
    let d = ApiKeysConfig::default();
    let max_days = raw.max_days.unwrap_or(d.max_days);
    if max_days > MAX_DAYS {
        return Err(ConfigError::new(
            "api_keys.max_days",
            format!("must be between 0 (no maximum) and {MAX_DAYS}"),
        ));
    }
    let default_days = match raw.default_days {
        Some(v) => v,
        // The built-in default never exceeds a smaller configured maximum.
        None if max_days > 0 => d.default_days.min(max_days),
        None => d.default_days,
    };
    if max_days > 0 && !(1..=max_days).contains(&default_days) {
        return Err(ConfigError::new(
            "api_keys.default_days",
            format!("must be between 1 and api_keys.max_days ({max_days}): keys must expire"),
        ));
    }
    if default_days > MAX_DAYS {
        return Err(ConfigError::new(
            "api_keys.default_days",
            format!("must be between 0 (never expires) and {MAX_DAYS}"),
        ));
    }
    let max_per_user = raw.max_per_user.unwrap_or(d.max_per_user);
    if !(1..=1000).contains(&max_per_user) {
        return Err(ConfigError::new(
            "api_keys.max_per_user",
            "must be between 1 and 1000",
        ));
    }
    let flush_secs = raw.flush_secs.unwrap_or(d.flush_secs);
    if !(1..=3600).contains(&flush_secs) {
        return Err(ConfigError::new(
            "api_keys.flush_secs",
            "must be between 1 and 3600",
        ));
    }
    let mut groups = BTreeMap::new();
    for (name, group) in raw.groups {
        if GroupName::parse(&name).map(|g| g.as_str() == name) != Ok(true) {
            return Err(ConfigError::new(
                format!("api_keys.groups.{name}"),
                "is not a valid group name (1 to 32 lowercase letters, digits, - and _)",
            ));
        }
        let key = format!("api_keys.groups.{name}.max_days");
        match group.max_days {
            Some(days @ 1..=MAX_DAYS) => {
                groups.insert(name, days);
            }
            Some(_) => {
                return Err(ConfigError::new(
                    key,
                    format!("must be between 1 and {MAX_DAYS}"),
                ))
            }
            None => return Err(ConfigError::new(key, "is required in a group section")),
        }
    }
    Ok(ApiKeysConfig {
        max_days,
        default_days,
        max_per_user,
        flush_secs,
        groups,
    })
}
