//! Benchmark: Bulwark with a million users against the same Bulwark with a thousand, in one
//! run.
//!
//! ```text
//! cargo run --release -p bulwark-server --example bench_scale -- [--users 1000000]
//!     [--baseline 1000] [--store sqlite|postgres] [--seconds 5] [--connections 32]
//! ```
//!
//! For each population (the baseline, then the large one) the program migrates a fresh
//! database, fills it with generated rows in a few set-based SQL statements (see
//! `scale/fill.rs`: users in four groups, half of them with a confirmed authenticator and ten
//! recovery codes, 1% disabled, last logins spread over 200 days, a session for one user in
//! ten and an audit event for one user in ten) and lets the store seal the audit events into
//! its chain. One Argon2id hash (the default parameters) serves as every user's password:
//! hashing a million passwords would take hours and measures nothing about scale.
//!
//! Both populations are filled first and stay served; their gateway and login loads then
//! take turns for three rounds (medians reported), so that the VM's drift over the minutes
//! of the large fill does not fall on one side of the ratios. Through HTTP on loopback, the
//! full router as `serve` assembles it:
//!
//! - **gateway**: `GET /api/authz/auth-request` with a valid session, loaded for `--seconds`
//!   by `--connections` keep-alive connections, with the session cache off
//!   (`gateway.cache_seconds = 0`: every check reads the session and its user from the
//!   database, where the size shows) and on (the default 5 s);
//! - **login latency**: 40 password logins of different users in turn, p50 and p99;
//! - **compliance export**: `GET /api/v1/reports/compliance?format=csv` as an admin, the time
//!   until the last byte (one line per active user), median of 3;
//! - **admin list**: the console's first page of `/admin/users`, everyone and "two-factor
//!   off", median of 10;
//! - **memory**: this process's resident set (server, store and load generator together:
//!   compare the two populations, not the absolute figure): the baseline's after a first
//!   round of its loads, before the large fill; the large one's at the end.
//!
//! Targets (issue 8): gateway checks/s and login latency at the large size within 10% of the
//! baseline's; the export in at most 2 s; the first page in at most 50 ms; memory flat.
//! Speed is never a timed test: this is a separate command; see docs/benchmarks.md.

use bulwark_core::account::Login;
use bulwark_core::password::Password;
use bulwark_server::app::App;
use bulwark_server::clock::SystemClock;
use bulwark_store::{NewSession, SessionStage, Store};
use clap::Parser;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "scale/fill.rs"]
mod fill;
#[path = "common/http.rs"]
mod http;
#[path = "common/setup.rs"]
mod setup;
use fill::login_of;
use http::{percentile_ms, Conn};
use setup::HOST;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const PASSWORD: &str = "Scale-Benchmark-Password-2026";

#[derive(Debug, Parser)]
#[command(name = "bench_scale")]
struct Args {
    /// The large population.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// The population it is compared with.
    #[arg(long, default_value_t = 1_000)]
    baseline: u64,
    /// `sqlite` (a file in a temporary directory) or `postgres` (a fresh database on the
    /// server in TEST_POSTGRES_URL).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    store: String,
    /// Measured seconds per gateway load.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Keep-alive connections of the gateway load.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Keep the large population's data directory here (SQLite), for looking into it.
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
}

/// Figures of one population.
#[derive(Debug, Default)]
struct Figures {
    users: u64,
    fill_secs: f64,
    gateway_uncached: f64,
    gateway_cached: f64,
    gateway_p99_ms: f64,
    login_p50_ms: f64,
    login_p99_ms: f64,
    export_secs: f64,
    export_lines: usize,
    list_all_ms: f64,
    list_off_ms: f64,
    rss_mib: f64,
}

/// The loads of one population in one round.
#[derive(Debug, Clone, Copy)]
struct Round {
    gateway_uncached: f64,
    gateway_cached: f64,
    gateway_p99_ms: f64,
    login_p50_ms: f64,
    login_p99_ms: f64,
}

/// Rounds of the gateway and login loads, each population once a round, in turns.
const ROUNDS: usize = 3;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_scale: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Res<()> {
    // Both populations are filled first and kept serving; then their loads take turns, so
    // that the VM's drift over the minutes of the large fill does not land on one of them.
    let small_dir = tempfile::tempdir()?;
    let small = Population::prepare(small_dir.path(), args.baseline, &args).await?;
    // The baseline's memory once it has served checks and logins (each hashing thread keeps
    // its Argon2 memory), before the large population exists.
    small.round(&args).await?;
    let small_rss = rss_mib();
    let large_dir = tempfile::tempdir()?;
    let large = Population::prepare(large_dir.path(), args.users, &args).await?;
    let mut rounds: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let p = [&small, &large][i];
            let r = p.round(&args).await?;
            println!(
                "  round {} {:>9} users: gateway {:.0}/s uncached, {:.0}/s cached (p99 {:.2} ms); \
                 login p50 {:.1} ms p99 {:.1} ms",
                round + 1,
                p.users,
                r.gateway_uncached,
                r.gateway_cached,
                r.gateway_p99_ms,
                r.login_p50_ms,
                r.login_p99_ms
            );
            rounds[i].push(r);
        }
    }
    let mut all = Vec::new();
    for (i, p) in [&small, &large].into_iter().enumerate() {
        let f = p.figures(&rounds[i]).await?;
        all.push(Figures {
            rss_mib: if i == 0 { small_rss } else { rss_mib() },
            ..f
        });
    }
    if let Some(keep) = args.keep.as_ref() {
        std::fs::rename(large_dir.keep(), keep)?;
    }
    for f in &all {
        println!(
            "{:>9} users: filled in {:.0} s; gateway {:.0}/s uncached, {:.0}/s cached (p99 {:.2} ms); \
             login p50 {:.1} ms p99 {:.1} ms; export {:.2} s ({} lines); first page {:.1} ms, \
             2FA-off {:.1} ms; RSS {:.0} MiB",
            f.users,
            f.fill_secs,
            f.gateway_uncached,
            f.gateway_cached,
            f.gateway_p99_ms,
            f.login_p50_ms,
            f.login_p99_ms,
            f.export_secs,
            f.export_lines,
            f.list_all_ms,
            f.list_off_ms,
            f.rss_mib
        );
    }
    let (small, large) = (&all[0], &all[1]);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let gw = large.gateway_uncached / small.gateway_uncached;
    let gw_cached = large.gateway_cached / small.gateway_cached;
    let login = large.login_p50_ms / small.login_p50_ms;
    println!();
    println!(
        "| measure | {} users | {} users | ratio | target |",
        small.users, large.users
    );
    println!("|---|---|---|---|---|");
    println!(
        "| gateway checks/s, cache off | {:.0} | {:.0} | {gw:.2} | ≥ 0.90: {} |",
        small.gateway_uncached,
        large.gateway_uncached,
        met(gw >= 0.9)
    );
    println!(
        "| gateway checks/s, cache on | {:.0} | {:.0} | {gw_cached:.2} | ≥ 0.90: {} |",
        small.gateway_cached,
        large.gateway_cached,
        met(gw_cached >= 0.9)
    );
    println!(
        "| login latency p50 / p99 ms | {:.1} / {:.1} | {:.1} / {:.1} | {login:.2} | ≤ 1.10: {} |",
        small.login_p50_ms,
        small.login_p99_ms,
        large.login_p50_ms,
        large.login_p99_ms,
        met(login <= 1.1)
    );
    println!(
        "| compliance CSV export s | {:.3} | {:.3} | | ≤ 2 s: {} |",
        small.export_secs,
        large.export_secs,
        met(large.export_secs <= 2.0)
    );
    println!(
        "| admin list first page ms (all / 2FA off) | {:.1} / {:.1} | {:.1} / {:.1} | | ≤ 50 ms: {} |",
        small.list_all_ms,
        small.list_off_ms,
        large.list_all_ms,
        large.list_off_ms,
        met(large.list_all_ms <= 50.0 && large.list_off_ms <= 50.0)
    );
    println!(
        "| resident memory MiB | {:.0} | {:.0} | {:.2} | flat |",
        small.rss_mib,
        large.rss_mib,
        large.rss_mib / small.rss_mib
    );
    Ok(())
}

/// One population, filled and served: by an app with the session cache off and one with
/// it on, over the same store.
struct Population {
    users: u64,
    fill_secs: f64,
    uncached: SocketAddr,
    cached: SocketAddr,
    admin_cookie: String,
    user_cookie: String,
}

impl Population {
    async fn prepare(dir: &Path, users: u64, args: &Args) -> Res<Self> {
        let file = setup::write_config(dir, 0)?;
        let clock = Arc::new(SystemClock);
        let uncached =
            setup::build_app(dir, &file, args.store == "postgres", clock.clone()).await?;
        let store = uncached.store.clone();
        let started = Instant::now();
        fill(&uncached, users).await?;
        let fill_secs = started.elapsed().as_secs_f64();
        println!("{users:>9} users: filled in {fill_secs:.0} s");
        // The same store behind a second app with the session cache on.
        let mut cached_config = (*uncached.config).clone();
        cached_config.gateway.cache_seconds = 5;
        let cached = App::new(cached_config, store.clone(), clock, uncached.key_ring())?;
        Ok(Self {
            users,
            fill_secs,
            admin_cookie: session_cookie(&store, 1, true).await?,
            // A user in the middle of the population, without a second factor (odd numbers).
            user_cookie: session_cookie(&store, (users / 2) | 1, false).await?,
            uncached: setup::serve(uncached).await?,
            cached: setup::serve(cached).await?,
        })
    }

    fn check(&self, addr: SocketAddr) -> String {
        format!(
            "GET /api/authz/auth-request HTTP/1.1\r\nHost: {addr}\r\nX-Original-URL: https://{HOST}/web\r\n\
             X-Original-Method: GET\r\nX-Forwarded-For: 203.0.113.9\r\nCookie: {}\r\n\r\n",
            self.user_cookie
        )
    }

    /// The gateway loads (cache off, then on) and the logins.
    async fn round(&self, args: &Args) -> Res<Round> {
        let (gateway_uncached, _) = load(self.uncached, &self.check(self.uncached), args).await?;
        let (gateway_cached, gateway_p99_ms) =
            load(self.cached, &self.check(self.cached), args).await?;
        let (login_p50_ms, login_p99_ms) = logins(self.uncached, self.users).await?;
        Ok(Round {
            gateway_uncached,
            gateway_cached,
            gateway_p99_ms,
            login_p50_ms,
            login_p99_ms,
        })
    }

    /// The medians of `rounds`, and the export and console page timed now.
    async fn figures(&self, rounds: &[Round]) -> Res<Figures> {
        let pick = |f: fn(&Round) -> f64| setup::median(&rounds.iter().map(f).collect::<Vec<_>>());
        // The median of three: one export is a second or two, and one measurement of that
        // moves by a sixth between runs on a shared VM.
        let mut exports = Vec::new();
        let mut export_lines = 0;
        for _ in 0..EXPORTS {
            let (secs, lines) = export(self.uncached, &self.admin_cookie).await?;
            exports.push(secs);
            export_lines = lines;
        }
        Ok(Figures {
            users: self.users,
            fill_secs: self.fill_secs,
            gateway_uncached: pick(|r| r.gateway_uncached),
            gateway_cached: pick(|r| r.gateway_cached),
            gateway_p99_ms: pick(|r| r.gateway_p99_ms),
            login_p50_ms: pick(|r| r.login_p50_ms),
            login_p99_ms: pick(|r| r.login_p99_ms),
            export_secs: setup::median(&exports),
            export_lines,
            list_all_ms: page_ms(self.uncached, "/admin/users", &self.admin_cookie).await?,
            list_off_ms: page_ms(
                self.uncached,
                "/admin/users?status=2fa-off",
                &self.admin_cookie,
            )
            .await?,
            rss_mib: 0.0,
        })
    }
}

/// Fills the store with `users` generated users (see `scale/fill.rs`), then lets the store
/// seal the generated audit events into its chain.
async fn fill(app: &App, users: u64) -> Res<()> {
    let hash = app.hashes.hash(Password::parse(PASSWORD.into())?).await?;
    let ring = app.key_ring();
    let url = &app.config.database.url;
    fill::fill(url, users, hash.as_str(), ring.current_id(), app.now()).await?;
    app.store.migrate().await?;
    Ok(())
}

/// A full session for user number `i` (two factors if `two_factor`); the cookie pair.
async fn session_cookie(store: &Arc<dyn Store>, i: u64, two_factor: bool) -> Res<String> {
    let user = store
        .find_user_by_login(&Login::parse(&login_of(i))?)
        .await?
        .ok_or("a generated user is missing")?;
    let (token, token_hash) = bulwark_core::token::generate();
    store
        .insert_session(&NewSession {
            token_hash,
            user: user.id,
            stage: SessionStage::Full,
            two_factor,
            created_at: bulwark_server::clock::Clock::now(&SystemClock),
            ip: None,
            user_agent: None,
        })
        .await?;
    Ok(format!("bulwark_session={}", token.expose()))
}

/// Checks per second and p99 (ms) of `request` on `connections` keep-alive connections.
async fn load(addr: SocketAddr, request: &str, args: &Args) -> Res<(f64, f64)> {
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| {
            let request = request.to_string();
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await?;
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let sent = Instant::now();
                    let res = conn.exchange(request.as_bytes()).await?;
                    if res.status != 200 {
                        return Err::<Vec<Duration>, BoxError>(
                            format!("gateway answered {}", res.status).into(),
                        );
                    }
                    let done = Instant::now();
                    if done >= start && done <= end {
                        latencies.push(done - sent);
                    }
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((
        all.len() as f64 / args.seconds as f64,
        percentile_ms(&all, 99),
    ))
}

/// p50 and p99 (ms) of 40 password logins of different users without a second factor.
async fn logins(addr: SocketAddr, users: u64) -> Res<(f64, f64)> {
    let mut conn = Conn::open(addr).await?;
    let form = conn
        .exchange(format!("GET /login HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let cookie = form
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next())
        .find(|pair| pair.contains("bulwark_csrf"))
        .ok_or("no CSRF cookie")?
        .to_string();
    let html = String::from_utf8_lossy(&form.body);
    let token = html
        .split_once("name=\"csrf_token\" value=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(t, _)| t.to_string())
        .ok_or("no csrf_token in the login form")?;
    let mut latencies = Vec::new();
    for n in 0..40u64 {
        // Odd numbers have no second factor; spread over the whole population.
        let i = (((n * 7919 * users / 40) % users.max(4)) | 1).max(3);
        let body = format!(
            "csrf_token={token}&login={}&password={PASSWORD}",
            login_of(i)
        );
        let post = format!(
            "POST /login HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nX-Forwarded-For: 198.51.100.{}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            n % 200,
            body.len()
        );
        let sent = Instant::now();
        let res = conn.exchange(post.as_bytes()).await?;
        latencies.push(sent.elapsed());
        if res.status != 303 || res.header("location") == Some("/login/2fa") {
            return Err(format!("login of {} answered {}", login_of(i), res.status).into());
        }
    }
    Ok((percentile_ms(&latencies, 50), percentile_ms(&latencies, 99)))
}

/// How many times the export is timed (the median is reported).
const EXPORTS: usize = 3;

/// Seconds until the last byte of the CSV export, and its lines.
async fn export(addr: SocketAddr, cookie: &str) -> Res<(f64, usize)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let started = Instant::now();
    stream
        .write_all(
            format!(
                "GET /api/v1/reports/compliance?format=csv HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0usize;
    let mut first = Vec::new();
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if first.len() < 64 {
            first.extend_from_slice(&buf[..n.min(64)]);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    let secs = started.elapsed().as_secs_f64();
    if !first.starts_with(b"HTTP/1.1 200") {
        return Err(format!("export answered {}", String::from_utf8_lossy(&first)).into());
    }
    Ok((secs, lines))
}

/// Median of 10 loads of a console page, in milliseconds.
async fn page_ms(addr: SocketAddr, path: &str, cookie: &str) -> Res<f64> {
    let mut conn = Conn::open(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n");
    let mut times = Vec::new();
    for _ in 0..10 {
        let sent = Instant::now();
        let res = conn.exchange(request.as_bytes()).await?;
        times.push(sent.elapsed());
        if res.status != 200 {
            return Err(format!("{path} answered {}", res.status).into());
        }
    }
    Ok(percentile_ms(&times, 50))
}

/// This process's resident set, in MiB (Linux; 0 elsewhere).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
