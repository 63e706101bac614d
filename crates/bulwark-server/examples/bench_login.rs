//! Benchmark: password logins per second through the real HTTP stack, against raw Argon2id
//! verifications per second with the same hasher on the same machine, in the same run.
//!
//! ```text
//! cargo run --release -p bulwark-server --example bench_login -- [--seconds N] [--clients C]
//!     [--warmup S] [--rounds R]
//! ```
//!
//! The server is assembled as `bulwark serve` assembles it (configuration, SQLite store in WAL
//! mode, migrations, server key, mail worker, the full router with every middleware, axum on a
//! multi-threaded tokio runtime) but in a temporary data directory on 127.0.0.1 with a free
//! port. Clients speak raw HTTP/1.1 on keep-alive connections, like a browser: `GET /login`
//! once for the CSRF cookie and form token, then `POST /login` in a loop. A login counts when
//! it is answered `303` with a new session cookie and a redirect into the site (not to another
//! login step); anything else is an error, reported by status and `Location`.
//!
//! Phases: raw verify, HTTP logins, raw verify (repeated `--rounds` times), then raw hash for
//! reference. Raw phases run `passwords.max_concurrent_hashes` OS threads calling
//! `PasswordHasher::verify` (one login = one verify) with the server's own hasher. Each HTTP
//! round is compared with the mean of the raw phases on either side, because a shared machine
//! drifts. Rates count operations completed inside the measured window, after a warm-up.
//! On Linux each phase also reports how the machine's CPU time was split (this process, other
//! processes, idle), CPU time and page faults per operation.
//!
//! Speed is never a timed test: this is a separate command; see docs/benchmarks.md.
//!
//! Only `BULWARK_PASSWORDS__*` and `BULWARK_DATABASE__MAX_CONNECTIONS` are read from the
//! environment, to benchmark other cost settings; everything else is the default.

use bulwark_core::password::hash::{HashMemory, PasswordHash, PasswordHasher, Verification};
use bulwark_core::password::Password;
use bulwark_server::app::App;
use bulwark_server::clock::SystemClock;
use bulwark_server::config::{CliOverrides, Config};
use bulwark_server::mail::Transport;
use bulwark_server::services::users::NewUserInput;
use bulwark_server::services::ClientInfo;
use clap::Parser;
use rand::Rng;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/http.rs"]
mod http;
#[path = "common/login.rs"]
mod login;
#[path = "common/setup.rs"]
mod setup;
use http::percentile_ms;
use login::{http_phase, HttpStats, Window};
use setup::{median, Summary};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const LOGIN: &str = "bench";

/// Password logins/s through HTTP vs raw Argon2id verifications/s.
#[derive(Debug, Parser)]
#[command(name = "bench_login")]
struct Args {
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent HTTP clients (default: 2 × passwords.max_concurrent_hashes).
    #[arg(long)]
    clients: Option<usize>,
    /// Unmeasured warm-up seconds before each phase.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// HTTP phases, each between two raw-verify phases (raw, HTTP, raw, HTTP, …, raw).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The store: sqlite (a temporary file) or postgres (a fresh database on the server named
    /// by TEST_POSTGRES_URL, e.g. under scripts/with-postgres).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    store: String,
    /// Append `key=value` results to this file (read by scripts/bench).
    #[arg(long)]
    summary: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    setup::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Res<()> {
    if args.seconds == 0 || args.rounds == 0 {
        return Err("--seconds and --rounds must be at least 1".into());
    }
    let measured = Duration::from_secs(args.seconds);
    let warmup = Duration::from_secs(args.warmup);

    let tmp = tempfile::tempdir()?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("BULWARK_PASSWORDS__") || k == "BULWARK_DATABASE__MAX_CONNECTIONS"
        })
        .collect();
    let overrides = CliOverrides {
        data_dir: Some(tmp.path().join("data")),
        listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let config = Config::load(None, &env, &overrides)?;
    init_logging();

    let permits = config.passwords.max_concurrent_hashes;
    let clients = args.clients.unwrap_or(2 * permits).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let p = &config.passwords;
    let hashing = format!(
        "{} m={} KiB t={} p={}",
        p.scheme, p.argon2.memory_kib, p.argon2.iterations, p.argon2.parallelism
    );
    println!("Bulwark login benchmark");
    println!("  machine:  {cores} cores ({})", cpu_model());
    println!(
        "  hashing:  {} m={} KiB t={} p={}, max_concurrent_hashes={permits}",
        p.scheme, p.argon2.memory_kib, p.argon2.iterations, p.argon2.parallelism
    );
    println!(
        "  database: {}, max_connections={}",
        if args.store == "postgres" {
            "PostgreSQL (a fresh database on the server of TEST_POSTGRES_URL)"
        } else {
            "SQLite (WAL) in a temporary directory"
        },
        config.database.max_connections
    );
    println!(
        "  load:     {clients} keep-alive HTTP/1.1 clients; {} round(s); {} s warm-up + {} s measured per phase",
        args.rounds, args.warmup, args.seconds
    );
    println!();

    // The server runs on its own multi-threaded runtime, like `bulwark serve`.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let server = server_rt.block_on(start_server(config, args.store == "postgres"))?;

    let hasher = server.app.hashes.hasher().clone();
    let check = hasher.verify(&server.password, &server.stored);
    if check
        != (Verification::Valid {
            needs_rehash: false,
        })
    {
        return Err(format!("the stored hash does not verify as expected: {check:?}").into());
    }
    let raw = |op: Op| -> Res<(f64, Option<CpuUse>)> {
        let window = Window::after_warmup(warmup, measured);
        let meter = CpuUse::measure(window);
        let rate = raw_rate(
            &hasher,
            &server.password,
            &server.stored,
            permits,
            window,
            op,
        )?;
        Ok((rate, meter.join().ok().flatten()))
    };

    // raw, HTTP, raw, HTTP, …, raw: each HTTP round is compared with the raw phases on
    // either side of it, so a machine that speeds up or slows down affects both sides alike.
    let mut raws: Vec<f64> = Vec::with_capacity(args.rounds + 1);
    let mut rounds: Vec<(f64, f64)> = Vec::with_capacity(args.rounds);
    let mut http = HttpStats::default();
    let mut cpu_raw: Vec<(f64, CpuUse)> = Vec::new();
    let mut cpu_http: Vec<(f64, CpuUse)> = Vec::new();
    print!("  raw verify   #1 ... ");
    flush();
    let (first, cpu) = raw(Op::Verify)?;
    println!("{first:.1} verifies/s{}", CpuUse::describe(cpu, first));
    cpu_raw.extend(cpu.map(|c| (first, c)));
    raws.push(first);
    for round in 1..=args.rounds {
        print!("  HTTP logins  #{round} ... ");
        flush();
        let client_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let window = Window::after_warmup(warmup, measured);
        let meter = CpuUse::measure(window);
        let stats = client_rt.block_on(http_phase(
            server.addr,
            LOGIN.into(),
            server.password.expose().to_string(),
            clients,
            window,
        ))?;
        let cpu = meter.join().ok().flatten();
        let logins = stats.ok as f64 / stats.window_secs;
        println!(
            "{logins:.1} logins/s ({} ok, {} errors){}",
            stats.ok,
            stats.errors.values().sum::<u64>(),
            CpuUse::describe(cpu, logins)
        );
        cpu_http.extend(cpu.map(|c| (logins, c)));
        http.merge(stats);

        print!("  raw verify   #{} ... ", round + 1);
        flush();
        let (after, cpu) = raw(Op::Verify)?;
        println!("{after:.1} verifies/s{}", CpuUse::describe(cpu, after));
        cpu_raw.extend(cpu.map(|c| (after, c)));
        let before = raws[round - 1];
        raws.push(after);
        rounds.push((logins, (before + after) / 2.0));
    }
    print!("  raw hash (reference) ... ");
    flush();
    let (hashes, cpu) = raw(Op::Hash)?;
    println!("{hashes:.1} hashes/s{}", CpuUse::describe(cpu, hashes));

    let logins = http.ok as f64 / http.window_secs;
    let raw_mean = rounds.iter().map(|r| r.1).sum::<f64>() / rounds.len() as f64;
    let ratio = if raw_mean > 0.0 {
        logins / raw_mean
    } else {
        0.0
    };
    let (lo, hi) = raws
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let spread = if raw_mean > 0.0 {
        (hi - lo) / raw_mean * 100.0
    } else {
        0.0
    };
    let p50 = percentile_ms(&http.latencies, 50);
    let p99 = percentile_ms(&http.latencies, 99);
    println!();
    println!("Result");
    println!("  logins/s (HTTP):      {logins:.1}");
    println!(
        "  raw verifies/s:       {raw_mean:.1} (each HTTP round against the mean of the raw phases around it; raw phases ranged {lo:.1}..{hi:.1}, {spread:.0}% of the mean)"
    );
    println!("  raw hashes/s:         {hashes:.1} (reference)");
    println!(
        "  ratio logins/raw:     {ratio:.3} (target >= 0.90: {})",
        if ratio >= 0.9 { "met" } else { "NOT met" }
    );
    if rounds.len() > 1 {
        let per_round: Vec<String> = rounds
            .iter()
            .map(|(l, r)| format!("{:.3}", if *r > 0.0 { l / r } else { 0.0 }))
            .collect();
        println!("  ratio per round:      {}", per_round.join(", "));
    }
    println!("  login latency:        p50 {p50:.1} ms, p99 {p99:.1} ms");
    let landings: Vec<String> = http
        .landings
        .iter()
        .map(|(to, n)| format!("{to} ({n})"))
        .collect();
    println!("  logins landed on:     {}", landings.join(", "));
    let busiest = cpu_raw
        .iter()
        .chain(&cpu_http)
        .map(|(_, c)| c.others + c.steal)
        .fold(0.0, f64::max);
    let mut cpu_ratio = None;
    if let (Some(r), Some(h)) = (CpuUse::mean(&cpu_raw), CpuUse::mean(&cpu_http)) {
        if h.ms_per_op > 0.0 {
            cpu_ratio = Some(r.ms_per_op / h.ms_per_op);
            println!(
                "  CPU-normalised ratio: {:.3} (CPU per raw verify / CPU per login; unaffected by the CPU share other processes take)",
                r.ms_per_op / h.ms_per_op
            );
        }
        println!(
            "  CPU per operation:    {:.2} ms per login vs {:.2} ms per raw verify ({:+.2} ms, {:+.1}%)",
            h.ms_per_op,
            r.ms_per_op,
            h.ms_per_op - r.ms_per_op,
            (h.ms_per_op / r.ms_per_op - 1.0) * 100.0
        );
        println!(
            "  context switches:     {:.0} per login vs {:.1} per raw verify",
            h.switches_per_op, r.switches_per_op
        );
        println!(
            "  machine during HTTP:  bench {:.0}%, other processes {:.0}%, idle {:.0}% (raw phases: bench {:.0}%, others {:.0}%, idle {:.0}%)",
            h.bench * 100.0,
            h.others * 100.0,
            h.idle * 100.0,
            r.bench * 100.0,
            r.others * 100.0,
            r.idle * 100.0
        );
        if busiest > 0.10 {
            println!(
                "  WARNING:              other processes took up to {:.0}% of the machine during a phase: the rates and their ratio are unreliable (the HTTP phase runs more threads, so it wins a larger share of a contended machine). Rerun on an idle machine, or read the CPU-normalised ratio instead.",
                busiest * 100.0
            );
        }
    }
    println!("  cores:                {cores}");
    if !http.errors.is_empty() {
        println!("  errors:");
        for (what, n) in &http.errors {
            println!("    {n:>6} × {what}");
        }
    }
    println!();
    println!("Markdown row (docs/benchmarks.md):");
    println!(
        "| {} | {cores} | {permits} | {clients} | {} × {} s | {logins:.1} | {raw_mean:.1} | **{ratio:.2}** | {} | {p50:.0} / {p99:.0} | {:.0}% |",
        time::OffsetDateTime::now_utc().date(),
        args.rounds,
        args.seconds,
        cpu_ratio.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}")),
        busiest * 100.0,
    );
    println!("(columns: date, cores, hash permits, clients, rounds × seconds, logins/s, raw verifies/s, ratio, CPU-normalised ratio, p50 / p99 ms, most CPU taken by other processes in a phase)");

    let per_round: Vec<f64> = rounds
        .iter()
        .map(|(l, r)| if *r > 0.0 { l / r } else { 0.0 })
        .collect();
    let mut summary = Summary::open(args.summary.as_deref())?;
    summary.put("login.rate", format!("{logins:.1}"))?;
    summary.put("login.raw_verify_rate", format!("{raw_mean:.1}"))?;
    summary.put("login.raw_hash_rate", format!("{hashes:.1}"))?;
    summary.put("login.ratio", format!("{ratio:.3}"))?;
    summary.put(
        "login.ratio_median_round",
        format!("{:.3}", median(&per_round)),
    )?;
    summary.put(
        "login.cpu_ratio",
        cpu_ratio.map_or_else(|| "n/a".to_string(), |r| format!("{r:.3}")),
    )?;
    summary.put("login.p99_ms", format!("{p99:.0}"))?;
    summary.put("login.clients", clients)?;
    summary.put("login.permits", permits)?;
    summary.put("login.rounds", args.rounds)?;
    summary.put("login.seconds", args.seconds)?;
    summary.put("login.others_max", format!("{:.0}%", busiest * 100.0))?;
    summary.put("login.hashing", &hashing)?;

    server_rt.shutdown_timeout(Duration::from_secs(5));
    drop(tmp);
    if http.errors.is_empty() {
        Ok(())
    } else {
        Err("some logins failed: the figures above are not trustworthy".into())
    }
}

fn init_logging() {
    // Same filter as `bulwark serve`, so the per-request log line is formatted as in
    // production; it is written nowhere, to keep the output readable.
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULWARK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::sink)
        .with_target(false)
        .try_init();
}

fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

// ---------------------------------------------------------------------------------------
// CPU accounting (Linux /proc; silently absent elsewhere)

/// How the machine's CPU time was spent during a window, as fractions of all cores.
#[derive(Clone, Copy, Debug, Default)]
struct CpuUse {
    /// This process (server, clients and hashing threads).
    bench: f64,
    /// Every other process.
    others: f64,
    /// Idle (including I/O wait).
    idle: f64,
    /// Time the hypervisor gave to other guests.
    steal: f64,
    /// Share of this process's CPU time spent in the kernel.
    kernel: f64,
    /// Page faults of this process per second (fresh memory being mapped in).
    faults_per_sec: f64,
    /// Cores of the machine.
    cores: f64,
    /// CPU milliseconds this process spent per operation, set by `per_op`.
    ms_per_op: f64,
    /// Page faults per operation, set by `per_op`.
    faults_per_op: f64,
    /// Context switches of this process's threads per second.
    switches_per_sec: f64,
    /// Context switches per operation, set by `per_op`: each hand-off between threads (to
    /// a database worker, a hashing thread, an idle runtime worker) costs one or two.
    switches_per_op: f64,
}

#[derive(Clone, Copy, Debug)]
struct CpuTicks {
    total: u64,
    idle: u64,
    steal: u64,
    process: u64,
    process_sys: u64,
    minor_faults: u64,
    /// Voluntary and involuntary context switches of the threads alive now.
    switches: u64,
}

impl CpuTicks {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_name = own.rsplit_once(')')?.1;
        let f: Vec<&str> = after_name.split_whitespace().collect();
        // Fields 14 and 15 of proc(5), counted from the state (field 3).
        let user = f.get(11)?.parse::<u64>().ok()?;
        let process_sys = f.get(12)?.parse::<u64>().ok()?;
        let minor_faults = f.get(7)?.parse::<u64>().ok()?;
        Some(Self {
            switches: context_switches(),
            total: fields.iter().sum(),
            idle: fields.get(3)? + fields.get(4)?,
            steal: *fields.get(7)?,
            process: user + process_sys,
            process_sys,
            minor_faults,
        })
    }
}

/// The context switches of this process's threads (exited threads are not counted).
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

impl CpuUse {
    /// Samples at the start and end of `window` on a thread of its own.
    fn measure(window: Window) -> std::thread::JoinHandle<Option<CpuUse>> {
        std::thread::spawn(move || {
            std::thread::sleep(window.start.saturating_duration_since(Instant::now()));
            let a = CpuTicks::read()?;
            std::thread::sleep(window.end.saturating_duration_since(Instant::now()));
            let b = CpuTicks::read()?;
            let total = b.total.checked_sub(a.total).filter(|t| *t > 0)? as f64;
            let idle = b.idle.saturating_sub(a.idle) as f64 / total;
            let steal = b.steal.saturating_sub(a.steal) as f64 / total;
            let own = b.process.saturating_sub(a.process) as f64;
            let bench = (own / total).min(1.0);
            let kernel = if own > 0.0 {
                b.process_sys.saturating_sub(a.process_sys) as f64 / own
            } else {
                0.0
            };
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            Some(CpuUse {
                bench,
                others: (1.0 - idle - steal - bench).max(0.0),
                idle,
                steal,
                kernel,
                faults_per_sec: b.minor_faults.saturating_sub(a.minor_faults) as f64
                    / window.seconds(),
                switches_per_sec: b.switches.saturating_sub(a.switches) as f64 / window.seconds(),
                cores,
                ms_per_op: 0.0,
                faults_per_op: 0.0,
                switches_per_op: 0.0,
            })
        })
    }

    /// Fills in the CPU time per operation at `rate` operations per second.
    fn per_op(mut self, rate: f64) -> Self {
        self.ms_per_op = if rate > 0.0 {
            self.bench * self.cores * 1000.0 / rate
        } else {
            0.0
        };
        self.faults_per_op = if rate > 0.0 {
            self.faults_per_sec / rate
        } else {
            0.0
        };
        self.switches_per_op = if rate > 0.0 {
            self.switches_per_sec / rate
        } else {
            0.0
        };
        self
    }

    /// A suffix for a phase line.
    fn describe(cpu: Option<CpuUse>, rate: f64) -> String {
        match cpu {
            Some(c) => {
                let c = c.per_op(rate);
                format!(
                    "  [bench {:.0}% (kernel {:.0}% of it) / others {:.0}% / idle {:.0}%{} of the machine; {:.1} ms CPU, {:.0} page faults and {:.0} context switches per op]",
                    c.bench * 100.0,
                    c.kernel * 100.0,
                    c.others * 100.0,
                    c.idle * 100.0,
                    if c.steal > 0.005 {
                        format!(" / steal {:.0}%", c.steal * 100.0)
                    } else {
                        String::new()
                    },
                    c.ms_per_op,
                    c.faults_per_op,
                    c.switches_per_op
                )
            }
            None => String::new(),
        }
    }

    /// The average over phases, weighting each equally.
    fn mean(phases: &[(f64, CpuUse)]) -> Option<CpuUse> {
        if phases.is_empty() {
            return None;
        }
        let n = phases.len() as f64;
        let mut m = CpuUse::default();
        for (rate, c) in phases {
            let c = c.per_op(*rate);
            m.bench += c.bench / n;
            m.others += c.others / n;
            m.idle += c.idle / n;
            m.steal += c.steal / n;
            m.kernel += c.kernel / n;
            m.faults_per_op += c.faults_per_op / n;
            m.ms_per_op += c.ms_per_op / n;
            m.switches_per_op += c.switches_per_op / n;
        }
        Some(m)
    }
}

// ---------------------------------------------------------------------------------------
// Server

struct Server {
    app: App,
    addr: SocketAddr,
    password: Password,
    stored: PasswordHash,
}

async fn start_server(mut config: Config, postgres: bool) -> Res<Server> {
    std::fs::create_dir_all(&config.data_dir)?;
    let keys = bulwark_server::keys::load_or_create(&config.secret_key_file)?;
    if postgres {
        config.database.url = bulwark_store_postgres::testing::fresh_database_url().await;
    }
    let store = bulwark_server::cli::connect_store(&config).await?;
    store.migrate().await?;
    let app = App::new(config, store, Arc::new(SystemClock), keys)?;
    let transport = Transport::from_config(&app.config.mail)?;
    app.mailer.spawn_worker(transport, app.clock.clone());

    let password: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let user = app
        .add_user(
            NewUserInput {
                login: LOGIN.into(),
                email: None,
                display_name: "Benchmark".into(),
                groups: vec!["internal".into()],
                password: Some(password.clone()),
                must_change_password: false,
            },
            "bench",
            &ClientInfo::cli(),
        )
        .await?;
    let stored = app
        .store
        .find_password_hash(user.id)
        .await?
        .ok_or("the benchmark user has no stored hash")?;
    let password = Password::parse(password).map_err(|e| e.to_string())?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = bulwark_server::web::router(app.clone());
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            eprintln!("server error: {e}");
        }
    });
    Ok(Server {
        app,
        addr,
        password,
        stored,
    })
}

// ---------------------------------------------------------------------------------------
// Raw hashing baseline

#[derive(Clone, Copy, Debug)]
enum Op {
    Verify,
    Hash,
}

/// Operations per second on `threads` OS threads with the server's own hasher.
fn raw_rate(
    hasher: &PasswordHasher,
    password: &Password,
    stored: &PasswordHash,
    threads: usize,
    window: Window,
    op: Op,
) -> Res<f64> {
    let counts: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(move || -> Result<u64, String> {
                    // The best a hashing thread can do: its Argon2 memory kept between hashes.
                    let mut memory = HashMemory::default();
                    let mut done = 0u64;
                    while Instant::now() < window.end {
                        match op {
                            Op::Verify => {
                                let v = hasher.verify_in(&mut memory, password, stored);
                                if !std::hint::black_box(v).is_valid() {
                                    return Err("a raw verification failed".into());
                                }
                            }
                            Op::Hash => {
                                let h = hasher
                                    .hash_in(&mut memory, password)
                                    .map_err(|e| e.to_string())?;
                                std::hint::black_box(h);
                            }
                        }
                        if window.contains(Instant::now()) {
                            done += 1;
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a hashing thread died".into()))
            })
            .collect()
    });
    let mut total = 0u64;
    for c in counts {
        total += c?;
    }
    Ok(total as f64 / window.seconds())
}
