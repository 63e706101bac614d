//! The `bulwark` command line: `serve`, `migrate`, `config check`, `user …`, `apikey …`,
//! `password hash`, `healthcheck`. Every admin action works here without the web console.

use crate::app::{App, StartError};
use crate::clock::{format_time, SystemClock};
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
enum CliError {
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

fn create_private_dir(path: &std::path::Path) -> Result<(), CliError> {
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
    Ok(App::new(config, store, Arc::new(SystemClock), key)?)
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

async fn serve(config: Config) -> Result<ExitCode, CliError> {
    let listen = config.server.listen;
    let app = build_app(config).await?;
    check_keys_open_secrets(&app).await?;
    if app.config.insecure_cookies() {
        tracing::warn!("cookies are sent without the Secure flag: fine for local use on {}, never in production (set server.public_url to an https:// URL)", app.config.server.public_url);
    }
    let transport = Transport::from_config(&app.config.mail)?;
    app.mailer.spawn_worker(transport, app.clock.clone());
    spawn_session_pruner(app.clone());
    crate::services::api_keys::spawn_usage_flusher(app.clone());
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
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .map_err(|e| CliError::Message(format!("server error: {e}")))?;
    if let Err(e) = flush_at_exit.flush_api_key_usage().await {
        tracing::warn!(error = %e, "cannot write API key last-use times at exit");
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn spawn_session_pruner(app: App) {
    tokio::spawn(async move {
        let policy = app.config.sessions.policy();
        loop {
            let now = app.now();
            match app
                .store
                .delete_expired_sessions(now - policy.idle_secs, now - policy.absolute_secs)
                .await
            {
                Ok(n) if n > 0 => tracing::info!(sessions = n, "pruned expired sessions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot prune expired sessions"),
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
