//! The runtime security policy: loaded from the database at start (seeded from the
//! configuration file the first time), re-read every [`POLICY_REFRESH_SECS`] so a change made
//! on another node or by `bulwark policy set` takes effect everywhere, and changed by admins
//! with every moved setting audited with its old and new value.

use super::{Audit, ClientInfo, ServiceError};
use crate::app::App;
use crate::config::policy::{apply_changes, SettingDiff};
use crate::config::{ConfigError, Policy};
use bulwark_store::SettingChange;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How often each node re-reads the stored policy: the longest a change made elsewhere
/// takes to apply on this node.
pub const POLICY_REFRESH_SECS: u64 = 5;

/// How many times a change is recomputed when another admin changed the policy under it.
const CHANGE_ATTEMPTS: usize = 5;

/// The stored settings: their JSON text (kept for compare-and-set) and parsed values.
struct Stored {
    text: BTreeMap<String, String>,
    values: BTreeMap<String, Value>,
}

/// A stored setting that is not JSON: only a hand-edited database gets there.
fn not_json(name: &str, e: &serde_json::Error) -> ServiceError {
    ServiceError::Internal(format!("setting `{name}` in the database is not JSON: {e}"))
}

/// A policy problem as the user-facing message: the setting, then what is wrong.
pub fn setting_error(e: &ConfigError) -> ServiceError {
    ServiceError::InvalidInput(e.setting_message())
}

impl App {
    /// Stores the configuration file's policy if the database has none yet, then reads it
    /// back. Called once at start; an invalid stored policy stops the start, naming the
    /// setting. Settings of the file that differ from the stored ones are logged: after the
    /// first start the file no longer decides them.
    pub async fn load_policy(&self) -> Result<(), ServiceError> {
        let stored = self.stored_policy().await?;
        let policy = Policy::from_stored(stored.values).map_err(|e| {
            ServiceError::InvalidInput(format!(
                "the stored security policy is invalid: {} (fix it with `bulwark policy set`)",
                e.setting_message()
            ))
        })?;
        let from_file = Policy::from_config(&self.config);
        let differ = policy.differences_from(&from_file);
        if !differ.is_empty() {
            tracing::warn!(
                settings = %differ.join(", "),
                "the configuration file's policy differs from the one stored in the database; \
                 the database's is in force (change it in the console or with `bulwark policy set`)"
            );
        }
        self.install_policy(policy);
        Ok(())
    }

    /// Re-reads the stored policy; true if it changed. A stored policy that does not
    /// validate (written by hand) is logged and ignored: the one in force stays. (A database
    /// with no policy at all is seeded first, as at start: an empty table is not a policy.)
    pub async fn refresh_policy(&self) -> Result<bool, ServiceError> {
        let stored = self.stored_policy().await?;
        if &stored.values == self.policy().stored() {
            return Ok(false);
        }
        match Policy::from_stored(stored.values) {
            // Stored in another form (a hand-written list of groups) but the same policy.
            Ok(policy) if policy.stored() == self.policy().stored() => Ok(false),
            Ok(policy) => {
                self.install_policy(policy);
                Ok(true)
            }
            Err(e) => {
                tracing::error!(setting = %e.key, error = %e.message, "the stored security policy is invalid; keeping the one in force");
                Ok(false)
            }
        }
    }

    /// Applies `changes` (a value, or `None` to return a password rule to its preset) for
    /// `actor`, all or nothing, and audits each setting that moved with its old and new
    /// value. Returns what moved (nothing if every value was already in force).
    pub async fn change_policy(
        &self,
        actor: &str,
        client: &ClientInfo,
        changes: &[(String, Option<Value>)],
    ) -> Result<Vec<SettingDiff>, ServiceError> {
        if changes.is_empty() {
            return Err(ServiceError::InvalidInput("no setting to change".into()));
        }
        for _ in 0..CHANGE_ATTEMPTS {
            let stored = self.stored_policy().await?;
            // The result is validated as a whole: a stored policy that is itself invalid (a
            // hand-edited database) can still be repaired by a change that makes it valid.
            let (next, diffs) =
                apply_changes(&stored.values, changes).map_err(|e| setting_error(&e))?;
            if diffs.is_empty() {
                return Ok(diffs);
            }
            let steps: Vec<SettingChange> = diffs
                .iter()
                .map(|d| SettingChange {
                    name: d.name.clone(),
                    old: stored.text.get(&d.name).cloned(),
                    new: d.new.as_ref().map(Value::to_string),
                })
                .collect();
            let now = self.now();
            if !self.store.change_settings(&steps, now).await? {
                // Another admin changed the policy since it was read: start again from theirs.
                continue;
            }
            self.install_policy(next);
            for d in &diffs {
                self.audit(
                    Audit::event("policy_changed", "success")
                        .actor(actor)
                        .client(client)
                        .detail(d.describe(Value::to_string)),
                    now,
                )
                .await;
            }
            return Ok(diffs);
        }
        Err(ServiceError::Conflict(
            "the policy is being changed by someone else; try again".into(),
        ))
    }

    /// The stored settings, after seeding them from the configuration file if there are
    /// none yet.
    async fn stored_policy(&self) -> Result<Stored, ServiceError> {
        let stored = self.read_stored().await?;
        if !stored.text.is_empty() {
            return Ok(stored);
        }
        let seed: Vec<(String, String)> = Policy::from_config(&self.config)
            .stored()
            .iter()
            .map(|(name, value)| (name.clone(), value.to_string()))
            .collect();
        if self.store.seed_settings(&seed, self.now()).await? {
            tracing::info!("stored the configuration file's security policy in the database");
        }
        self.read_stored().await
    }

    async fn read_stored(&self) -> Result<Stored, ServiceError> {
        let rows = self.store.list_settings().await?;
        let mut stored = Stored {
            text: BTreeMap::new(),
            values: BTreeMap::new(),
        };
        for row in rows {
            let value: Value =
                serde_json::from_str(&row.value).map_err(|e| not_json(&row.name, &e))?;
            stored.values.insert(row.name.clone(), value);
            stored.text.insert(row.name, row.value);
        }
        Ok(stored)
    }

    fn install_policy(&self, policy: Policy) {
        let mut slot = match self.policy.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(policy);
    }
}

/// Re-reads the stored policy every [`POLICY_REFRESH_SECS`] for as long as the server runs.
pub fn spawn_policy_refresh(app: App) {
    tokio::spawn(async move {
        let period = std::time::Duration::from_secs(POLICY_REFRESH_SECS);
        loop {
            tokio::time::sleep(period).await;
            match app.refresh_policy().await {
                Ok(true) => tracing::info!("the security policy changed; now in force"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot re-read the security policy"),
            }
        }
    });
}
