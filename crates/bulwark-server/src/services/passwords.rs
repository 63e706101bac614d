//! Password hashing off the async threads, behind a concurrency cap.
//!
//! Each Argon2id hash holds `m` KiB of memory for its whole run, so the cap bounds memory at
//! `m × permits` and keeps a login flood from starving the runtime.

use super::ServiceError;
use bulwark_core::password::hash::{PasswordHash, PasswordHasher, Verification};
use bulwark_core::password::Password;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Runs hashing on the blocking pool, at most `permits` at a time.
#[derive(Clone, Debug)]
pub struct HashPool {
    hasher: Arc<PasswordHasher>,
    permits: Arc<Semaphore>,
}

impl HashPool {
    /// A pool allowing `max_concurrent` hashes at once.
    pub fn new(hasher: PasswordHasher, max_concurrent: usize) -> Self {
        Self {
            hasher: Arc::new(hasher),
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&PasswordHasher) -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ServiceError::Internal("hash pool closed".into()))?;
        let hasher = self.hasher.clone();
        tokio::task::spawn_blocking(move || job(&hasher))
            .await
            .map_err(|e| ServiceError::Internal(format!("hashing task failed: {e}")))
    }

    /// Hashes a new password with the configured scheme.
    pub async fn hash(&self, password: Password) -> Result<PasswordHash, ServiceError> {
        self.run(move |h| h.hash(&password))
            .await?
            .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    /// Checks a password against a stored hash.
    pub async fn verify(
        &self,
        password: Password,
        stored: PasswordHash,
    ) -> Result<Verification, ServiceError> {
        self.run(move |h| h.verify(&password, &stored)).await
    }

    /// Spends the time of one verification, for logins of unknown users.
    pub async fn dummy_verify(&self, password: Password) -> Result<(), ServiceError> {
        self.run(move |h| h.dummy_verify(&password)).await
    }

    /// Whether the password matches any of the hashes (password history).
    pub async fn matches_any(
        &self,
        password: Password,
        hashes: Vec<PasswordHash>,
    ) -> Result<bool, ServiceError> {
        self.run(move |h| {
            hashes
                .iter()
                .any(|stored| h.verify(&password, stored).is_valid())
        })
        .await
    }

    /// Raw hashes per second is measured against this in the benchmark.
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }
}
