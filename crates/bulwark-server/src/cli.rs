//! The `bulwark` command line: `serve`, `migrate`, `config check`, `user …`, `apikey …`,
//! `password hash`, `healthcheck`. Every admin action works here without the web console.

use crate::app::{App, StartError};
use crate::clock::{format_time, Clock as _, SystemClock};
use crate::config::{CliOverrides, Config};
use crate::keys::KeyRing;
use crate::mail::Transport;
use crate::services::users::NewUserInput;
use crate::services::{ClientInfo, ServiceError};
use bulwark_core::password::Password;
use bulwark_store::{Store, UserFilter, UserRecord};
use bulwark_store_postgres::{PgStore, PoolSettings};
use bulwark_store_sqlite::SqliteStore;
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// `println!` for command output, except that a reader who stops early (`| head`) ends the
/// command quietly instead of a panic on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// Bulwark: account security (passwords, two-factor, lockout) for Odoo and any web app.
#[derive(Debug, Parser)]
#[command(name = "bulwark", version, about)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "BULWARK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (default ./bulwark-data).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:9091).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// Public base URL users reach Bulwark at.
    #[arg(long, global = true, value_name = "URL")]
    public_url: Option<String>,
    /// Database URL (default sqlite://DATA_DIR/bulwark.db).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve,
    /// Bring the database schema up to date, then exit.
    Migrate,
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Password tools.
    #[command(subcommand)]
    Password(PasswordCommand),
    /// Server key ring (TOTP secret encryption, CSRF).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage users' API keys.
    #[command(subcommand)]
    Apikey(ApiKeyCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The security policy in force (password rules, two-factor enforcement, trusted
    /// devices, session timeouts, lockout), stored in the database.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Reports for auditors.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Backups of the embedded SQLite database (for PostgreSQL use pg_dump).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Replace the database with a backup after checking it. Stop the server first; the
    /// replaced database is kept beside it.
    Restore {
        /// The backup file, e.g. DATA_DIR/backups/bulwark-20261123T030000Z.db
        file: std::path::PathBuf,
    },
    /// Ask the running server whether it is healthy (exit 0 if so).
    Healthcheck,
    /// Print the OpenAPI document of the JSON API (the one served at /api/v1/openapi.json).
    Openapi,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print it, secrets redacted.
    Check,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Put a new key first in the key file and re-encrypt every TOTP secret under it.
    Rotate,
    /// Re-encrypt every TOTP secret under the current key (after changing an inline key ring).
    Reseal,
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Take a consistent copy now (the server may keep running), named by the time, check
    /// it, then prune the directory to 7 daily, 4 weekly and 3 monthly copies.
    Run {
        /// Where backups go (default DATA_DIR/backups).
        #[arg(long)]
        to: Option<std::path::PathBuf>,
    },
    /// List the backups in a directory.
    List {
        /// The directory (default DATA_DIR/backups).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Check a backup file (integrity and schema version) without restoring it.
    Check { file: std::path::PathBuf },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Print every setting in force; rules not set explicitly come from the preset.
    Show {
        /// Print JSON instead of `name = value` lines.
        #[arg(long)]
        json: bool,
    },
    /// Change settings, all or none, each audited with its old and new value. Running
    /// servers apply the change within a few seconds.
    Set {
        /// NAME=VALUE, e.g. policy.min_length=14, lockout.account.lock_after=5,
        /// two_factor.required_groups=admins,internal, policy.groups.finance.expiry_days=90
        #[arg(required = true, value_name = "NAME=VALUE")]
        settings: Vec<String>,
    },
    /// Return password rules to their preset (or, in a group, to the base rules).
    Unset {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// Two-factor coverage per group, users without two-factor, expired passwords, stale
    /// accounts, users with few recovery codes, 2FA resets and lockouts.
    Compliance {
        /// json: the numbers and the lists; csv: one line per active user.
        #[arg(long, default_value = "json", value_parser = ["json", "csv"])]
        format: String,
        /// No login for this many days makes an account stale.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
        stale_days: u32,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain and the checkpoints' signatures; exit 1 at the first broken link.
    Verify,
    /// Print events as JSON lines, oldest first, with their hashes.
    Export {
        #[command(flatten)]
        filter: AuditFilterArgs,
    },
    /// Show events, newest first.
    List {
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// How many events to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Remove events older than the retention (audit.retention_days, or --older-than-days)
    /// behind a checkpoint signed with the current key.
    Prune {
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        older_than_days: Option<u32>,
    },
}

#[derive(Debug, clap::Args)]
struct AuditFilterArgs {
    /// Only events about this login.
    #[arg(long)]
    subject: Option<String>,
    /// Only events of this kind, e.g. login, password_changed.
    #[arg(long)]
    event: Option<String>,
    /// Events at or after this time: 2026-11-23, 2026-11-23T19:02 (UTC) or Unix seconds.
    #[arg(long, value_parser = parse_time_arg)]
    since: Option<i64>,
    /// Events before this time (same forms as --since).
    #[arg(long, value_parser = parse_time_arg)]
    until: Option<i64>,
}

impl AuditFilterArgs {
    fn filter(self, limit: u32) -> bulwark_store::AuditFilter {
        bulwark_store::AuditFilter {
            subject: self.subject,
            event: self.event,
            since: self.since,
            until: self.until,
            before_id: None,
            limit,
        }
    }
}

fn parse_time_arg(text: &str) -> Result<i64, String> {
    crate::clock::parse_time(text).ok_or_else(|| {
        format!("`{text}` is not a time: use 2026-11-23, 2026-11-23T19:02 (UTC) or Unix seconds")
    })
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create a key for a user and print it on standard output: it is shown only this once.
    Create {
        login: String,
        /// A name unique among the user's keys, e.g. "nightly sync".
        #[arg(long)]
        name: String,
        /// Scope (repeatable): gateway, api:read, api:write.
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// Days until it expires (default: api_keys.default_days, within the user's maximum).
        #[arg(long, value_name = "DAYS", conflicts_with = "no_expiry")]
        days: Option<u32>,
        /// Never expires (only when no maximum applies to the user).
        #[arg(long)]
        no_expiry: bool,
    },
    /// List the keys of one user, or of every user.
    List { login: Option<String> },
    /// Revoke a key, given its name or its id (see `list`).
    Revoke {
        login: String,
        #[arg(value_name = "NAME|ID")]
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum PasswordCommand {
    /// Hash a password read from standard input and print the hash.
    Hash {
        /// argon2id (default) or pbkdf2-sha512 (Odoo/passlib format).
        #[arg(long)]
        scheme: Option<String>,
    },
}

#[derive(Debug, Args)]
struct PasswordSource {
    /// Read the password from standard input (one line) instead of prompting.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user (password prompted, read with --password-stdin, or none with --invite).
    Add {
        login: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long, default_value = "")]
        name: String,
        /// Group (repeatable): admins, internal, portal, or your own.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Create without a password and mail an invitation link.
        #[arg(long, conflicts_with = "password_stdin")]
        invite: bool,
        /// The user must choose a new password at first login.
        #[arg(long)]
        must_change_password: bool,
        #[command(flatten)]
        source: PasswordSource,
    },
    /// List users.
    List {
        #[arg(long)]
        search: Option<String>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, default_value_t = 0)]
        offset: u32,
    },
    /// Show one user.
    Show { login: String },
    /// Disable a user and end their sessions.
    Disable { login: String },
    /// Re-enable a user.
    Enable { login: String },
    /// Delete a user.
    Delete {
        login: String,
        /// Confirm deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Set a user's password (prompted or --password-stdin).
    SetPassword {
        login: String,
        /// The user must choose a new password at next login.
        #[arg(long)]
        must_change: bool,
        #[command(flatten)]
        source: PasswordSource,
    },
    /// Require a password change at next login.
    ForcePasswordChange { login: String },
    /// Mail an invitation with a link to choose a password.
    Invite { login: String },
    /// Lift a login lock (password and code entry).
    Unlock { login: String },
    /// Reset a user's two-factor authentication: removes the authenticator, recovery codes,
    /// trusted devices and sessions, and mails the user.
    #[command(name = "reset-2fa")]
    Reset2fa { login: String },
    /// Make a device account (kiosk, POS, scanner): no second factor, but logins only from
    /// these networks. `--networks ''` turns it back into a normal account.
    Device {
        login: String,
        /// Comma-separated CIDRs, e.g. 10.20.0.0/24,192.0.2.7 (required, so a forgotten flag
        /// never turns a device account back into a normal one)
        #[arg(long, value_delimiter = ',', required = true)]
        networks: Vec<String>,
    },
    /// Show or change a user's groups.
    Groups {
        login: String,
        #[arg(long, value_name = "GROUP")]
        add: Vec<String>,
        #[arg(long, value_name = "GROUP")]
        remove: Vec<String>,
        /// Replace all groups (comma-separated).
        #[arg(long, value_delimiter = ',')]
        set: Option<Vec<String>>,
    },
}

/// Entry point of the binary.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let overrides = CliOverrides {
        data_dir: cli.data_dir.clone(),
        listen: cli.listen.clone(),
        public_url: cli.public_url.clone(),
        database_url: cli.database_url.clone(),
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = match Config::load(cli.config.as_deref(), &env, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULWARK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// A CLI-level error: printed as `error: …`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("{0}")]
    Message(String),
}

impl From<ServiceError> for CliError {
    fn from(e: ServiceError) -> Self {
        Self::Message(match e {
            ServiceError::PolicyRejected(v) => {
                let lines: Vec<String> = v.iter().map(|x| format!("  - {x}")).collect();
                format!(
                    "the password does not meet the policy:\n{}",
                    lines.join("\n")
                )
            }
            ServiceError::NotFound => "no such user".into(),
            ServiceError::Internal(m) => format!("internal error: {m}"),
            ServiceError::Unavailable(m) => format!("database unavailable: {m}"),
            other => other.to_string(),
        })
    }
}

impl From<bulwark_store::StoreError> for CliError {
    fn from(e: bulwark_store::StoreError) -> Self {
        Self::Start(StartError::Store(e))
    }
}

/// Opens (without migrating) the store `database.url` names, as `serve` does; for tools
/// such as the benchmarks.
pub async fn connect_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    open_store(config).await.map_err(|e| e.to_string())
}

/// Opens the store `database.url` names: the one place that picks a backend.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, CliError> {
    let db = &config.database;
    let acquire_timeout = std::time::Duration::from_secs(db.acquire_timeout_secs);
    if db.url.starts_with("postgres://") || db.url.starts_with("postgresql://") {
        let options = PgStore::parse_url(&db.url).map_err(|e| {
            CliError::Message(format!("invalid configuration: `database.url`: {e}"))
        })?;
        let settings = PoolSettings {
            max_connections: db.max_connections,
            acquire_timeout,
            ..PoolSettings::default()
        };
        let store = PgStore::connect_with(options, settings).await?;
        return Ok(Arc::new(store));
    }
    if db.url.starts_with("sqlite:") {
        if let Some(path) = db
            .url
            .strip_prefix("sqlite://")
            .filter(|p| !p.starts_with(':'))
        {
            if let Some(parent) = std::path::Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                create_private_dir(parent)?;
            }
        }
        let store =
            SqliteStore::connect_with_timeout(&db.url, db.max_connections, acquire_timeout).await?;
        return Ok(Arc::new(store));
    }
    Err(CliError::Message(
        "invalid configuration: `database.url`: must start with sqlite://, postgres:// or postgresql://"
            .into(),
    ))
}

pub(crate) fn create_private_dir(path: &std::path::Path) -> Result<(), CliError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(path)
        .map_err(|e| CliError::Message(format!("cannot create directory {}: {e}", path.display())))
}

async fn build_app(config: Config) -> Result<App, CliError> {
    create_private_dir(&config.data_dir)?;
    let key = load_keys(&config)?;
    let store = open_store(&config).await?;
    store.migrate().await?;
    let app = App::new(config, store, Arc::new(SystemClock), key)?;
    app.load_policy().await?;
    Ok(app)
}

fn load_keys(config: &Config) -> Result<KeyRing, CliError> {
    let ring = match &config.secret_key {
        Some(inline) => KeyRing::parse(inline.expose()),
        None => crate::keys::load_or_create(&config.secret_key_file),
    };
    ring.map_err(|e| CliError::Message(format!("invalid configuration: `secret_key_file`: {e}")))
}

async fn dispatch(command: Command, config: Config) -> Result<ExitCode, CliError> {
    match command {
        Command::Serve => serve(config).await,
        Command::Openapi => {
            let doc = crate::web::openapi(&config.server.public_url);
            let text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string());
            // A reader that stops early (`| head`) is not an error.
            match writeln!(std::io::stdout().lock(), "{text}") {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Message(
                    format!("cannot write to standard output: {e}"),
                )),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Migrate => {
            let store = open_store(&config).await?;
            store.migrate().await?;
            say!("database is up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check) => {
            print!("{}", config.to_redacted_toml());
            eprintln!("configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
        Command::Password(PasswordCommand::Hash { scheme }) => {
            let scheme = match scheme.as_deref().unwrap_or("argon2id") {
                "argon2id" => bulwark_core::password::hash::Scheme::Argon2id,
                "pbkdf2-sha512" => bulwark_core::password::hash::Scheme::Pbkdf2Sha512,
                other => {
                    return Err(CliError::Message(format!(
                        "unknown scheme `{other}`: use argon2id or pbkdf2-sha512"
                    )))
                }
            };
            let p = &config.passwords;
            let hasher = bulwark_core::password::hash::PasswordHasher::new(
                p.argon2,
                scheme,
                p.pbkdf2_rounds,
            )
            .map_err(|e| CliError::Message(e.to_string()))?;
            let password = read_password(true, false)?;
            let hash = hasher
                .hash(&password)
                .map_err(|e| CliError::Message(e.to_string()))?;
            say!("{}", hash.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck => healthcheck(&config).await,
        Command::Key(cmd) => {
            let app = build_app(config).await?;
            let n = match cmd {
                KeyCommand::Rotate => app.rotate_keys().await?,
                KeyCommand::Reseal => app.reseal_secrets().await?,
            };
            say!(
                "current key: {}; {n} secrets re-encrypted",
                app.key_ring().current_id()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Apikey(cmd) => {
            let app = build_app(config).await?;
            api_key_command(&app, cmd).await?;
            let transport = Transport::from_config(&app.config.mail)?;
            app.mailer.deliver_due(&transport, app.now()).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup(cmd) => backup_command(&config, cmd).await,
        Command::Restore { file } => restore_command(&config, &file).await,
        Command::Report(ReportCommand::Compliance { format, stale_days }) => {
            let app = build_app(config).await?;
            compliance_report(&app, &format, stale_days).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(cmd) => {
            let app = build_app(config).await?;
            audit_command(&app, cmd).await
        }
        Command::Policy(cmd) => {
            // Not `build_app`: that refuses an invalid stored policy, which these commands
            // must be able to show and repair.
            create_private_dir(&config.data_dir)?;
            let key = load_keys(&config)?;
            let store = open_store(&config).await?;
            store.migrate().await?;
            let app = App::new(config, store, Arc::new(SystemClock), key)?;
            policy_command(&app, cmd).await
        }
        Command::User(cmd) => {
            let app = build_app(config).await?;
            user_command(&app, cmd).await?;
            // Deliver what the command queued (invitations, notifications) before exiting.
            let transport = Transport::from_config(&app.config.mail)?;
            app.mailer.deliver_due(&transport, app.now()).await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_password(from_stdin: bool, confirm: bool) -> Result<Password, CliError> {
    let text = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| {
            CliError::Message(format!("cannot read the password from standard input: {e}"))
        })?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let first = rpassword::prompt_password("Password: ")
            .map_err(|e| CliError::Message(format!("cannot read the password: {e}")))?;
        if confirm {
            let again = rpassword::prompt_password("Password again: ")
                .map_err(|e| CliError::Message(format!("cannot read the password: {e}")))?;
            if first != again {
                return Err(CliError::Message("the passwords do not match".into()));
            }
        }
        first
    };
    Password::parse(text).map_err(|e| CliError::Message(e.to_string()))
}

fn print_two_factor(u: &UserRecord, s: &crate::services::two_factor::TwoFactorStatus) {
    use bulwark_core::enforcement::Standing;
    let factor = if s.active {
        "on (authenticator app)"
    } else if s.pending {
        "off (enrolment started, not confirmed)"
    } else {
        "off"
    };
    let rule = match s.standing {
        Standing::Optional => "optional for this account".to_string(),
        Standing::Exempt => "exempt (device account)".to_string(),
        Standing::Satisfied => "required, satisfied".to_string(),
        Standing::Grace { deadline } => {
            format!("required, must enrol by {}", format_time(deadline))
        }
        Standing::EnrolmentRequired => "required, overdue: may only enrol".to_string(),
    };
    say!("two-factor:       {factor}; {rule}");
    if s.active {
        say!("recovery codes:   {} left", s.recovery_codes_left);
    }
    say!("trusted devices:  {}", s.trusted_devices.len());
    say!(
        "device account:   {}",
        if u.device_account {
            format!("yes, from {}", u.allowed_networks.join(", "))
        } else {
            "no".into()
        }
    );
}

fn print_user(u: &UserRecord, locked_until: Option<i64>) {
    say!("login:            {}", u.login);
    say!("name:             {}", u.display_name);
    say!("email:            {}", u.email.as_deref().unwrap_or("-"));
    say!(
        "groups:           {}",
        if u.groups.is_empty() {
            "-".into()
        } else {
            u.groups.join(",")
        }
    );
    say!(
        "active:           {}",
        if u.active { "yes" } else { "no (disabled)" }
    );
    say!("created:          {}", format_time(u.created_at));
    say!(
        "last login:       {}",
        u.last_login_at
            .map(format_time)
            .unwrap_or_else(|| "never".into())
    );
    say!(
        "password changed: {}",
        u.password_changed_at
            .map(format_time)
            .unwrap_or_else(|| "no password set".into())
    );
    say!(
        "must change:      {}",
        if u.must_change_password { "yes" } else { "no" }
    );
    say!(
        "locked:           {}",
        locked_until
            .map(|t| format!("until {}", format_time(t)))
            .unwrap_or_else(|| "no".into())
    );
}

async fn user_command(app: &App, cmd: UserCommand) -> Result<(), CliError> {
    let client = ClientInfo::cli();
    let actor = "cli";
    match cmd {
        UserCommand::Add {
            login,
            email,
            name,
            groups,
            invite,
            must_change_password,
            source,
        } => {
            if invite && email.is_none() {
                return Err(CliError::Message("--invite needs --email".into()));
            }
            let password = if invite {
                None
            } else {
                Some(
                    read_password(source.password_stdin, true)?
                        .expose()
                        .to_string(),
                )
            };
            let user = app
                .add_user(
                    NewUserInput {
                        login,
                        email,
                        display_name: name,
                        groups,
                        password,
                        must_change_password,
                    },
                    actor,
                    &client,
                )
                .await?;
            say!(
                "created user {} (groups: {})",
                user.login,
                if user.groups.is_empty() {
                    "-".into()
                } else {
                    user.groups.join(",")
                }
            );
            if invite {
                let until = app.invite_user(&user.login, actor, &client).await?;
                say!(
                    "invitation mailed to {}; the link works until {}",
                    user.email.as_deref().unwrap_or("-"),
                    format_time(until)
                );
            }
        }
        UserCommand::List {
            search,
            group,
            limit,
            offset,
        } => {
            let users = app
                .list_users(&UserFilter {
                    search,
                    group,
                    limit: limit.clamp(1, 10_000),
                    offset,
                })
                .await?;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{:<32} {:<32} {:<24} {:<8} LAST LOGIN",
                "LOGIN", "EMAIL", "GROUPS", "ACTIVE"
            );
            for u in users {
                let _ = writeln!(
                    out,
                    "{:<32} {:<32} {:<24} {:<8} {}",
                    u.login,
                    u.email.as_deref().unwrap_or("-"),
                    if u.groups.is_empty() {
                        "-".into()
                    } else {
                        u.groups.join(",")
                    },
                    if u.active { "yes" } else { "no" },
                    u.last_login_at
                        .map(format_time)
                        .unwrap_or_else(|| "never".into())
                );
            }
        }
        UserCommand::Show { login } => {
            let u = app.user_by_login(&login).await?;
            let lock = app.user_lock(&u).await?;
            print_user(&u, lock);
            let status = app.two_factor_status(&u).await?;
            print_two_factor(&u, &status);
        }
        UserCommand::Disable { login } => {
            let u = app.set_user_active(&login, false, actor, &client).await?;
            say!("disabled {} and ended their sessions", u.login);
        }
        UserCommand::Enable { login } => {
            let u = app.set_user_active(&login, true, actor, &client).await?;
            say!("enabled {}", u.login);
        }
        UserCommand::Delete { login, yes } => {
            if !yes {
                return Err(CliError::Message(format!(
                    "deleting `{login}` cannot be undone: add --yes to confirm"
                )));
            }
            app.delete_user(&login, actor, &client).await?;
            say!("deleted {login}");
        }
        UserCommand::SetPassword {
            login,
            must_change,
            source,
        } => {
            let user = app.user_by_login(&login).await?;
            let password = read_password(source.password_stdin, true)?;
            app.admin_set_password(
                &user.login,
                password.expose().to_string(),
                must_change,
                actor,
                &client,
            )
            .await?;
            say!("password of {} set; their sessions were ended", user.login);
        }
        UserCommand::ForcePasswordChange { login } => {
            app.force_password_change(&login, true, actor, &client)
                .await?;
            say!("{login} must choose a new password at next login");
        }
        UserCommand::Invite { login } => {
            let until = app.invite_user(&login, actor, &client).await?;
            say!(
                "invitation mailed; the link works until {}",
                format_time(until)
            );
        }
        UserCommand::Unlock { login } => {
            app.unlock_user(&login, actor, &client).await?;
            say!("unlocked {login}");
        }
        UserCommand::Reset2fa { login } => {
            app.admin_reset_two_factor(&login, actor, &client).await?;
            say!("two-factor authentication of {login} was reset; they were mailed and logged out everywhere");
        }
        UserCommand::Device { login, networks } => {
            let u = app
                .set_device_account(&login, &networks, actor, &client)
                .await?;
            if u.device_account {
                say!(
                    "{} is a device account; it may log in only from {}",
                    u.login,
                    u.allowed_networks.join(", ")
                );
            } else {
                say!("{} is a normal account", u.login);
            }
        }
        UserCommand::Groups {
            login,
            add,
            remove,
            set,
        } => {
            let user = if add.is_empty() && remove.is_empty() && set.is_none() {
                app.user_by_login(&login).await?
            } else {
                app.update_user_groups(&login, &add, &remove, set.as_deref(), actor, &client)
                    .await?
            };
            say!(
                "{}: {}",
                user.login,
                if user.groups.is_empty() {
                    "-".into()
                } else {
                    user.groups.join(",")
                }
            );
        }
    }
    Ok(())
}

/// The SQLite file behind `database.url`, or why there is none.
fn sqlite_file(config: &Config) -> Result<std::path::PathBuf, CliError> {
    config
        .database
        .url
        .strip_prefix("sqlite://")
        .filter(|p| !p.starts_with(':') && !p.is_empty())
        .map(|p| std::path::PathBuf::from(p.split('?').next().unwrap_or(p)))
        .ok_or_else(|| {
            CliError::Message(
                "backups here are for the embedded SQLite database; back up PostgreSQL with pg_dump (see docs/operations.md)".into(),
            )
        })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

async fn backup_command(config: &Config, cmd: BackupCommand) -> Result<ExitCode, CliError> {
    use crate::backup;
    let default_dir = config.data_dir.join("backups");
    match cmd {
        BackupCommand::Run { to } => {
            let file = sqlite_file(config)?;
            let dir = to.unwrap_or(default_dir);
            let store = open_store(config).await?;
            drop(store);
            let store =
                SqliteStore::connect(&config.database.url, config.database.max_connections).await?;
            let started = std::time::Instant::now();
            let outcome = backup::run(&store, &file, &dir, SystemClock.now(), |done, total| {
                eprintln!("  … {} of about {} written", mib(done), mib(total));
            })
            .await
            .map_err(|e| CliError::Message(e.to_string()))?;
            say!(
                "backup {} ({}, schema version {}) taken and checked in {:.1} s",
                outcome.file.path.display(),
                mib(outcome.file.bytes),
                outcome.schema_version,
                started.elapsed().as_secs_f64()
            );
            for p in &outcome.pruned {
                say!("pruned {}", p.display());
            }
            eprintln!(
                "note: keep a copy of the key file ({}) apart from the backups: without it, no TOTP login works after a restore",
                config.secret_key_file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::List { dir } => {
            let dir = dir.unwrap_or(default_dir);
            let files = backup::list(&dir).map_err(|e| CliError::Message(e.to_string()))?;
            if files.is_empty() {
                say!("no backups in {}", dir.display());
            }
            for f in files.iter().rev() {
                say!(
                    "{}  {:>10}  {}",
                    crate::clock::format_time(f.taken_at),
                    mib(f.bytes),
                    f.path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Check { file } => {
            let version = SqliteStore::check_file(&file).await?;
            say!("{} is intact (schema version {version})", file.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn restore_command(config: &Config, file: &std::path::Path) -> Result<ExitCode, CliError> {
    let db = sqlite_file(config)?;
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let probe = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    if matches!(probe, Ok(Ok(_))) {
        return Err(CliError::Message(format!(
            "something answers on {addr}, probably Bulwark itself: stop it before restoring"
        )));
    }
    let now = SystemClock.now();
    let version = crate::backup::restore(file, &db, now)
        .await
        .map_err(|e| CliError::Message(e.to_string()))?;
    say!(
        "restored {} as {} (schema version {version}); the database it replaced is kept beside it as {}.before-restore-{}",
        file.display(),
        db.display(),
        db.file_name().and_then(|n| n.to_str()).unwrap_or("bulwark.db"),
        crate::backup::backup_name(now)
    );
    say!("start the server: it brings the schema up to date if the backup is older");
    Ok(ExitCode::SUCCESS)
}

async fn compliance_report(app: &App, format: &str, stale_days: u32) -> Result<(), CliError> {
    use crate::services::compliance::{report_json, ComplianceOptions, CsvWriter};
    let options = ComplianceOptions { stale_days };
    let mut out = std::io::stdout().lock();
    let written = if format == "csv" {
        let mut scan = app.compliance_csv_scan(options).await?;
        let mut result = out.write_all(CsvWriter::HEADER.as_bytes());
        while let Some(text) = scan.next_csv().await? {
            if result.is_err() {
                break;
            }
            result = out.write_all(text.as_bytes());
        }
        result
    } else {
        let report = app.compliance_report(options, None).await?;
        let mut buffered = std::io::BufWriter::with_capacity(1 << 16, &mut out);
        serde_json::to_writer_pretty(&mut buffered, &report_json(&report))
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(buffered))
            .and_then(|()| buffered.flush())
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Message(format!(
            "cannot write to standard output: {e}"
        ))),
        _ => Ok(()),
    }
}

async fn policy_command(app: &App, cmd: PolicyCommand) -> Result<ExitCode, CliError> {
    use crate::config::policy::{parse_value, value_text};
    let changes: Vec<(String, Option<serde_json::Value>)> = match cmd {
        PolicyCommand::Show { json } => {
            if let Err(e) = app.load_policy().await {
                say!("{e}");
                return Ok(ExitCode::FAILURE);
            }
            let settings = app.policy().settings();
            if json {
                let doc = serde_json::json!({ "settings": settings });
                say!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                for s in settings {
                    let from = if s.set { "" } else { "    # from the preset" };
                    say!("{} = {}{from}", s.name, value_text(&s.value));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        PolicyCommand::Set { settings } => settings
            .iter()
            .map(|pair| {
                let (name, text) = pair
                    .split_once('=')
                    .ok_or_else(|| CliError::Message(format!("`{pair}`: expected NAME=VALUE")))?;
                let name = name.trim();
                let value =
                    parse_value(name, text).map_err(|e| CliError::Message(e.setting_message()))?;
                Ok((name.to_string(), Some(value)))
            })
            .collect::<Result<_, CliError>>()?,
        PolicyCommand::Unset { names } => names.into_iter().map(|n| (n, None)).collect(),
    };
    let diffs = app
        .change_policy("cli", &ClientInfo::cli(), &changes)
        .await?;
    if diffs.is_empty() {
        say!("nothing changed: every setting already has that value");
    }
    for d in diffs {
        say!("{}", d.describe(value_text));
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit_command(app: &App, cmd: AuditCommand) -> Result<ExitCode, CliError> {
    use crate::services::audit::{event_json, ChainStart};
    match cmd {
        AuditCommand::Verify => {
            let report = app.verify_audit().await?;
            let start = match report.start {
                ChainStart::Genesis => "from the first event".to_string(),
                ChainStart::Checkpoint { last_id, at } => format!(
                    "from the checkpoint after event {last_id} (pruned {})",
                    crate::clock::format_time(at)
                ),
            };
            if let Some(problem) = &report.problem {
                say!("audit log BROKEN: {problem}");
                say!(
                    "{} events {start} are intact up to there; {} checkpoint signatures checked",
                    report.checked,
                    report.checkpoints
                );
                return Ok(ExitCode::FAILURE);
            }
            say!(
                "audit log intact: {} events checked {start}; {} checkpoint signatures checked",
                report.checked,
                report.checkpoints
            );
            if let Some((id, hash)) = &report.head {
                say!("head: event {id}, hash {hash}");
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { filter } => {
            let mut out = std::io::stdout().lock();
            let mut failure = None;
            app.export_audit(&filter.filter(0), |r| {
                match writeln!(out, "{}", event_json(r)) {
                    Ok(()) => true,
                    Err(e) => {
                        if e.kind() != std::io::ErrorKind::BrokenPipe {
                            failure = Some(e);
                        }
                        false
                    }
                }
            })
            .await?;
            match failure {
                Some(e) => Err(CliError::Message(format!(
                    "cannot write to standard output: {e}"
                ))),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        AuditCommand::List { filter, limit } => {
            for r in app.search_audit(&filter.filter(limit)).await? {
                say!(
                    "{:>8}  {}  {:<22} {:<8} subject={} actor={} ip={}{}",
                    r.id,
                    crate::clock::format_time(r.at),
                    r.event,
                    r.outcome,
                    r.subject.as_deref().unwrap_or("-"),
                    r.actor.as_deref().unwrap_or("-"),
                    r.ip.as_deref().unwrap_or("-"),
                    r.detail.map(|d| format!("  ({d})")).unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Prune { older_than_days } => {
            let Some(keep) = older_than_days
                .map(|d| i64::from(d) * 86_400)
                .or(app.config.audit.retention_secs())
            else {
                return Err(CliError::Message(
                    "audit.retention_days is 0 (keep forever): set it, or give --older-than-days"
                        .into(),
                ));
            };
            match app.prune_audit(keep).await? {
                Some(c) => say!(
                    "pruned {} events up to event {}, behind a checkpoint signed by key {}",
                    c.pruned,
                    c.last_id,
                    c.key_id
                ),
                None => say!("nothing to prune"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn api_key_command(app: &App, cmd: ApiKeyCommand) -> Result<(), CliError> {
    use crate::services::api_keys::{ExpiryChoice, KeyActor, KeyRef, NewApiKeyInput};
    let client = ClientInfo::cli();
    let no_such = |e: ServiceError, what: &str| match e {
        ServiceError::NotFound => CliError::Message(what.to_string()),
        other => other.into(),
    };
    match cmd {
        ApiKeyCommand::Create {
            login,
            name,
            scopes,
            days,
            no_expiry,
        } => {
            let expiry = match (days, no_expiry) {
                (_, true) => ExpiryChoice::Never,
                (Some(d), false) => ExpiryChoice::Days(d),
                (None, false) => ExpiryChoice::Default,
            };
            let created = app
                .create_api_key(
                    KeyActor::Cli,
                    &login,
                    NewApiKeyInput {
                        name,
                        scopes,
                        expiry,
                        password: None,
                    },
                    &client,
                )
                .await
                .map_err(|e| no_such(e, "no such user"))?;
            // The key alone on standard output, so `KEY=$(bulwark apikey create …)` works.
            say!("{}", created.key.expose());
            eprintln!(
                "created API key {} \"{}\" for {} (scopes {}, expires {}); it is shown only once",
                created.record.id,
                created.record.name,
                created.owner,
                created.record.scopes.to_stored(),
                created
                    .record
                    .expires_at
                    .map(format_time)
                    .unwrap_or_else(|| "never".into())
            );
        }
        ApiKeyCommand::List { login } => {
            let keys = app
                .list_api_keys(KeyActor::Cli, login.as_deref())
                .await
                .map_err(|e| no_such(e, "no such user"))?;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{:<6} {:<24} {:<24} {:<14} {:<26} {:<21} {:<21} {:<21} STATUS",
                "ID", "LOGIN", "NAME", "KEY", "SCOPES", "CREATED", "EXPIRES", "LAST USED"
            );
            for k in keys {
                let time =
                    |t: Option<i64>, none: &str| t.map(format_time).unwrap_or_else(|| none.into());
                let _ = writeln!(
                    out,
                    "{:<6} {:<24} {:<24} {:<14} {:<26} {:<21} {:<21} {:<21} {}",
                    k.record.id,
                    k.owner,
                    k.record.name,
                    format!("{}…", k.record.display_prefix),
                    k.record.scopes.to_stored(),
                    format_time(k.record.created_at),
                    time(k.record.expires_at, "never"),
                    time(k.last_used_at, "never"),
                    k.status.as_str()
                );
            }
        }
        ApiKeyCommand::Revoke { login, key } => {
            app.user_by_login(&login)
                .await
                .map_err(|e| no_such(e, "no such user"))?;
            let revoked = app
                .revoke_api_key(KeyActor::Cli, &login, &KeyRef::NameOrId(key.clone()), &client)
                .await
                .map_err(|e| {
                    no_such(
                        e,
                        &format!("{login} has no API key named or numbered `{key}` that is not already revoked"),
                    )
                })?;
            say!(
                "revoked API key {} \"{}\" of {login}",
                revoked.id,
                revoked.name
            );
        }
    }
    Ok(())
}

/// Refuses to serve when stored TOTP secrets were sealed with keys the ring does not hold
/// (a key file lost and created anew, or restored from another backup): every enrolled user
/// would otherwise fail the second step. Other commands still run, so an admin can reset the
/// affected users.
async fn check_keys_open_secrets(app: &App) -> Result<(), CliError> {
    let have = app.key_ring().ids();
    let missing: Vec<String> = app
        .store
        .totp_key_ids()
        .await?
        .into_iter()
        .filter(|id| !have.contains(id))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let file = match &app.config.secret_key {
        Some(_) => "BULWARK_SECRET_KEY".to_string(),
        None => app.config.secret_key_file.display().to_string(),
    };
    Err(CliError::Message(format!(
        "invalid configuration: `secret_key_file`: the database holds TOTP secrets sealed with \
         key {} that {file} does not have (a lost key file is created anew, empty of old keys). \
         Restore the key file that belongs to this database. If it is lost for good, reset the \
         two-factor setup of the affected users with `bulwark user reset-2fa LOGIN`.",
        missing.join(", ")
    )))
}

/// How long a stopping server waits for the actions of clients that went away.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn serve(config: Config) -> Result<ExitCode, CliError> {
    let listen = config.server.listen;
    let app = build_app(config).await?;
    check_keys_open_secrets(&app).await?;
    if app.config.insecure_cookies() {
        tracing::warn!("cookies are sent without the Secure flag: fine for local use on {}, never in production (set server.public_url to an https:// URL)", app.config.server.public_url);
    }
    let transport = Transport::from_config(&app.config.mail)?;
    app.mailer.spawn_worker(transport, app.clock.clone());
    spawn_maintenance(app.clone());
    crate::services::policy::spawn_policy_refresh(app.clone());
    crate::services::api_keys::spawn_usage_flusher(app.clone());
    crate::services::check_cache::spawn_cache_sync(app.clone()).await?;
    let flush_at_exit = app.clone();

    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        CliError::Message(format!("cannot listen on {listen} (`server.listen`): {e}"))
    })?;
    let url = &app.config.server.public_url;
    say!("Bulwark is running: open {url}");
    match app.setup_link_if_needed().await? {
        Some(link) => {
            say!();
            say!("No administrator exists yet. Create the first one with this one-time link");
            say!(
                "(valid {} minutes; restart Bulwark for a new one):",
                app.config.links.setup_minutes
            );
            say!();
            say!("    {link}");
            say!();
            say!("Or from a shell: bulwark user add LOGIN --email you@example.com --group admins --group internal");
        }
        None => say!("Log in at {url}/login"),
    }
    let _ = std::io::stdout().flush();
    let router = crate::web::router(app);
    let unfinished = router.unfinished();
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .map_err(|e| CliError::Message(format!("server error: {e}")))?;
    // Actions whose clients went away are not answered, but finish before the exit.
    if !unfinished.wait(EXIT_WAIT).await {
        tracing::warn!(
            "stopping with requests still running after {} s",
            EXIT_WAIT.as_secs()
        );
    }
    if let Err(e) = flush_at_exit.flush_api_key_usage().await {
        tracing::warn!(error = %e, "cannot write API key last-use times at exit");
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn spawn_maintenance(app: App) {
    tokio::spawn(async move {
        let mut last_reminders: Option<std::time::Instant> = None;
        loop {
            // Reminders walk every user: once an hour is plenty (each is sent once a day).
            if last_reminders.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(3600)) {
                last_reminders = Some(std::time::Instant::now());
                match app.send_reminders().await {
                    Ok(sent) if sent.two_factor + sent.password > 0 => tracing::info!(
                        two_factor = sent.two_factor,
                        password = sent.password,
                        "sent reminders"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot send reminders"),
                }
            }
            let now = app.now();
            let policy = app.policy().sessions.policy();
            match app
                .store
                .delete_expired_sessions(now - policy.idle_secs, now - policy.absolute_secs)
                .await
            {
                Ok(n) if n > 0 => tracing::info!(sessions = n, "pruned expired sessions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot prune expired sessions"),
            }
            if let Some(keep) = app.config.audit.retention_secs() {
                match app.prune_audit(keep).await {
                    Ok(Some(c)) => tracing::info!(
                        events = c.pruned,
                        up_to = c.last_id,
                        "pruned the audit log behind a signed checkpoint"
                    ),
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "cannot prune the audit log"),
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn healthcheck(config: &Config) -> Result<ExitCode, CliError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await {
        Ok(Ok(r)) if r.starts_with("HTTP/1.1 200") => {
            say!("healthy: {addr}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(r)) => {
            say!("unhealthy: {}", r.lines().next().unwrap_or("no response"));
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(e)) => {
            say!("unhealthy: cannot reach {addr}: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            say!("unhealthy: {addr} did not answer within 5 seconds");
            Ok(ExitCode::FAILURE)
        }
    }
}
