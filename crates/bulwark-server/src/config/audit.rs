//! The `[audit]` section: how long audit events are kept.

use super::ConfigError;
use serde::{Deserialize, Serialize};

/// The longest retention that can be set (100 years); 0 keeps events forever.
const MAX_RETENTION_DAYS: u32 = 36_500;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    retention_days: Option<u32>,
}

/// The validated audit settings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditConfig {
    /// Days an event is kept before pruning removes it (behind a signed checkpoint);
    /// 0: kept forever (the default).
    pub retention_days: u32,
}

impl AuditConfig {
    /// Seconds an event is kept, if pruning is on.
    pub fn retention_secs(&self) -> Option<i64> {
        (self.retention_days > 0).then(|| i64::from(self.retention_days) * 86_400)
    }
}

pub(super) fn validate(raw: RawAudit) -> Result<AuditConfig, ConfigError> {
    let retention_days = raw.retention_days.unwrap_or(0);
    if retention_days > MAX_RETENTION_DAYS {
        return Err(ConfigError::new(
            "audit.retention_days",
            format!("must be at most {MAX_RETENTION_DAYS} (0 keeps events forever)"),
        ));
    }
    Ok(AuditConfig { retention_days })
}
