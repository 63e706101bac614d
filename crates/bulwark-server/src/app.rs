//! The shared application state: configuration, store, hashing pool, mailer, clock, key.

use crate::clock::Clock;
use crate::config::Config;
use crate::mail::Mailer;
use crate::services::passwords::HashPool;
use bulwark_core::password::hash::PasswordHasher;
use bulwark_store::Store;
use std::sync::Arc;

/// Cheap to clone; every handler and the CLI work through it.
#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub hashes: HashPool,
    pub mailer: Mailer,
    pub clock: Arc<dyn Clock>,
    /// Server secret: keys CSRF tokens. Loaded from the key file, never stored in the database.
    pub(crate) key: Arc<[u8; 32]>,
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
    /// Assembles the application. `key` is the 32-byte server secret.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        key: [u8; 32],
    ) -> Result<Self, StartError> {
        let p = &config.passwords;
        let hasher = PasswordHasher::new(p.argon2, p.scheme, p.pbkdf2_rounds)
            .map_err(|e| StartError::Config(format!("invalid configuration: `passwords`: {e}")))?;
        let hashes = HashPool::new(hasher, p.max_concurrent_hashes);
        let mailer = Mailer::new(store.clone(), &config.mail)?;
        Ok(Self {
            config: Arc::new(config),
            store,
            hashes,
            mailer,
            clock,
            key: Arc::new(key),
        })
    }

    /// The current time, read once per request by services.
    pub fn now(&self) -> bulwark_core::UnixTime {
        self.clock.now()
    }

    /// An absolute URL under the public base URL.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.config.server.public_url, path)
    }
}

/// Reads the 32-byte server key from `path`, creating it (mode 0600) if missing.
pub fn load_or_create_key(path: &std::path::Path) -> Result<[u8; 32], StartError> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use rand::RngCore;
    let err = |what: &str, e: std::io::Error| {
        StartError::Io(format!("{what} secret key file {}: {e}", path.display()))
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = STANDARD.decode(text.trim()).map_err(|_| {
                StartError::Config(format!("invalid configuration: `secret_key_file`: {} does not hold a base64 32-byte key", path.display()))
            })?;
            <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                StartError::Config(format!("invalid configuration: `secret_key_file`: {} must hold exactly 32 bytes (base64)", path.display()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| err("cannot create the directory of the", e))?;
            }
            write_private(path, format!("{}\n", STANDARD.encode(key)).as_bytes())
                .map_err(|e| err("cannot write", e))?;
            Ok(key)
        }
        Err(e) => Err(err("cannot read", e)),
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
