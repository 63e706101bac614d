//! Bulwark assembled the way `bulwark serve` assembles it (configuration file, key file,
//! store with migrations, `App`, the full router), in a temporary directory, for the
//! benchmarks; and the `key=value` summary that `scripts/bench` turns into the doc's tables.

#![allow(dead_code, reason = "each benchmark uses only some of these helpers")]

use bulwark_server::app::App;
use bulwark_server::clock::Clock;
use bulwark_server::config::{CliOverrides, Config};
use bulwark_server::services::users::NewUserInput;
use bulwark_server::services::ClientInfo;
use bulwark_store::UserRecord;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// The protected application's host in every gateway benchmark.
pub const HOST: &str = "app.example.test";

/// Writes the benchmarks' configuration file: loopback is a trusted proxy, two-factor is
/// required of admins only (the benchmark users are `internal`), `/xmlrpc/*` of [`HOST`] asks
/// for an API key and the rest of it for one factor.
pub fn write_config(dir: &Path, cache_seconds: u64) -> Res<PathBuf> {
    let file = dir.join("bulwark.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n\
             [two_factor]\nenforcement = \"admins\"\n\n\
             [gateway]\nprotected = [\"https://{HOST}\"]\ncache_seconds = {cache_seconds}\n\n\
             [[gateway.rules]]\nhosts = [\"{HOST}\"]\npaths = [\"/xmlrpc/*\"]\npolicy = \"api_key\"\n\n\
             [[gateway.rules]]\nhosts = [\"{HOST}\"]\npolicy = \"one_factor\"\n"
        ),
    )?;
    Ok(file)
}

/// The data directory of a configuration written in `dir`.
pub fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// Loads `file` (data under `dir`), creates the key file and the store (SQLite in the data
/// directory, or a fresh database on the server of `TEST_POSTGRES_URL`), migrates it and
/// builds the `App` with `clock`.
pub async fn build_app(dir: &Path, file: &Path, postgres: bool, clock: Arc<dyn Clock>) -> Res<App> {
    let overrides = CliOverrides {
        data_dir: Some(data_dir(dir)),
        listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    // Hashing settings may be varied from the environment (BULWARK_PASSWORDS__*).
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("BULWARK_PASSWORDS__"))
        .collect();
    let mut config = Config::load(Some(file), &env, &overrides)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let keys = bulwark_server::keys::load_or_create(&config.secret_key_file)?;
    if postgres {
        config.database.url = bulwark_store_postgres::testing::fresh_database_url().await;
    }
    let store = bulwark_server::cli::connect_store(&config).await?;
    store.migrate().await?;
    Ok(App::new(config, store, clock, keys)?)
}

/// Adds an `internal` user through the users service (the password is hashed once).
pub async fn add_user(app: &App, login: &str, password: &str) -> Res<UserRecord> {
    Ok(app
        .add_user(
            NewUserInput {
                login: login.into(),
                email: Some(format!("{login}@example.com")),
                display_name: format!("Benchmark {login}"),
                groups: vec!["internal".into()],
                password: Some(password.into()),
                must_change_password: false,
            },
            "bench",
            &ClientInfo::cli(),
        )
        .await?)
}

/// Serves the full router on a free loopback port, on the current runtime.
pub async fn serve(app: App) -> Res<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = bulwark_server::web::router(app);
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            eprintln!("server error: {e}");
        }
    });
    Ok(addr)
}

/// `key=value` lines appended to the file of `--summary`, if given: what `scripts/bench`
/// reads back to write docs/benchmarks.md.
pub struct Summary(Option<std::fs::File>);

impl Summary {
    pub fn open(path: Option<&Path>) -> Res<Self> {
        Ok(Self(match path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        }))
    }

    pub fn put(&mut self, key: &str, value: impl std::fmt::Display) -> Res<()> {
        if let Some(f) = &mut self.0 {
            writeln!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// A benchmark's exit status: success, or the error printed and failure.
pub fn exit_code(result: Res<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The machine's CPU time so far, from the first line of `/proc/stat`: the ticks its
/// hypervisor gave to other guests (steal), and all ticks.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some((*ticks.get(7)?, ticks.iter().sum()))
}

/// The share of the machine's time stolen by its hypervisor between two [`machine_ticks`].
pub fn steal_between(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((s0, t0), (s1, t1)) = (before?, after?);
    let total = t1.checked_sub(t0).filter(|t| *t > 0)?;
    Some(s1.saturating_sub(s0) as f64 / total as f64)
}

/// The median of some figures (the upper one of an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
