//! Benchmark: resident memory of a real `bulwark serve` process, idle and with many active
//! sessions.
//!
//! ```text
//! cargo build --release -p bulwark-server --bin bulwark --example bench_memory
//! target/release/examples/bench_memory -- [--sessions N] [--first M] [--users U]
//!     [--rounds R] [--bulwark PATH] [--summary FILE]
//! ```
//!
//! The benchmark writes a configuration (the gateway's, with `gateway.cache_seconds = 60` so
//! every session touched stays cached while it measures), creates U users and N full sessions
//! straight in the SQLite store (the sessions' tokens are random, stored hashed as the
//! service stores them), then for each round starts `bulwark serve` on that data directory as
//! a child process and reads its `VmRSS` from `/proc/PID/status`:
//!
//! 0. idle on an empty database (another data directory): 2 s after `/healthz` first
//!    answers;
//! 1. idle on the populated database, the same way;
//! 2. after M sessions (default 10,000) passed a gateway check each, so they sit in the
//!    session cache;
//! 3. after all N (default 100,000) did;
//! 4. after 3 s of logins (a password hash on each hashing thread at least), for reference:
//!    the hashing threads keep their Argon2 memory.
//!
//! Bytes per active session are (3 − 1) / N and, without the start-up effects, (3 − 2) /
//! (N − M). The figures are medians over R rounds (a fresh process each).
//!
//! Speed is never a timed test: this is a separate command; see docs/benchmarks.md.

use bulwark_core::account::{DisplayName, GroupName, Login};
use bulwark_core::password::Password;
use bulwark_core::token;
use bulwark_server::clock::{Clock, SystemClock};
use bulwark_store::{NewSession, NewUser, SessionStage};
use clap::Parser;
use setup::{median, Summary, HOST};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/http.rs"]
mod http;
#[path = "common/login.rs"]
mod login;
#[path = "common/setup.rs"]
mod setup;
use http::Conn;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const PASSWORD: &str = "Benchmark-Memory-Password-2026";
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

/// Resident memory of `bulwark serve`: idle, and with N active sessions.
#[derive(Debug, Parser)]
#[command(name = "bench_memory")]
struct Args {
    /// Active sessions at the end.
    #[arg(long, default_value_t = 100_000)]
    sessions: usize,
    /// Active sessions at the intermediate reading.
    #[arg(long, default_value_t = 10_000)]
    first: usize,
    /// Users the sessions belong to (round robin).
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Rounds (a fresh `bulwark serve` each).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections touching the sessions.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// The `bulwark` binary (default: the one built next to this example).
    #[arg(long)]
    bulwark: Option<PathBuf>,
    /// Append `key=value` results to this file (read by scripts/bench).
    #[arg(long)]
    summary: Option<PathBuf>,
}

fn main() -> ExitCode {
    setup::exit_code(run(Args::parse()))
}

/// The readings of one round, in bytes.
#[derive(Debug, Clone, Copy)]
struct Readings {
    /// Idle on a database with no users and no sessions.
    idle_empty: f64,
    idle: f64,
    first: f64,
    all: f64,
    after_logins: f64,
}

fn run(args: Args) -> Res<()> {
    if args.first == 0 || args.first >= args.sessions || args.users == 0 || args.rounds == 0 {
        return Err("need 0 < --first < --sessions, --users >= 1 and --rounds >= 1".into());
    }
    let bulwark = match &args.bulwark {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("bulwark"))
            .ok_or("cannot tell where the bulwark binary is: give --bulwark")?,
    };
    if !bulwark.is_file() {
        return Err(format!(
            "{} not found: build it first (cargo build --release -p bulwark-server --bin bulwark)",
            bulwark.display()
        )
        .into());
    }
    let tmp = tempfile::tempdir()?;
    let file = setup::write_config(tmp.path(), 60)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("Bulwark memory benchmark");
    println!(
        "  {} sessions of {} users; readings at idle, {} and {} active sessions; {} round(s)",
        args.sessions, args.users, args.first, args.sessions, args.rounds
    );
    print!("  creating users and sessions ... ");
    let started = Instant::now();
    let cookies = rt.block_on(populate(tmp.path(), &file, &args))?;
    println!("{:.1} s", started.elapsed().as_secs_f64());

    let empty = tempfile::tempdir()?;
    let empty_file = setup::write_config(empty.path(), 60)?;
    rt.block_on(setup::build_app(
        empty.path(),
        &empty_file,
        false,
        Arc::new(SystemClock),
    ))?;
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let idle_empty = {
            let (serve, _) = rt.block_on(start_serve(&bulwark, empty.path(), &empty_file))?;
            serve.rss()?
        };
        let r = rt.block_on(measure(&bulwark, tmp.path(), &file, &cookies, &args))?;
        let r = Readings { idle_empty, ..r };
        println!(
            "  round {round}: idle {:.1} MiB (empty database {:.1} MiB), {} sessions {:.1} MiB, {} sessions {:.1} MiB, after logins {:.1} MiB",
            mib(r.idle),
            mib(r.idle_empty),
            args.first,
            mib(r.first),
            args.sessions,
            mib(r.all),
            mib(r.after_logins)
        );
        rounds.push(r);
    }
    let pick = |f: fn(&Readings) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let idle_empty = pick(|r| r.idle_empty);
    let idle = pick(|r| r.idle);
    let first = pick(|r| r.first);
    let all = pick(|r| r.all);
    let after_logins = pick(|r| r.after_logins);
    let per_session = (all - idle) / args.sessions as f64;
    let marginal = (all - first) / (args.sessions - args.first) as f64;
    println!("Result (median of {} rounds)", args.rounds);
    println!(
        "  idle RSS:             {:.1} MiB on an empty database (target <= 30 MB: {}), {:.1} MiB on the populated one",
        mib(idle_empty),
        if idle_empty <= 30e6 { "met" } else { "NOT met" },
        mib(idle)
    );
    println!("  {:>7} sessions:     {:.1} MiB", args.first, mib(first));
    println!("  {:>7} sessions:     {:.1} MiB", args.sessions, mib(all));
    println!(
        "  per active session:   {per_session:.0} bytes from idle, {marginal:.0} bytes from {} to {} (target <= 1024: {})",
        args.first,
        args.sessions,
        if per_session <= 1024.0 { "met" } else { "NOT met" }
    );
    println!("  after logins:         {:.1} MiB", mib(after_logins));
    let mut summary = Summary::open(args.summary.as_deref())?;
    summary.put("memory.idle_empty_mib", format!("{:.1}", mib(idle_empty)))?;
    summary.put("memory.idle_mib", format!("{:.1}", mib(idle)))?;
    summary.put("memory.first", args.first)?;
    summary.put("memory.first_mib", format!("{:.1}", mib(first)))?;
    summary.put("memory.sessions", args.sessions)?;
    summary.put("memory.all_mib", format!("{:.1}", mib(all)))?;
    summary.put(
        "memory.after_logins_mib",
        format!("{:.1}", mib(after_logins)),
    )?;
    summary.put("memory.per_session_bytes", format!("{per_session:.0}"))?;
    summary.put("memory.marginal_bytes", format!("{marginal:.0}"))?;
    summary.put("memory.users", args.users)?;
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// Users and full sessions written straight to the store; returns the session cookies.
async fn populate(dir: &Path, file: &Path, args: &Args) -> Res<Vec<String>> {
    let app = setup::build_app(dir, file, false, Arc::new(SystemClock)).await?;
    let password = Password::parse(PASSWORD.to_string()).map_err(|e| e.to_string())?;
    let hash = app.hashes.hash(password).await?;
    let now = SystemClock.now();
    let internal = GroupName::parse("internal").map_err(|e| e.to_string())?;
    let mut users = Vec::with_capacity(args.users);
    for i in 0..args.users {
        let login = format!("user{i}");
        let user = app
            .store
            .insert_user(&NewUser {
                login: Login::parse(&login).map_err(|e| e.to_string())?,
                email: None,
                display_name: DisplayName::parse(&format!("User {i}"))
                    .map_err(|e| e.to_string())?,
                groups: vec![internal.clone()],
                password_hash: Some(hash.clone()),
                must_change_password: false,
                created_at: now,
            })
            .await?;
        users.push(user.id);
    }
    let mut cookies = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let (cookie, token_hash) = token::generate();
        app.store
            .insert_session(&NewSession {
                token_hash,
                user: users[i % users.len()],
                stage: SessionStage::Full,
                two_factor: false,
                created_at: now,
                ip: Some("203.0.113.7".into()),
                user_agent: Some(USER_AGENT.into()),
            })
            .await?;
        cookies.push(cookie.expose().to_string());
    }
    Ok(cookies)
}

/// A `bulwark serve` child, stopped when dropped.
struct Serve(Child);

impl Serve {
    fn rss(&self) -> Res<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .ok_or("no VmRSS in /proc/PID/status")?;
        Ok(kb * 1024.0)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SIGTERM first: serve shuts down gracefully on it.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bulwark serve` on `dir`'s data, 2 s after it first answers `/healthz`.
async fn start_serve(bulwark: &Path, dir: &Path, file: &Path) -> Res<(Serve, SocketAddr)> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut serve = Serve(
        Command::new(bulwark)
            .arg("--config")
            .arg(file)
            .arg("--data-dir")
            .arg(setup::data_dir(dir))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("serve")
            .env("BULWARK_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let started = Instant::now();
    loop {
        if let Some(status) = serve.0.try_wait()? {
            return Err(format!("bulwark serve exited ({status})").into());
        }
        if let Ok(mut c) = Conn::open(addr).await {
            let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            if c.exchange(req.as_bytes())
                .await
                .is_ok_and(|r| r.status == 200)
            {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("bulwark serve did not answer /healthz within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((serve, addr))
}

async fn measure(
    bulwark: &Path,
    dir: &Path,
    file: &Path,
    cookies: &[String],
    args: &Args,
) -> Res<Readings> {
    let (serve, addr) = start_serve(bulwark, dir, file).await?;
    let idle = serve.rss()?;
    touch(addr, &cookies[..args.first], args.connections).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = serve.rss()?;
    touch(addr, &cookies[args.first..], args.connections).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = serve.rss()?;
    let window = login::Window::after_warmup(Duration::ZERO, Duration::from_secs(3));
    let logins = login::http_phase(addr, "user0".into(), PASSWORD.into(), 4, window).await?;
    if logins.ok == 0 || !logins.errors.is_empty() {
        return Err(format!("logins failed: {:?}", logins.errors).into());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_logins = serve.rss()?;
    drop(serve);
    Ok(Readings {
        idle_empty: 0.0,
        idle,
        first,
        all,
        after_logins,
    })
}

/// One gateway check per session (each must pass), on `connections` keep-alive connections.
async fn touch(addr: SocketAddr, cookies: &[String], connections: usize) -> Res<()> {
    let chunk = cookies.len().div_ceil(connections.max(1)).max(1);
    let tasks: Vec<_> = cookies
        .chunks(chunk)
        .map(|part| {
            let part = part.to_vec();
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await?;
                for cookie in part {
                    let req = format!(
                        "GET /api/authz/auth-request HTTP/1.1\r\nHost: {addr}\r\n\
                         X-Original-URL: https://{HOST}/web\r\nX-Original-Method: GET\r\n\
                         X-Forwarded-For: 203.0.113.7\r\nCookie: bulwark_session={cookie}\r\n\r\n"
                    );
                    let res = conn.exchange(req.as_bytes()).await?;
                    if res.status != 200 {
                        return Err::<(), BoxError>(
                            format!("a session check answered {}", res.status).into(),
                        );
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}
