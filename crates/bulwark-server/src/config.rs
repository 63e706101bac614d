//! Configuration: defaults < TOML file < `BULWARK_*` environment < command-line flags.
//!
//! Everything is read into a loosely typed TOML table first (so each layer can override any
//! key), then deserialized once into [`RawConfig`] (`deny_unknown_fields`, so a typo is an
//! error naming the key), then validated into [`Config`]. Only `Config` is used at run time.

use bulwark_core::lockout::LockoutPolicy;
use bulwark_core::password::hash::{Argon2Params, Scheme};
use bulwark_core::password::policy::{PasswordPolicy, Preset};
use bulwark_core::session::SessionPolicy;
use bulwark_core::SecretString;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

mod api_keys;
mod audit;
mod gateway;
mod metrics;
pub mod policy;
pub use api_keys::ApiKeysConfig;
pub use audit::AuditConfig;
pub use gateway::{GatewayConfig, RawRule};
pub use metrics::MetricsConfig;
pub use policy::Policy;

/// A configuration problem, naming the key and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `server.listen`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// "`key`: message", for a refused policy setting (not a configuration file problem).
    pub fn setting_message(&self) -> String {
        format!("`{}`: {}", self.key, self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(f, "invalid configuration: `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Values given on the command line; they override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub database_url: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Raw (as written) configuration

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    secret_key_file: Option<PathBuf>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    mail: RawMail,
    #[serde(default)]
    passwords: RawPasswords,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    lockout: RawLockout,
    #[serde(default)]
    links: RawLinks,
    #[serde(default)]
    two_factor: RawTwoFactor,
    #[serde(default)]
    gateway: gateway::RawGateway,
    #[serde(default)]
    api_keys: api_keys::RawApiKeys,
    #[serde(default)]
    audit: audit::RawAudit,
    #[serde(default)]
    metrics: metrics::RawMetrics,
    secret_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTwoFactor {
    enforcement: Option<String>,
    required_groups: Option<Vec<String>>,
    grace_days: Option<u32>,
    issuer: Option<String>,
    trusted_device_days: Option<u32>,
    email_codes: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    public_url: Option<String>,
    secure_cookies: Option<bool>,
    trusted_proxies: Option<Vec<String>>,
    max_body_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    max_connections: Option<u32>,
    acquire_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMail {
    transport: Option<String>,
    from: Option<String>,
    outbox_dir: Option<PathBuf>,
    #[serde(default)]
    smtp: RawSmtp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: Option<String>,
    port: Option<u16>,
    security: Option<String>,
    username: Option<String>,
    password: Option<String>,
    timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPasswords {
    scheme: Option<String>,
    argon2_memory_kib: Option<u32>,
    argon2_iterations: Option<u32>,
    argon2_parallelism: Option<u32>,
    pbkdf2_rounds: Option<u32>,
    max_concurrent_hashes: Option<usize>,
    max_queued_hashes: Option<usize>,
    hashing_nice: Option<i32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyRules {
    min_length: Option<usize>,
    max_length: Option<usize>,
    min_lower: Option<usize>,
    min_upper: Option<usize>,
    min_digit: Option<usize>,
    min_special: Option<usize>,
    min_score: Option<u8>,
    blocklist: Option<bool>,
    history: Option<usize>,
    expiry_days: Option<u32>,
    min_age_hours: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    preset: Option<String>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    min_lower: Option<usize>,
    min_upper: Option<usize>,
    min_digit: Option<usize>,
    min_special: Option<usize>,
    min_score: Option<u8>,
    blocklist: Option<bool>,
    history: Option<usize>,
    expiry_days: Option<u32>,
    min_age_hours: Option<u32>,
    #[serde(default)]
    groups: BTreeMap<String, RawPolicyRules>,
}

impl RawPolicy {
    // serde cannot combine `flatten` with `deny_unknown_fields`, hence the copy.
    fn rules(&self) -> RawPolicyRules {
        RawPolicyRules {
            min_length: self.min_length,
            max_length: self.max_length,
            min_lower: self.min_lower,
            min_upper: self.min_upper,
            min_digit: self.min_digit,
            min_special: self.min_special,
            min_score: self.min_score,
            blocklist: self.blocklist,
            history: self.history,
            expiry_days: self.expiry_days,
            min_age_hours: self.min_age_hours,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    idle_minutes: Option<i64>,
    absolute_hours: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLockout {
    #[serde(default)]
    account: RawLockoutRules,
    #[serde(default)]
    ip: RawLockoutRules,
    #[serde(default)]
    code: RawLockoutRules,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLockoutRules {
    free_attempts: Option<u32>,
    max_delay_secs: Option<i64>,
    lock_after: Option<u32>,
    lock_minutes: Option<i64>,
    window_minutes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLinks {
    setup_minutes: Option<i64>,
    reset_minutes: Option<i64>,
    invitation_hours: Option<i64>,
}

// ---------------------------------------------------------------------------------------
// Validated configuration

/// The validated configuration every part of the server reads.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub data_dir: PathBuf,
    pub secret_key_file: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub mail: MailConfig,
    pub passwords: PasswordsConfig,
    pub policy: PolicyConfig,
    pub sessions: SessionsConfig,
    pub lockout: LockoutConfig,
    pub links: LinksConfig,
    pub two_factor: TwoFactorConfig,
    pub gateway: GatewayConfig,
    pub api_keys: ApiKeysConfig,
    pub audit: AuditConfig,
    pub metrics: MetricsConfig,
    /// Key ring given inline (`BULWARK_SECRET_KEY`) instead of `secret_key_file`.
    #[serde(serialize_with = "redacted")]
    pub secret_key: Option<SecretString>,
}

/// Two-factor enforcement and options.
#[derive(Debug, Clone, Serialize)]
pub struct TwoFactorConfig {
    /// The preset named in the file: `admins`, `employees` or `all`.
    pub enforcement: String,
    /// Groups whose members must use 2FA (always includes `admins`).
    pub required_groups: Vec<String>,
    /// Days a user under enforcement may postpone enrolment.
    pub grace_days: u32,
    /// Shown in authenticator apps.
    pub issuer: String,
    /// Lifetime of "remember this device"; 0 switches the feature off.
    pub trusted_device_days: u32,
    /// Whether users without an authenticator may get a code by e-mail.
    pub email_codes: bool,
}

impl TwoFactorConfig {
    /// Whether a member of `groups` must use a second factor.
    pub fn required_for<S: AsRef<str>>(&self, groups: &[S]) -> bool {
        bulwark_core::enforcement::required_for(&self.required_groups, groups)
    }
}

/// HTTP listener and public address.
#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Base URL users reach Bulwark at (no trailing slash).
    pub public_url: String,
    /// Whether cookies carry the `Secure` flag.
    pub secure_cookies: bool,
    /// Whether the public URL is HTTPS (drives HSTS).
    pub https: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub max_body_bytes: usize,
}

/// Which store and how many connections.
#[derive(Clone, Serialize)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://…` / `postgresql://…`; may hold a password.
    #[serde(serialize_with = "redacted_url")]
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a free connection before it is answered with 503.
    pub acquire_timeout_secs: u64,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url_password(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_secs", &self.acquire_timeout_secs)
            .finish()
    }
}

/// The URL with the password (between `user:` and `@` in the authority) replaced by
/// `<redacted>`; other URLs are returned unchanged.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:<redacted>@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    // A password may also come as a query parameter (`?password=…`).
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=<redacted>"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url_password(url))
}

/// Outgoing mail.
#[derive(Debug, Clone, Serialize)]
pub struct MailConfig {
    pub from: String,
    pub transport: MailTransportConfig,
}

/// Where mail goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MailTransportConfig {
    /// `.eml` files in a directory (the embedded default).
    Outbox { dir: PathBuf },
    /// An SMTP relay.
    Smtp(SmtpConfig),
}

/// SMTP relay settings.
#[derive(Debug, Clone, Serialize)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    #[serde(serialize_with = "redacted")]
    pub password: Option<SecretString>,
    pub timeout_secs: u64,
}

/// Transport security to the SMTP relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (required).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: allowed only for a relay on loopback.
    None,
}

/// Password hashing.
#[derive(Debug, Clone, Serialize)]
pub struct PasswordsConfig {
    #[serde(serialize_with = "scheme_name")]
    pub scheme: Scheme,
    pub argon2: Argon2Params,
    pub pbkdf2_rounds: u32,
    pub max_concurrent_hashes: usize,
    /// Password checks that may wait for a hashing thread; more are answered 503.
    pub max_queued_hashes: usize,
    /// The hashing threads' nice value (Linux): above the server's so checks come first.
    pub hashing_nice: i32,
}

/// Password policy: the base rules and per-group tightenings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyConfig {
    pub preset: Preset,
    pub base: PasswordPolicy,
    pub groups: BTreeMap<String, PasswordPolicy>,
}

impl PolicyConfig {
    /// The policy for a member of `groups`: the strictest of the base and each group's rules.
    pub fn for_groups<S: AsRef<str>>(&self, groups: &[S]) -> PasswordPolicy {
        groups
            .iter()
            .filter_map(|g| self.groups.get(g.as_ref()))
            .fold(self.base.clone(), |acc, p| acc.strictest(p))
    }

    /// The shortest password expiry (days) any user can have; `None` if passwords never
    /// expire under any policy.
    pub fn shortest_expiry_days(&self) -> Option<u32> {
        std::iter::once(&self.base)
            .chain(self.groups.values())
            .map(|p| p.expiry_days)
            .filter(|&d| d > 0)
            .min()
    }
}

/// Session timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SessionsConfig {
    pub idle_minutes: i64,
    pub absolute_hours: i64,
}

impl SessionsConfig {
    /// The domain rule these settings describe.
    pub fn policy(&self) -> SessionPolicy {
        SessionPolicy {
            idle_secs: self.idle_minutes * 60,
            absolute_secs: self.absolute_hours * 3600,
        }
    }
}

/// Login throttling per account and per client IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LockoutConfig {
    pub account: LockoutPolicy,
    pub ip: LockoutPolicy,
    /// Second-factor code entry (TOTP, recovery, e-mailed code), per account.
    pub code: LockoutPolicy,
}

/// Lifetimes of links sent by mail or printed at first start.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LinksConfig {
    pub setup_minutes: i64,
    pub reset_minutes: i64,
    pub invitation_hours: i64,
}

pub(crate) fn redacted<S: serde::Serializer>(
    v: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

fn scheme_name<S: serde::Serializer>(v: &Scheme, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match v {
        Scheme::Argon2id => "argon2id",
        Scheme::Pbkdf2Sha512 => "pbkdf2-sha512",
    })
}

impl Config {
    /// Loads the layers and validates them. `file` is the `--config` path, if any.
    pub fn load(
        file: Option<&Path>,
        env: &[(String, String)],
        cli: &CliOverrides,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(
                        "",
                        format!("cannot read config file {}: {e}", path.display()),
                    )
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| {
                    ConfigError::new(
                        "",
                        format!("config file {} is not valid TOML: {e}", path.display()),
                    )
                })?
            }
            None => toml::Table::new(),
        };
        // Environment values that were read as numbers, booleans or arrays: if the key wants
        // text after all (an SMTP password of `123456`), they are given back as text.
        let mut coerced: Vec<(Vec<String>, String)> = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("BULWARK_") else {
                continue;
            };
            if matches!(rest, "CONFIG" | "LOG") || rest.is_empty() {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            let typed = env_value(value);
            if !typed.is_str() {
                coerced.push((path.clone(), value.clone()));
            }
            set_path(&mut table, &path, typed)
                .map_err(|m| ConfigError::new(format!("environment {name}"), m))?;
        }
        let overrides = [
            (
                &["data_dir"][..],
                cli.data_dir.as_ref().map(|p| p.display().to_string()),
            ),
            (&["server", "listen"][..], cli.listen.clone()),
            (&["server", "public_url"][..], cli.public_url.clone()),
            (&["database", "url"][..], cli.database_url.clone()),
        ];
        for (path, value) in overrides {
            if let Some(v) = value {
                let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
                set_path(&mut table, &path, toml::Value::String(v))
                    .map_err(|m| ConfigError::new(path.join("."), m))?;
            }
        }
        let raw: RawConfig = loop {
            match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
                Ok(raw) => break raw,
                Err(e) => {
                    let key = e.path().to_string();
                    let retry = coerced
                        .iter()
                        .position(|(path, _)| path.join(".") == key)
                        .map(|i| coerced.swap_remove(i));
                    match retry {
                        Some((path, text)) => {
                            set_path(&mut table, &path, toml::Value::String(text))
                                .map_err(|m| ConfigError::new(key, m))?
                        }
                        None => {
                            return Err(ConfigError::new(
                                if key == "." { String::new() } else { key },
                                e.into_inner().to_string(),
                            ))
                        }
                    }
                }
            }
        };
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from("./bulwark-data"));
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("data_dir", "must not be empty"));
        }
        let secret_key_file = raw
            .secret_key_file
            .unwrap_or_else(|| data_dir.join("secret.key"));

        let listen_text = raw.server.listen.unwrap_or_else(|| "127.0.0.1:9091".into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::new(
                "server.listen",
                format!("`{listen_text}` is not an address like 127.0.0.1:9091"),
            )
        })?;
        let public_url = match raw.server.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => default_public_url(listen),
        };
        let (https, loopback, public_host) = parse_public_url(&public_url)?;
        let secure_cookies = raw.server.secure_cookies.unwrap_or(https);
        if !secure_cookies && !loopback {
            return Err(ConfigError::new(
                "server.secure_cookies",
                "cookies without the Secure flag are only allowed when server.public_url is on loopback (plain-HTTP local use)",
            ));
        }
        let trusted_proxies = raw
            .server
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_net(s).ok_or_else(|| {
                    ConfigError::new(
                        format!("server.trusted_proxies[{i}]"),
                        format!("`{s}` is not an IP address or CIDR like 10.0.0.0/8"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_body_bytes = raw.server.max_body_bytes.unwrap_or(64 * 1024);
        if !(1024..=10 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be between 1024 and 10485760",
            ));
        }

        let url = raw
            .database
            .url
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("bulwark.db").display()));
        // The one check of the scheme outside `cli::open_store`, which opens the backend.
        let known_scheme = ["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|p| url.starts_with(p));
        if !known_scheme {
            return Err(ConfigError::new(
                "database.url",
                "must start with sqlite://, postgres:// or postgresql://",
            ));
        }
        let max_connections = raw.database.max_connections.unwrap_or(8);
        if !(1..=1000).contains(&max_connections) {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be between 1 and 1000",
            ));
        }

        let acquire_timeout_secs = raw.database.acquire_timeout_secs.unwrap_or(5);
        if !(1..=300).contains(&acquire_timeout_secs) {
            return Err(ConfigError::new(
                "database.acquire_timeout_secs",
                "must be between 1 and 300",
            ));
        }

        let mail = validate_mail(raw.mail, &data_dir)?;
        let passwords = validate_passwords(raw.passwords)?;
        let policy = validate_policy(raw.policy)?;

        let sessions = validate_sessions(raw.sessions)?;
        let lockout = validate_lockout(raw.lockout)?;

        let links = LinksConfig {
            setup_minutes: raw.links.setup_minutes.unwrap_or(60),
            reset_minutes: raw.links.reset_minutes.unwrap_or(30),
            invitation_hours: raw.links.invitation_hours.unwrap_or(72),
        };
        for (key, v, max) in [
            ("links.setup_minutes", links.setup_minutes, 24 * 60),
            ("links.reset_minutes", links.reset_minutes, 24 * 60),
            ("links.invitation_hours", links.invitation_hours, 24 * 30),
        ] {
            if !(1..=max).contains(&v) {
                return Err(ConfigError::new(
                    key,
                    format!("must be between 1 and {max}"),
                ));
            }
        }

        let two_factor = validate_two_factor(raw.two_factor)?;
        let gateway = gateway::validate(raw.gateway, &public_host)?;
        let api_keys = api_keys::validate(raw.api_keys)?;
        let audit = audit::validate(raw.audit)?;
        let metrics = metrics::validate(raw.metrics)?;
        let secret_key = raw.secret_key.map(SecretString::new);
        if let Some(k) = &secret_key {
            crate::keys::KeyRing::parse(k.expose())
                .map_err(|e| ConfigError::new("secret_key", e.to_string()))?;
        }

        Ok(Self {
            two_factor,
            gateway,
            api_keys,
            audit,
            metrics,
            secret_key,
            data_dir,
            secret_key_file,
            server: ServerConfig {
                listen,
                public_url,
                secure_cookies,
                https,
                trusted_proxies,
                max_body_bytes,
            },
            database: DatabaseConfig {
                url,
                max_connections,
                acquire_timeout_secs,
            },
            mail,
            passwords,
            policy,
            sessions,
            lockout,
            links,
        })
    }

    /// The effective configuration as TOML, secrets shown as `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }

    /// True when cookies go over plain HTTP (local use only): `serve` warns about it.
    pub fn insecure_cookies(&self) -> bool {
        !self.server.secure_cookies
    }
}

fn default_public_url(listen: SocketAddr) -> String {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => format!("http://127.0.0.1:{}", listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => format!("http://[::1]:{}", listen.port()),
        _ => format!("http://{listen}"),
    }
}

/// Returns (is https, host is loopback, host).
fn parse_public_url(url: &str) -> Result<(bool, bool, String), ConfigError> {
    let err = || {
        ConfigError::new(
            "server.public_url",
            format!("`{url}` is not an absolute http(s) URL like https://auth.example.com"),
        )
    };
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(err());
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() {
        // Pages, links and the `__Host-` cookies all live at the root of their own host.
        return Err(ConfigError::new(
            "server.public_url",
            format!("`{url}` has a path; Bulwark is served at the root of its own host name, like https://auth.example.com"),
        ));
    }
    if authority.is_empty()
        || authority.contains('@')
        || rest.contains(['?', '#'])
        || rest.contains(char::is_whitespace)
    {
        return Err(err());
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if !https && !loopback {
        return Err(ConfigError::new(
            "server.public_url",
            format!("`{url}` must use https:// (plain http is only allowed on loopback, e.g. http://127.0.0.1:9091)"),
        ));
    }
    Ok((https, loopback, host.to_string()))
}

/// Parses `10.0.0.0/8` or a single address (as a /32 or /128).
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn validate_mail(raw: RawMail, data_dir: &Path) -> Result<MailConfig, ConfigError> {
    let from = raw
        .from
        .unwrap_or_else(|| "Bulwark <bulwark@localhost>".into());
    if from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(ConfigError::new(
            "mail.from",
            format!("`{from}` is not a mailbox like `Bulwark <security@example.com>`"),
        ));
    }
    let transport = match raw.transport.as_deref().unwrap_or("outbox") {
        "outbox" => MailTransportConfig::Outbox {
            dir: raw.outbox_dir.unwrap_or_else(|| data_dir.join("outbox")),
        },
        "smtp" => {
            let host = raw
                .smtp
                .host
                .filter(|h| !h.trim().is_empty())
                .ok_or_else(|| {
                    ConfigError::new(
                        "mail.smtp.host",
                        "is required when mail.transport = \"smtp\"",
                    )
                })?;
            let security = match raw.smtp.security.as_deref().unwrap_or("starttls") {
                "starttls" => SmtpSecurity::Starttls,
                "tls" => SmtpSecurity::Tls,
                "none" => SmtpSecurity::None,
                other => {
                    return Err(ConfigError::new(
                        "mail.smtp.security",
                        format!("`{other}` is not one of starttls, tls, none"),
                    ))
                }
            };
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false);
            if security == SmtpSecurity::None && !loopback {
                return Err(ConfigError::new(
                    "mail.smtp.security",
                    "\"none\" (no encryption) is only allowed for a relay on loopback",
                ));
            }
            let port = raw.smtp.port.unwrap_or(match security {
                SmtpSecurity::Tls => 465,
                SmtpSecurity::Starttls => 587,
                SmtpSecurity::None => 25,
            });
            if raw.smtp.username.is_some() != raw.smtp.password.is_some() {
                return Err(ConfigError::new(
                    "mail.smtp.password",
                    "set both mail.smtp.username and mail.smtp.password, or neither",
                ));
            }
            MailTransportConfig::Smtp(SmtpConfig {
                host,
                port,
                security,
                username: raw.smtp.username,
                password: raw.smtp.password.map(SecretString::new),
                timeout_secs: match raw.smtp.timeout_secs.unwrap_or(15) {
                    t @ 1..=300 => t,
                    t => {
                        return Err(ConfigError::new(
                            "mail.smtp.timeout_secs",
                            format!("{t} is out of range: give 1 to 300 seconds"),
                        ))
                    }
                },
            })
        }
        other => {
            return Err(ConfigError::new(
                "mail.transport",
                format!("`{other}` is not one of outbox, smtp"),
            ))
        }
    };
    Ok(MailConfig { from, transport })
}

fn validate_two_factor(raw: RawTwoFactor) -> Result<TwoFactorConfig, ConfigError> {
    let enforcement = raw.enforcement.unwrap_or_else(|| "employees".into());
    let mut required: Vec<String> = match enforcement.as_str() {
        "admins" => vec!["admins".into()],
        "employees" => vec!["admins".into(), "internal".into()],
        "all" => vec!["admins".into(), "internal".into(), "portal".into()],
        other => {
            return Err(ConfigError::new(
                "two_factor.enforcement",
                format!("`{other}` is not one of admins, employees, all"),
            ))
        }
    };
    for (i, g) in raw.required_groups.unwrap_or_default().iter().enumerate() {
        let g = bulwark_core::account::GroupName::parse(g).map_err(|e| {
            ConfigError::new(format!("two_factor.required_groups[{i}]"), e.to_string())
        })?;
        required.push(g.to_string());
    }
    required.sort();
    required.dedup();
    let grace_days = raw.grace_days.unwrap_or(7);
    if grace_days > 365 {
        return Err(ConfigError::new(
            "two_factor.grace_days",
            "must be between 0 and 365",
        ));
    }
    let issuer = raw.issuer.unwrap_or_else(|| "Bulwark".into());
    if issuer.trim().is_empty()
        || issuer.chars().count() > 64
        || issuer.contains(':')
        || issuer.chars().any(char::is_control)
    {
        return Err(ConfigError::new(
            "two_factor.issuer",
            "must be 1 to 64 characters without `:` or control characters",
        ));
    }
    let trusted_device_days = raw.trusted_device_days.unwrap_or(30);
    if trusted_device_days > 365 {
        return Err(ConfigError::new(
            "two_factor.trusted_device_days",
            "must be between 0 (off) and 365",
        ));
    }
    Ok(TwoFactorConfig {
        enforcement,
        required_groups: required,
        grace_days,
        issuer,
        trusted_device_days,
        email_codes: raw.email_codes.unwrap_or(true),
    })
}

fn validate_passwords(raw: RawPasswords) -> Result<PasswordsConfig, ConfigError> {
    let scheme = match raw.scheme.as_deref().unwrap_or("argon2id") {
        "argon2id" => Scheme::Argon2id,
        "pbkdf2-sha512" => Scheme::Pbkdf2Sha512,
        other => {
            return Err(ConfigError::new(
                "passwords.scheme",
                format!("`{other}` is not one of argon2id, pbkdf2-sha512"),
            ))
        }
    };
    let d = Argon2Params::default();
    let argon2 = Argon2Params {
        memory_kib: raw.argon2_memory_kib.unwrap_or(d.memory_kib),
        iterations: raw.argon2_iterations.unwrap_or(d.iterations),
        parallelism: raw.argon2_parallelism.unwrap_or(d.parallelism),
    };
    if !(8192..=4 * 1024 * 1024).contains(&argon2.memory_kib) {
        return Err(ConfigError::new(
            "passwords.argon2_memory_kib",
            "must be between 8192 and 4194304 (OWASP minimum is 19456 with 2 iterations)",
        ));
    }
    if !(1..=100).contains(&argon2.iterations) {
        return Err(ConfigError::new(
            "passwords.argon2_iterations",
            "must be between 1 and 100",
        ));
    }
    if !(1..=64).contains(&argon2.parallelism) {
        return Err(ConfigError::new(
            "passwords.argon2_parallelism",
            "must be between 1 and 64",
        ));
    }
    let pbkdf2_rounds = raw.pbkdf2_rounds.unwrap_or(600_000);
    if pbkdf2_rounds < 600_000 {
        return Err(ConfigError::new(
            "passwords.pbkdf2_rounds",
            "must be at least 600000 (OWASP for PBKDF2-HMAC-SHA512)",
        ));
    }
    let max_concurrent_hashes = raw.max_concurrent_hashes.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    if !(1..=256).contains(&max_concurrent_hashes) {
        return Err(ConfigError::new(
            "passwords.max_concurrent_hashes",
            "must be between 1 and 256",
        ));
    }
    let max_queued_hashes = raw.max_queued_hashes.unwrap_or(16 * max_concurrent_hashes);
    if !(1..=100_000).contains(&max_queued_hashes) {
        return Err(ConfigError::new(
            "passwords.max_queued_hashes",
            "must be between 1 and 100000",
        ));
    }
    let hashing_nice = raw.hashing_nice.unwrap_or(10);
    if !(0..=19).contains(&hashing_nice) {
        return Err(ConfigError::new(
            "passwords.hashing_nice",
            "must be between 0 (the server's own priority) and 19 (the lowest)",
        ));
    }
    Ok(PasswordsConfig {
        scheme,
        argon2,
        pbkdf2_rounds,
        max_concurrent_hashes,
        max_queued_hashes,
        hashing_nice,
    })
}

fn apply_rules(mut p: PasswordPolicy, r: &RawPolicyRules) -> PasswordPolicy {
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = r.$f { p.$f = v; } )* };
    }
    set!(
        min_length,
        max_length,
        min_lower,
        min_upper,
        min_digit,
        min_special,
        min_score,
        blocklist,
        history,
        expiry_days,
        min_age_hours
    );
    p
}

fn validate_policy(raw: RawPolicy) -> Result<PolicyConfig, ConfigError> {
    let preset = match raw.preset.as_deref().unwrap_or("nist") {
        "nist" => Preset::Nist,
        "strict" => Preset::Strict,
        other => {
            return Err(ConfigError::new(
                "policy.preset",
                format!("`{other}` is not one of nist, strict"),
            ))
        }
    };
    let base = apply_rules(PasswordPolicy::preset(preset), &raw.rules());
    base.validate()
        .map_err(|e| ConfigError::new(format!("policy.{}", e.field), e.message.clone()))?;
    let mut groups = BTreeMap::new();
    for (name, rules) in &raw.groups {
        if bulwark_core::account::GroupName::parse(name).is_err() {
            return Err(ConfigError::new(
                format!("policy.groups.{name}"),
                "is not a valid group name",
            ));
        }
        let p = apply_rules(base.clone(), rules);
        p.validate().map_err(|e| {
            ConfigError::new(
                format!("policy.groups.{name}.{}", e.field),
                e.message.clone(),
            )
        })?;
        groups.insert(name.clone(), p);
    }
    Ok(PolicyConfig {
        preset,
        base,
        groups,
    })
}

fn validate_sessions(raw: RawSessions) -> Result<SessionsConfig, ConfigError> {
    let sessions = SessionsConfig {
        idle_minutes: raw.idle_minutes.unwrap_or(30),
        absolute_hours: raw.absolute_hours.unwrap_or(12),
    };
    if !(1..=60 * 24 * 30).contains(&sessions.idle_minutes) {
        return Err(ConfigError::new(
            "sessions.idle_minutes",
            "must be between 1 and 43200",
        ));
    }
    if !(1..=24 * 90).contains(&sessions.absolute_hours) {
        return Err(ConfigError::new(
            "sessions.absolute_hours",
            "must be between 1 and 2160",
        ));
    }
    Ok(sessions)
}

fn validate_lockout(raw: RawLockout) -> Result<LockoutConfig, ConfigError> {
    Ok(LockoutConfig {
        account: lockout_rules(raw.account, LockoutPolicy::ACCOUNT, "lockout.account")?,
        ip: lockout_rules(raw.ip, LockoutPolicy::IP, "lockout.ip")?,
        code: lockout_rules(raw.code, LockoutPolicy::CODE, "lockout.code")?,
    })
}

fn lockout_rules(
    raw: RawLockoutRules,
    d: LockoutPolicy,
    key: &str,
) -> Result<LockoutPolicy, ConfigError> {
    let p = LockoutPolicy {
        free_attempts: raw.free_attempts.unwrap_or(d.free_attempts),
        max_delay_secs: raw.max_delay_secs.unwrap_or(d.max_delay_secs),
        lock_after: raw.lock_after.unwrap_or(d.lock_after),
        lock_secs: raw
            .lock_minutes
            .map(|m| m.saturating_mul(60))
            .unwrap_or(d.lock_secs),
        window_secs: raw
            .window_minutes
            .map(|m| m.saturating_mul(60))
            .unwrap_or(d.window_secs),
    };
    p.validate().map_err(|m| ConfigError::new(key, m))?;
    Ok(p)
}

/// Environment values are TOML scalars when they parse as one (numbers, booleans, arrays),
/// otherwise plain strings.
fn env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_)
                | toml::Value::Boolean(_)
                | toml::Value::Float(_)
                | toml::Value::Array(_)
                | toml::Value::String(_)),
            ) => v,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{part}` is not a section")),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulwark.toml");
        std::fs::write(&path, toml_text).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(Some(&path), &env, &CliOverrides::default())
    }

    #[test]
    fn defaults_work_without_a_file() {
        let c = Config::load(None, &[], &CliOverrides::default()).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9091");
        assert_eq!(c.server.public_url, "http://127.0.0.1:9091");
        assert_eq!(c.data_dir, PathBuf::from("./bulwark-data"));
        assert_eq!(c.database.url, "sqlite://./bulwark-data/bulwark.db");
        assert!(
            matches!(&c.mail.transport, MailTransportConfig::Outbox { dir } if dir == Path::new("./bulwark-data/outbox"))
        );
        assert!(!c.server.secure_cookies, "plain-HTTP loopback default");
        assert_eq!(c.policy.base.min_length, 12);
    }

    #[test]
    fn database_settings_are_checked_and_the_password_redacted() {
        let c = load(
            "[database]\nurl = \"postgres://bulwark:s3cr3t-pw@db.internal:5432/bulwark?sslmode=require\"\n\
             max_connections = 20\nacquire_timeout_secs = 3\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.database.max_connections, 20);
        assert_eq!(c.database.acquire_timeout_secs, 3);
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(
            shown
                .contains("postgres://bulwark:<redacted>@db.internal:5432/bulwark?sslmode=require"),
            "{shown}"
        );
        assert!(!format!("{:?}", c.database).contains("s3cr3t-pw"));
        assert!(load("[database]\nurl = \"postgresql://db/bulwark\"\n", &[]).is_ok());
        assert_eq!(
            load("", &[("BULWARK_DATABASE__URL", "postgres://u@h/d")])
                .unwrap()
                .database
                .url,
            "postgres://u@h/d"
        );
        for (toml_text, key) in [
            ("[database]\nurl = \"mysql://db/bulwark\"\n", "database.url"),
            (
                "[database]\nmax_connections = 0\n",
                "database.max_connections",
            ),
            (
                "[database]\nacquire_timeout_secs = 0\n",
                "database.acquire_timeout_secs",
            ),
            (
                "[database]\nacquire_timeout_secs = 301\n",
                "database.acquire_timeout_secs",
            ),
        ] {
            let err = load(toml_text, &[]).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{toml_text}: {err}");
        }
    }

    #[test]
    fn urls_without_a_password_are_shown_as_they_are() {
        for url in [
            "sqlite://./bulwark-data/bulwark.db",
            "postgres://bulwark@db/bulwark",
            "postgres://db/bulwark?user=x",
        ] {
            assert_eq!(redact_url_password(url), url);
        }
        assert_eq!(
            redact_url_password("postgres://u:p@ss@h/d"),
            "postgres://u:<redacted>@h/d"
        );
        assert_eq!(
            redact_url_password("postgres://h/d?user=u&password=pw&sslmode=require"),
            "postgres://h/d?user=u&password=<redacted>&sslmode=require"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 1\n", &[]).unwrap_err();
        assert_eq!(err.key, "server.listne");
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn invalid_value_names_key_and_allowed_values() {
        let err = load("[server]\nlisten = \"nonsense\"\n", &[]).unwrap_err();
        assert_eq!(err.key, "server.listen");
        let err = load("[policy]\npreset = \"lax\"\n", &[]).unwrap_err();
        assert!(
            err.to_string().contains("`policy.preset`") && err.to_string().contains("nist, strict"),
            "{err}"
        );
        let err = load("[policy]\nmin_length = 0\n", &[]).unwrap_err();
        assert_eq!(err.key, "policy.min_length");
        let err = load("[sessions]\nidle_minutes = \"ten\"\n", &[]).unwrap_err();
        assert_eq!(err.key, "sessions.idle_minutes");
    }

    #[test]
    fn precedence_is_file_then_env_then_cli() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:1000\"\n[sessions]\nidle_minutes = 5\n",
        )
        .unwrap();
        let env = vec![
            (
                "BULWARK_SERVER__LISTEN".to_string(),
                "127.0.0.1:2000".to_string(),
            ),
            ("BULWARK_SESSIONS__IDLE_MINUTES".into(), "7".into()),
        ];
        let c = Config::load(Some(&path), &env, &CliOverrides::default()).unwrap();
        assert_eq!(c.server.listen.port(), 2000);
        assert_eq!(c.sessions.idle_minutes, 7);
        let cli = CliOverrides {
            listen: Some("127.0.0.1:3000".into()),
            ..Default::default()
        };
        let c = Config::load(Some(&path), &env, &cli).unwrap();
        assert_eq!(c.server.listen.port(), 3000);
    }

    #[test]
    fn unknown_env_key_is_rejected() {
        let err = load("", &[("BULWARK_SERVER__LISTN", "x")]).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn plain_http_is_only_for_loopback() {
        let err = load("[server]\npublic_url = \"http://auth.example.com\"\n", &[]).unwrap_err();
        assert_eq!(err.key, "server.public_url");
        let c = load(
            "[server]\npublic_url = \"https://auth.example.com/\"\n",
            &[],
        )
        .unwrap();
        assert!(c.server.secure_cookies && c.server.https);
        assert_eq!(c.server.public_url, "https://auth.example.com");
        let err = load(
            "[server]\npublic_url = \"https://auth.example.com\"\nsecure_cookies = false\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key, "server.secure_cookies");
        let err = load("[server]\npublic_url = \"https://example.com/auth\"\n", &[]).unwrap_err();
        assert_eq!(err.key, "server.public_url");
        assert!(err.to_string().contains("has a path"), "{err}");
    }

    #[test]
    fn smtp_settings_are_checked_and_password_redacted() {
        let err = load("[mail]\ntransport = \"smtp\"\n", &[]).unwrap_err();
        assert_eq!(err.key, "mail.smtp.host");
        let err = load(
            "[mail]\ntransport = \"smtp\"\n[mail.smtp]\nhost = \"mail.example.com\"\ntimeout_secs = 0\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key, "mail.smtp.timeout_secs");
        let err = load("[mail]\ntransport = \"smtp\"\n[mail.smtp]\nhost = \"mail.example.com\"\nsecurity = \"none\"\n", &[]).unwrap_err();
        assert_eq!(err.key, "mail.smtp.security");
        let c = load(
            "[mail]\ntransport = \"smtp\"\n[mail.smtp]\nhost = \"mail.example.com\"\nusername = \"u\"\n",
            &[("BULWARK_MAIL__SMTP__PASSWORD", "s3cr3t-smtp-pass")],
        )
        .unwrap();
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("s3cr3t-smtp-pass"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(!format!("{c:?}").contains("s3cr3t-smtp-pass"));
    }

    #[test]
    fn environment_text_that_looks_like_a_number_stays_text() {
        let c = load(
            "[mail]\ntransport = \"smtp\"\n[mail.smtp]\nhost = \"mail.example.com\"\n",
            &[
                ("BULWARK_MAIL__SMTP__USERNAME", "007"),
                ("BULWARK_MAIL__SMTP__PASSWORD", "1e5"),
                ("BULWARK_MAIL__SMTP__PORT", "2525"),
            ],
        )
        .unwrap();
        let MailTransportConfig::Smtp(smtp) = &c.mail.transport else {
            panic!("smtp expected");
        };
        assert_eq!(smtp.username.as_deref(), Some("007"));
        assert_eq!(smtp.password.as_ref().unwrap().expose(), "1e5");
        assert_eq!(smtp.port, 2525);
        // A number where a number belongs is still checked as one.
        let err = load("", &[("BULWARK_SESSIONS__IDLE_MINUTES", "soon")]).unwrap_err();
        assert_eq!(err.key, "sessions.idle_minutes");
    }

    #[test]
    fn gateway_rules_are_checked_at_startup_naming_the_rule() {
        let rules = |rule: &str| {
            load(
                &format!("[[gateway.rules]]\npolicy = \"one_factor\"\n[[gateway.rules]]\n{rule}\n"),
                &[],
            )
        };
        for (rule, key) in [
            ("policy = \"allow\"", "gateway.rules[1].policy"),
            ("paths = [\"/ok\"]", "gateway.rules[1].policy"),
            (
                "policy = \"deny\"\npath_regex = [\"^/web(\"]",
                "gateway.rules[1].path_regex[0]",
            ),
            (
                "policy = \"deny\"\npaths = [\"/ok\", \"web\"]",
                "gateway.rules[1].paths[1]",
            ),
            (
                "policy = \"deny\"\nnetworks = [\"10.0.0.0/33\"]",
                "gateway.rules[1].networks[0]",
            ),
            (
                "policy = \"deny\"\nhosts = [\"*.\"]",
                "gateway.rules[1].hosts[0]",
            ),
            (
                "policy = \"deny\"\nmethods = [\"G T\"]",
                "gateway.rules[1].methods[0]",
            ),
            (
                "policy = \"deny\"\nsubjects = [\"admins\"]",
                "gateway.rules[1].subjects[0]",
            ),
            (
                "policy = \"bypass\"\nsubjects = [\"group:admins\"]",
                "gateway.rules[1].subjects",
            ),
            (
                "policy = \"deny\"\npathz = [\"/\"]",
                "gateway.rules[1].pathz",
            ),
        ] {
            let err = rules(rule).unwrap_err();
            assert_eq!(err.key, key, "{rule}: {err}");
        }
        let c = rules("policy = \"two_factor\"\nhosts = [\"*.example.com\"]\npath_regex = [\"^/web(/|$)\"]\nmethods = [\"get\"]").unwrap();
        assert_eq!(c.gateway.compiled.rules.len(), 2);
        assert_eq!(c.gateway.compiled.rules[1].methods, vec!["GET".to_string()]);
        assert_eq!(c.gateway.default_policy, "deny");
        assert!(c.to_redacted_toml().contains("^/web(/|$)"));
    }

    #[test]
    fn gateway_origins_and_cookie_domain_are_checked() {
        let err = load(
            "[gateway]\nprotected = [\"https://odoo.example.com/web\"]\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key, "gateway.protected[0]");
        let err = load("[gateway]\ndefault_policy = \"open\"\n", &[]).unwrap_err();
        assert_eq!(err.key, "gateway.default_policy");
        let err = load("[gateway]\ncache_seconds = 61\n", &[]).unwrap_err();
        assert_eq!(err.key, "gateway.cache_seconds");
        let err = load("[gateway]\ncache_entries = 0\n", &[]).unwrap_err();
        assert_eq!(err.key, "gateway.cache_entries");
        let https = "[server]\npublic_url = \"https://auth.example.com\"\n";
        let err = load(
            &format!("{https}[gateway]\ncookie_domain = \"example.org\"\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key, "gateway.cookie_domain");
        assert!(err.to_string().contains("auth.example.com"), "{err}");
        let err = load(&format!("{https}[gateway]\ncookie_domain = \"com\"\n"), &[]).unwrap_err();
        assert_eq!(err.key, "gateway.cookie_domain");
        let c = load(
            &format!("{https}[gateway]\ncookie_domain = \".Example.com\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.gateway.cookie_domain.as_deref(), Some("example.com"));
    }

    #[test]
    fn trusted_proxies_must_be_networks() {
        let c = load(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.server.trusted_proxies.len(), 2);
        let err = load("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n", &[]).unwrap_err();
        assert_eq!(err.key, "server.trusted_proxies[0]");
    }

    #[test]
    fn group_overrides_only_tighten() {
        let c = load("[policy]\npreset = \"nist\"\n[policy.groups.admins]\nmin_length = 16\n[policy.groups.portal]\nmin_length = 8\n", &[]).unwrap();
        assert_eq!(c.policy.for_groups(&["admins", "internal"]).min_length, 16);
        assert_eq!(
            c.policy.for_groups(&["portal"]).min_length,
            12,
            "a looser group rule never wins over the base"
        );
        assert_eq!(c.policy.for_groups::<&str>(&[]).min_length, 12);
    }

    #[test]
    fn two_factor_presets_always_include_admins() {
        let c = Config::load(None, &[], &CliOverrides::default()).unwrap();
        assert_eq!(
            c.two_factor.required_groups,
            vec!["admins".to_string(), "internal".to_string()]
        );
        assert!(
            c.two_factor.required_for(&["internal"]) && !c.two_factor.required_for(&["portal"])
        );
        let c = load(
            "[two_factor]\nenforcement = \"all\"\nrequired_groups = [\"kiosk-ops\"]\n",
            &[],
        )
        .unwrap();
        assert!(
            c.two_factor.required_for(&["portal"]) && c.two_factor.required_for(&["kiosk-ops"])
        );
        let c = load("[two_factor]\nenforcement = \"admins\"\n", &[]).unwrap();
        assert!(
            c.two_factor.required_for(&["admins"]) && !c.two_factor.required_for(&["internal"])
        );
        assert_eq!(
            load("[two_factor]\nenforcement = \"nobody\"\n", &[])
                .unwrap_err()
                .key,
            "two_factor.enforcement"
        );
        assert_eq!(
            load("[two_factor]\nissuer = \"a:b\"\n", &[])
                .unwrap_err()
                .key,
            "two_factor.issuer"
        );
    }

    #[test]
    fn inline_secret_key_is_checked_and_redacted() {
        let err = load("", &[("BULWARK_SECRET_KEY", "nonsense")]).unwrap_err();
        assert_eq!(err.key, "secret_key");
        let ring = crate::keys::KeyRing::generate().to_text();
        let c = load("", &[("BULWARK_SECRET_KEY", ring.trim())]).unwrap();
        assert!(c.secret_key.is_some());
        assert!(!c
            .to_redacted_toml()
            .contains(ring.trim().split(':').nth(1).unwrap()));
    }

    #[test]
    fn weak_hashing_is_refused() {
        let err = load("[passwords]\npbkdf2_rounds = 1000\n", &[]).unwrap_err();
        assert_eq!(err.key, "passwords.pbkdf2_rounds");
        let err = load("[passwords]\nargon2_memory_kib = 64\n", &[]).unwrap_err();
        assert_eq!(err.key, "passwords.argon2_memory_kib");
    }

    #[test]
    fn api_key_lifetimes_take_the_strictest_group() {
        let c = Config::load(None, &[], &CliOverrides::default()).unwrap();
        assert_eq!(c.api_keys.max_days_for(&["internal"]), Some(365));
        assert_eq!(c.api_keys.default_days_for(&["internal"]), Some(90));
        assert_eq!(c.api_keys.flush_secs, 60);
        let c = load(
            "[api_keys]\nmax_days = 180\n[api_keys.groups.portal]\nmax_days = 30\n\
             [api_keys.groups.admins]\nmax_days = 60\n[api_keys.groups.internal]\nmax_days = 400\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.api_keys.max_days_for(&["internal"]),
            Some(180),
            "a group only tightens"
        );
        assert_eq!(c.api_keys.max_days_for(&["admins", "portal"]), Some(30));
        assert_eq!(c.api_keys.default_days_for(&["portal"]), Some(30));
        assert_eq!(c.api_keys.default_days_for(&["admins"]), Some(60));
        assert_eq!(c.api_keys.default_days_for::<&str>(&[]), Some(90));
        let c = load("[api_keys]\nmax_days = 0\ndefault_days = 0\n", &[]).unwrap();
        assert_eq!(c.api_keys.max_days_for(&["internal"]), None, "no maximum");
        assert_eq!(
            c.api_keys.default_days_for(&["internal"]),
            None,
            "never expires"
        );
        let c = load(
            "[api_keys]\nmax_days = 0\ndefault_days = 0\n[api_keys.groups.portal]\nmax_days = 7\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.api_keys.default_days_for(&["portal"]), Some(7));
        let c = load("[api_keys]\nmax_days = 30\n", &[]).unwrap();
        assert_eq!(
            c.api_keys.default_days, 30,
            "the default follows a smaller maximum"
        );
        let c = load("", &[("BULWARK_API_KEYS__FLUSH_SECS", "5")]).unwrap();
        assert_eq!(c.api_keys.flush_secs, 5);
        assert!(c.to_redacted_toml().contains("[api_keys]"));
    }

    #[test]
    fn api_key_settings_are_checked_naming_the_key() {
        for (text, key) in [
            ("[api_keys]\nmax_days = 4000\n", "api_keys.max_days"),
            ("[api_keys]\nmax_days = -1\n", "api_keys.max_days"),
            (
                "[api_keys]\nmax_days = 30\ndefault_days = 31\n",
                "api_keys.default_days",
            ),
            ("[api_keys]\ndefault_days = 0\n", "api_keys.default_days"),
            (
                "[api_keys]\nmax_days = 0\ndefault_days = 5000\n",
                "api_keys.default_days",
            ),
            ("[api_keys]\nflush_secs = 0\n", "api_keys.flush_secs"),
            ("[api_keys]\nflush_secs = 7200\n", "api_keys.flush_secs"),
            ("[api_keys]\nmax_per_user = 0\n", "api_keys.max_per_user"),
            ("[api_keys]\nmax_dayz = 3\n", "api_keys.max_dayz"),
            (
                "[api_keys.groups.portal]\nmax_days = 0\n",
                "api_keys.groups.portal.max_days",
            ),
            (
                "[api_keys.groups.portal]\n",
                "api_keys.groups.portal.max_days",
            ),
            (
                "[api_keys.groups.portal]\nmin_days = 3\n",
                "api_keys.groups.portal.min_days",
            ),
            (
                "[api_keys.groups.Portal]\nmax_days = 3\n",
                "api_keys.groups.Portal",
            ),
            (
                "[api_keys.groups.\"a b\"]\nmax_days = 3\n",
                "api_keys.groups.a b",
            ),
        ] {
            let err = load(text, &[]).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
        let err = load("", &[("BULWARK_API_KEYS__FLUSH_SECS", "soon")]).unwrap_err();
        assert_eq!(err.key, "api_keys.flush_secs");
    }

    #[test]
    fn audit_retention_is_off_by_default_and_checked() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.audit.retention_secs(), None, "events are kept forever");
        let c = load("[audit]\nretention_days = 400\n", &[]).unwrap();
        assert_eq!(c.audit.retention_secs(), Some(400 * 86_400));
        for (text, key) in [
            ("[audit]\nretention_days = 40000\n", "audit.retention_days"),
            ("[audit]\nretention_days = -1\n", "audit.retention_days"),
            ("[audit]\nkeep = 1\n", "audit.keep"),
        ] {
            let err = load(text, &[]).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
    }

    #[test]
    fn metrics_are_loopback_only_by_default_and_checked() {
        let c = load("", &[]).unwrap();
        assert!(c.metrics.enabled);
        assert!(c.metrics.token.is_none());
        assert_eq!(c.metrics.networks.len(), 2);
        let c = load(
            "[metrics]\ntoken = \"0123456789abcdef01\"\nnetworks = [\"10.1.0.0/16\", \"192.0.2.9\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.metrics.token.as_ref().unwrap().expose(),
            "0123456789abcdef01"
        );
        assert_eq!(c.metrics.networks[1].to_string(), "192.0.2.9/32");
        assert!(!c.to_redacted_toml().contains("0123456789abcdef01"));
        for (text, key) in [
            ("[metrics]\ntoken = \"short\"\n", "metrics.token"),
            (
                "[metrics]\nnetworks = [\"10.0.0.0/33\"]\n",
                "metrics.networks[0]",
            ),
            ("[metrics]\nenabled = \"yes\"\n", "metrics.enabled"),
        ] {
            let err = load(text, &[]).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
    }
}
