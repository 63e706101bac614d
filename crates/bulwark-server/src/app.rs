//! The shared application state: configuration, store, hashing pool, mailer, clock, key.

use crate::clock::Clock;
use crate::config::{Config, Policy};
use crate::keys::{KeyError, KeyRing};
use crate::mail::Mailer;
use crate::services::api_keys::KeyUsage;
use crate::services::check_cache::{KeyCache, SessionCache};
use crate::services::passwords::HashPool;
use bulwark_core::password::hash::PasswordHasher;
use bulwark_store::Store;
use std::sync::{Arc, RwLock};

/// Cheap to clone (one reference count: it is cloned for every request); every handler and
/// the CLI work through it. Its parts are reached through `Deref` to [`AppParts`].
#[derive(Clone)]
pub struct App(Arc<AppParts>);

impl std::ops::Deref for App {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// What an [`App`] holds.
pub struct AppParts {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub hashes: HashPool,
    pub mailer: Mailer,
    pub clock: Arc<dyn Clock>,
    /// Server keys (CSRF, TOTP secret sealing). Loaded from the key file or the environment,
    /// never stored in the database.
    pub(crate) keys: Arc<RwLock<KeyRing>>,
    /// Sessions recently checked by the gateway (see `services::check_cache`).
    pub(crate) session_cache: Arc<SessionCache>,
    /// API keys recently checked by the gateway (see `services::check_cache`).
    pub(crate) key_cache: Arc<KeyCache>,
    /// API key uses not yet written to the store (flushed every `api_keys.flush_secs`).
    pub key_usage: Arc<KeyUsage>,
    /// The session cookie's name, computed once: the gateway reads it on every check.
    pub(crate) session_cookie_name: String,
    /// This node's counters for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The security policy in force (see `config::policy`): the file's until the stored one
    /// is loaded, then re-read every few seconds (`services::policy`).
    pub(crate) policy: RwLock<Arc<Policy>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("public_url", &self.config.server.public_url)
            .finish_non_exhaustive()
    }
}

/// Why the application could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error("database: {0}")]
    Store(#[from] bulwark_store::StoreError),
}

impl App {
    /// Assembles the application with its key ring.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: KeyRing,
    ) -> Result<Self, StartError> {
        let p = &config.passwords;
        let hasher = PasswordHasher::new(p.argon2, p.scheme, p.pbkdf2_rounds)
            .map_err(|e| StartError::Config(format!("invalid configuration: `passwords`: {e}")))?;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let hashes = HashPool::new(
            hasher,
            p.max_concurrent_hashes,
            p.max_queued_hashes,
            p.hashing_nice,
            metrics.clone(),
        )
        .map_err(|e| StartError::Config(format!("cannot start the hashing threads: {e}")))?;
        let mailer = Mailer::new(store.clone(), &config.mail, metrics.clone())?;
        let session_cache = Arc::new(SessionCache::new(
            config.gateway.cache_seconds,
            config.gateway.cache_entries,
        ));
        let key_cache = Arc::new(KeyCache::new(
            config.gateway.cache_seconds,
            config.gateway.cache_entries,
        ));
        let session_cookie_name = crate::web::session_cookie_name_for(&config);
        let policy = RwLock::new(Arc::new(Policy::from_config(&config)));
        Ok(Self(Arc::new(AppParts {
            policy,
            config: Arc::new(config),
            store,
            hashes,
            mailer,
            clock,
            session_cache,
            key_cache,
            keys: Arc::new(RwLock::new(keys)),
            key_usage: Arc::new(KeyUsage::default()),
            session_cookie_name,
            metrics,
        })))
    }

    /// The current time, read once per request by services.
    pub fn now(&self) -> bulwark_core::UnixTime {
        self.clock.now()
    }

    /// The security policy in force, read once per decision.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A copy of the current key ring.
    pub fn key_ring(&self) -> KeyRing {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The key CSRF tokens are made with.
    pub fn csrf_key(&self) -> [u8; 32] {
        self.key_ring().csrf_key()
    }

    /// Re-reads the key file (after a rotation by another process); false if unchanged or
    /// the keys come from the environment.
    pub fn reload_keys(&self) -> Result<bool, KeyError> {
        if self.config.secret_key.is_some() {
            return Ok(false);
        }
        let text = std::fs::read_to_string(&self.config.secret_key_file).map_err(|e| {
            KeyError::Io(format!(
                "cannot read {}: {e}",
                self.config.secret_key_file.display()
            ))
        })?;
        let fresh = KeyRing::parse(&text)?;
        let mut guard = match self.keys.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = guard.ids() != fresh.ids();
        *guard = fresh;
        Ok(changed)
    }

    /// Opens a sealed secret, re-reading the key file once if its key is not known yet.
    pub fn open_secret(&self, key_id: &str, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self.key_ring().open(key_id, sealed, aad) {
            Err(KeyError::UnknownKey(_)) if self.reload_keys()? => {
                self.key_ring().open(key_id, sealed, aad)
            }
            other => other,
        }
    }

    /// An absolute URL under the public base URL.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.config.server.public_url, path)
    }
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
