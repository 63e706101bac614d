//! Benchmark: forward-auth checks per second, against a bare axum hello-world, directly and
//! behind nginx `auth_request`, on the same machine in the same run.
//!
//! ```text
//! cargo run --release -p bulwark-server --example bench_gateway -- [--seconds N]
//!     [--connections C] [--warmup S] [--rounds R]
//! ```
//!
//! Four targets, loaded the same way (C keep-alive HTTP/1.1 connections, each sending the
//! next request when the last one is answered):
//!
//! - (a) `hello`: a bare axum handler answering 200 "hello", on its own multi-threaded runtime;
//! - (b) `bulwark`: `GET /api/authz/auth-request` on Bulwark, with the headers nginx sends and
//!   the cookie of a valid session, through the full router with every middleware (the rules
//!   ask for one factor, so every request reads the session and the user from SQLite);
//! - (c) `nginx → bulwark`: nginx with `auth_request` to Bulwark, then `proxy_pass` to hello;
//! - (d) `nginx → hello`: the same nginx server block, with the auth subrequest sent to hello
//!   (through its own upstream pool, as (c)'s goes to Bulwark's).
//!
//! Ratios: (b)/(a) (target ≥ 0.8) and (c)/(d) (target ≥ 0.9). nginx is Debian's, started by
//! the benchmark on a free loopback port with a config in a temporary directory; without it
//! (c) and (d) are skipped and said so. Phases run a, b, c, d in turn, `--rounds` times; the
//! summary gives the median of each. Latency p50/p99 are over all requests of a target.
//!
//! Speed is never a timed test: this is a separate command; see docs/benchmarks.md.

use bulwark_server::app::App;
use bulwark_server::clock::SystemClock;
use bulwark_server::config::{CliOverrides, Config};
use bulwark_server::services::users::NewUserInput;
use bulwark_server::services::ClientInfo;
use clap::Parser;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/http.rs"]
mod http;
use http::{percentile_ms, Conn};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const HOST: &str = "app.example.test";
const PASSWORD: &str = "Benchmark-Gateway-Password-2026";

/// Forward-auth checks/s against hello-world, direct and behind nginx.
#[derive(Debug, Parser)]
#[command(name = "bench_gateway")]
struct Args {
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Unmeasured seconds before each phase.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Times each target is measured.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The store: sqlite (a temporary file) or postgres (a fresh database on the server named
    /// by TEST_POSTGRES_URL, e.g. under scripts/with-postgres).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    store: String,
    /// Seconds a checked session stays cached (gateway.cache_seconds); 0 reads the store on
    /// every check, which is what compares the stores.
    #[arg(long, default_value_t = 5)]
    cache_seconds: u64,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Stats {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<Duration>,
    seconds: f64,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    request: String,
}

fn run(args: Args) -> Res<()> {
    let tmp = tempfile::tempdir()?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let hello = server_rt.block_on(start_hello())?;
    let (bulwark, cookie) = server_rt.block_on(start_bulwark(
        tmp.path(),
        args.store == "postgres",
        args.cache_seconds,
    ))?;
    let nginx = match Nginx::start(tmp.path(), bulwark, hello) {
        Ok(n) => Some(n),
        Err(e) => {
            println!("nginx not started ({e}): targets (c) and (d) are skipped");
            None
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("Bulwark gateway benchmark");
    println!("  machine:  {cores} cores");
    println!(
        "  store:    {} (gateway.cache_seconds = {})",
        if args.store == "postgres" {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        args.cache_seconds
    );
    println!(
        "  load:     {} keep-alive connections; {} round(s) of {} s warm-up + {} s measured per target",
        args.connections, args.rounds, args.warmup, args.seconds
    );
    println!();

    let auth_headers = format!(
        "X-Original-URL: https://{HOST}/web\r\nX-Original-Method: GET\r\nX-Forwarded-For: 203.0.113.7\r\nCookie: {cookie}\r\n"
    );
    let mut targets = vec![
        Target {
            name: "(a) hello",
            addr: hello,
            request: format!("GET / HTTP/1.1\r\nHost: {hello}\r\n\r\n"),
        },
        Target {
            name: "(b) bulwark",
            addr: bulwark,
            request: format!(
                "GET /api/authz/auth-request HTTP/1.1\r\nHost: {bulwark}\r\n{auth_headers}\r\n"
            ),
        },
    ];
    if let Some(n) = &nginx {
        targets.push(Target {
            name: "(c) nginx → bulwark",
            addr: n.protected,
            request: format!("GET /web HTTP/1.1\r\nHost: {HOST}\r\nCookie: {cookie}\r\n\r\n"),
        });
        targets.push(Target {
            name: "(d) nginx → hello",
            addr: n.baseline,
            request: format!("GET /web HTTP/1.1\r\nHost: {HOST}\r\nCookie: {cookie}\r\n\r\n"),
        });
    }

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut results: Vec<Vec<Stats>> = vec![Vec::new(); targets.len()];
    for round in 1..=args.rounds {
        for (i, t) in targets.iter().enumerate() {
            let s = client_rt.block_on(load(t, &args))?;
            println!(
                "  round {round} {:<22} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms{}",
                t.name,
                s.rate(),
                percentile_ms(&s.latencies, 50),
                percentile_ms(&s.latencies, 99),
                match &s.first_error {
                    Some(e) => format!("  ({} errors, first: {e})", s.errors),
                    None => String::new(),
                }
            );
            if s.errors > 0 {
                return Err(
                    format!("{} answered errors: the run has no valid figures", t.name).into(),
                );
            }
            results[i].push(s);
        }
    }
    let median = |v: &[Stats]| {
        let mut rates: Vec<f64> = v.iter().map(Stats::rate).collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let all = |v: &[Stats]| {
        v.iter()
            .flat_map(|s| s.latencies.clone())
            .collect::<Vec<_>>()
    };
    println!();
    println!("Result (median of {} rounds)", args.rounds);
    let mut rows = Vec::new();
    for (t, r) in targets.iter().zip(&results) {
        let lat = all(r);
        println!(
            "  {:<22} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms",
            t.name,
            median(r),
            percentile_ms(&lat, 50),
            percentile_ms(&lat, 99)
        );
        rows.push((median(r), percentile_ms(&lat, 99)));
    }
    let ratio_b = rows[1].0 / rows[0].0;
    println!(
        "  ratio (b)/(a):          {ratio_b:.2} (target >= 0.80: {})",
        met(ratio_b, 0.8)
    );
    let ratio_c = (rows.len() == 4).then(|| rows[2].0 / rows[3].0);
    match ratio_c {
        Some(r) => println!(
            "  ratio (c)/(d):          {r:.2} (target >= 0.90: {})",
            met(r, 0.9)
        ),
        None => println!("  ratio (c)/(d):          not measured (no nginx)"),
    }
    println!();
    println!("Markdown row (docs/benchmarks.md):");
    let fmt = |i: usize| {
        rows.get(i)
            .map(|(rate, p99)| format!("{rate:.0} / {p99:.2}"))
            .unwrap_or_else(|| "–".into())
    };
    println!(
        "| {} | {cores} | {} | {} | {} | {} | {} | **{ratio_b:.2}** | **{}** |",
        today(),
        args.connections,
        fmt(0),
        fmt(1),
        fmt(2),
        fmt(3),
        ratio_c.map_or("–".into(), |r| format!("{r:.2}"))
    );
    println!("(columns: date, cores, connections, then req/s / p99 ms of (a) hello, (b) bulwark, (c) nginx → bulwark, (d) nginx → hello, then (b)/(a), (c)/(d))");
    drop(nginx);
    Ok(())
}

fn met(ratio: f64, target: f64) -> &'static str {
    if ratio >= target {
        "met"
    } else {
        "NOT met"
    }
}

fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Loads one target with `connections` keep-alive connections for warm-up + measured time.
async fn load(t: &Target, args: &Args) -> Res<Stats> {
    let start = Instant::now() + Duration::from_secs(args.warmup);
    let end = start + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| {
            let addr = t.addr;
            let request = t.request.clone();
            tokio::spawn(async move {
                let mut s = Stats::default();
                let mut conn = Conn::open(addr).await?;
                while Instant::now() < end {
                    let sent = Instant::now();
                    let outcome = conn.exchange(request.as_bytes()).await;
                    let done = Instant::now();
                    let error = match outcome {
                        Ok(res) if res.status == 200 => None,
                        Ok(res) => Some(format!("HTTP {}", res.status)),
                        Err(e) => {
                            conn = Conn::open(addr).await?;
                            Some(e.to_string())
                        }
                    };
                    if done >= start && done <= end {
                        match error {
                            None => {
                                s.ok += 1;
                                s.latencies.push(done - sent);
                            }
                            Some(e) => {
                                s.errors += 1;
                                s.first_error.get_or_insert(e);
                            }
                        }
                    }
                }
                Ok::<Stats, BoxError>(s)
            })
        })
        .collect();
    let mut total = Stats {
        seconds: args.seconds as f64,
        ..Default::default()
    };
    for task in tasks {
        let s = task.await??;
        total.ok += s.ok;
        total.errors += s.errors;
        if total.first_error.is_none() {
            total.first_error = s.first_error;
        }
        total.latencies.extend(s.latencies);
    }
    Ok(total)
}

async fn start_hello() -> Res<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // The auth answer is an empty 200, like Bulwark's: nginx keeps an auth upstream
    // connection alive only when the answer has no body to discard.
    let router = axum::Router::new()
        .route(
            "/api/authz/auth-request",
            axum::routing::get(|| async { axum::http::StatusCode::OK }),
        )
        .fallback(|| async { "hello" });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("hello server error: {e}");
        }
    });
    Ok(addr)
}

/// Bulwark as `serve` assembles it, with one user and one session; returns its address and
/// the session cookie (`name=value`).
async fn start_bulwark(
    dir: &Path,
    postgres: bool,
    cache_seconds: u64,
) -> Res<(SocketAddr, String)> {
    let file = dir.join("bulwark.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[two_factor]\nenforcement = \"admins\"\n\n\
             [gateway]\nprotected = [\"https://{HOST}\"]\ncache_seconds = {cache_seconds}\n\n[[gateway.rules]]\nhosts = [\"{HOST}\"]\npolicy = \"one_factor\"\n"
        ),
    )?;
    let overrides = CliOverrides {
        data_dir: Some(dir.join("data")),
        listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let mut config = Config::load(Some(&file), &[], &overrides)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let keys = bulwark_server::keys::load_or_create(&config.secret_key_file)?;
    if postgres {
        config.database.url = bulwark_store_postgres::testing::fresh_database_url().await;
    }
    let store = bulwark_server::cli::connect_store(&config).await?;
    store.migrate().await?;
    let app = App::new(config, store, Arc::new(SystemClock), keys)?;
    app.add_user(
        NewUserInput {
            login: "bench".into(),
            email: Some("bench@example.com".into()),
            display_name: "Benchmark".into(),
            groups: vec!["internal".into()],
            password: Some(PASSWORD.into()),
            must_change_password: false,
        },
        "bench",
        &ClientInfo::cli(),
    )
    .await?;
    let login = app
        .login("bench", PASSWORD.into(), &ClientInfo::cli(), None)
        .await?;
    let cookie = format!("bulwark_session={}", login.token.expose());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = bulwark_server::web::router(app);
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            eprintln!("server error: {e}");
        }
    });
    Ok((addr, cookie))
}

/// Debian's nginx with two server blocks sharing one configuration, differing only in where
/// the auth subrequest goes.
struct Nginx {
    child: Child,
    bin: PathBuf,
    prefix: PathBuf,
    conf: PathBuf,
    protected: SocketAddr,
    baseline: SocketAddr,
}

impl Nginx {
    fn start(dir: &Path, bulwark: SocketAddr, hello: SocketAddr) -> Res<Self> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or("nginx is not installed (Debian package `nginx`)")?;
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs"))?;
        let protected = free_port()?;
        let baseline = free_port()?;
        let server = |port: SocketAddr, auth: &str| {
            format!(
                "server {{\n  listen {port};\n  server_name {HOST};\n\
                 location = /internal/auth {{\n    internal;\n    proxy_pass {auth};\n\
                 proxy_pass_request_body off;\n    proxy_set_header Content-Length \"\";\n\
                 proxy_set_header X-Original-URL $scheme://$http_host$request_uri;\n\
                 proxy_set_header X-Original-Method $request_method;\n\
                 proxy_set_header X-Forwarded-For $remote_addr;\n    proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n  }}\n\
                 location / {{\n    auth_request /internal/auth;\n\
                 auth_request_set $user $upstream_http_remote_user;\n\
                 proxy_set_header Remote-User $user;\n    proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n    proxy_pass http://hello;\n  }}\n}}\n"
            )
        };
        let conf = format!(
            "worker_processes auto;\nerror_log {log} warn;\npid {pid};\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 10000000;\n  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n\
             fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n\
             upstream hello {{ server {hello}; keepalive 64; }}\n\
             upstream bulwark {{ server {bulwark}; keepalive 64; }}\n\
             upstream hello_auth {{ server {hello}; keepalive 64; }}\n\
             {a}{b}}}\n",
            log = prefix.join("logs/error.log").display(),
            pid = prefix.join("nginx.pid").display(),
            tmp = prefix.display(),
            a = server(protected, "http://bulwark/api/authz/auth-request"),
            b = server(baseline, "http://hello_auth/api/authz/auth-request"),
        );
        let file = prefix.join("nginx.conf");
        std::fs::write(&file, conf)?;
        let child = Command::new(&bin)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&file)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut nginx = Self {
            child,
            bin,
            prefix: prefix.clone(),
            conf: file,
            protected,
            baseline,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(nginx.baseline).is_err()
            || std::net::TcpStream::connect(nginx.protected).is_err()
        {
            if let Some(status) = nginx.child.try_wait()? {
                let log =
                    std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
                return Err(format!("nginx exited ({status}): {log}").into());
            }
            if started.elapsed() > Duration::from_secs(10) {
                nginx.stop();
                return Err("nginx did not start listening within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    /// Stops master and workers (`nginx -s stop`); a SIGKILL would orphan the workers.
    fn stop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(&self.conf)
            .args(["-s", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Res<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}
