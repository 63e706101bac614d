//! Benchmark: forward-auth checks per second, against a bare axum hello-world, directly and
//! behind nginx `auth_request`, on the same machine in the same run; API-key checks; latency
//! at half of the peak; checks during a login flood; and, when given one, the same nginx
//! `auth_request` load against LemonLDAP::NG's handler.
//!
//! ```text
//! cargo run --release -p bulwark-server --example bench_gateway -- [--seconds N]
//!     [--connections C] [--warmup S] [--rounds R] [--slice-seconds S] [--load wrk|client]
//!     [--lemonldap-socket PATH --lemonldap-cookie-file FILE] [--summary FILE]
//! ```
//!
//! Targets, each loaded the same way (C keep-alive HTTP/1.1 connections, each sending the next
//! request when the last one is answered), by Debian's `wrk` in its own process (`--load
//! client`: the raw client of `common/http.rs` on a thread of this process):
//!
//! - (a) `hello`: a bare axum handler answering 200 "hello", sent the same request as (b);
//! - (b) `bulwark`: `GET /api/authz/auth-request` on Bulwark, with the headers nginx sends and
//!   the cookie of a valid session, through the full router (the rule asks for one factor);
//! - `api key`: the same check for `/xmlrpc/…`, which asks for an API key, with
//!   `Authorization: Bearer bwk_…`;
//! - (c) `nginx → bulwark`: nginx with `auth_request` to Bulwark, then `proxy_pass` to hello;
//! - (d) `nginx → hello`: the same nginx server block, with the auth subrequest sent to hello;
//! - (e) `nginx → LemonLDAP::NG`: the same, with the auth subrequest sent over FastCGI to
//!   LemonLDAP::NG's handler (`llng-fastcgi-server`, set up and given a session by
//!   `scripts/bench`), as Debian's handler example configures it;
//! - (c′), (d′), (e′) `check only`: the same three checks, on a location where nginx answers
//!   the request itself after the check (`empty_gif`) instead of proxying it to hello. The
//!   proxied request costs (c), (d) and (e) the same, which pulls their ratios toward 1;
//!   these measure the checks alone, as forward-auth handlers are usually compared.
//!
//! Then extra phases on (b): latency at half of its median rate, twice (each connection waits
//! 10 ms after an answer, with enough connections to offer half the rate: wrk2 is not in
//! Debian; then the same rate at an even pace from this process, see `even_rate`), and its
//! rate while `2 × passwords.max_concurrent_hashes` browsers log in (a
//! different user, right password) as fast as they can.
//!
//! Rounds. In each of the R rounds every target is loaded for N seconds, in slices of S
//! seconds (1 by default) with the targets taking turns: all of them for one slice, then all
//! of them again in reverse order, and so on (each one's first slice after its warm-up). A
//! target's round figure puts its slices together. The VM this runs on changes speed from one
//! few seconds to the next; measured in one go, a target could fall entirely in a slow
//! stretch its baseline missed, while in slices each has its share of every stretch.
//!
//! Every target must answer 200 before and after it is loaded, and any 4xx, 5xx or socket
//! error during a phase makes the run invalid. Figures are medians of the rounds.
//!
//! Speed is never a timed test: this is a separate command; see docs/benchmarks.md.

use bulwark_server::clock::SystemClock;
use bulwark_server::services::api_keys::{ExpiryChoice, KeyActor, NewApiKeyInput};
use bulwark_server::services::ClientInfo;
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
#[path = "common/wrk.rs"]
mod wrk;
use http::{percentile_ms, Conn};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const PASSWORD: &str = "Benchmark-Gateway-Password-2026";
const FLOOD_LOGIN: &str = "flood";
/// The path of (c′), (d′) and (e′): nginx checks the request, then answers it itself with
/// a 43-byte GIF from memory (`empty_gif`) instead of proxying it to hello, so the figures
/// are of the checks alone, as LemonLDAP::NG's handler is usually compared. (`return`
/// would answer before the check: it runs in an earlier phase than `auth_request`.)
const CHECK_ONLY_PATH: &str = "/web/check-only";
const CHECK_ONLY_LOCATION: &str = "location = /web/check-only";

/// Pause of each connection after an answer in the half-load phase.
const PACE_MS: u64 = 10;

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
    /// A round's measured seconds of each target are taken in slices this long, the targets
    /// taking turns slice by slice, so that the VM's drift over the round falls on every
    /// target alike. `--slice-seconds` equal to `--seconds` measures each target in one go.
    #[arg(long, default_value_t = 1)]
    slice_seconds: u64,
    /// The store: sqlite (a temporary file) or postgres (a fresh database on the server named
    /// by TEST_POSTGRES_URL, e.g. under scripts/with-postgres).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    store: String,
    /// Seconds a checked session stays cached (gateway.cache_seconds); 0 reads the store on
    /// every check, which is what compares the stores.
    #[arg(long, default_value_t = 5)]
    cache_seconds: u64,
    /// The load generator: wrk (a separate process) or client (a thread of this process).
    #[arg(long, default_value = "wrk", value_parser = ["wrk", "client"])]
    load: String,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    wrk_threads: usize,
    /// LemonLDAP::NG handler's FastCGI socket: adds target (e).
    #[arg(long, requires = "lemonldap_cookie_file")]
    lemonldap_socket: Option<PathBuf>,
    /// A file holding the id of a valid LemonLDAP::NG session.
    #[arg(long)]
    lemonldap_cookie_file: Option<PathBuf>,
    /// The virtual host LemonLDAP::NG's rules accept.
    #[arg(long, default_value = "test1.example.com")]
    lemonldap_host: String,
    /// Skip the half-load and login-flood phases.
    #[arg(long)]
    no_extras: bool,
    /// Append `key=value` results to this file (read by scripts/bench).
    #[arg(long)]
    summary: Option<PathBuf>,
}

fn main() -> ExitCode {
    setup::exit_code(run(Args::parse()))
}

/// One measured phase of one target.
#[derive(Debug, Default, Clone)]
struct Stats {
    rate: f64,
    /// Answers counted and the seconds they were counted over.
    requests: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time of this process (the servers: Bulwark and hello) per answered request, in
    /// µs, when the load came from another process.
    cpu_us: Option<f64>,
    errors: u64,
    first_error: Option<String>,
}

impl Stats {
    /// One target's slices of a round as one measurement: the rate over their time put
    /// together, the CPU per request over their requests, and the median of their latency
    /// percentiles (each slice's percentiles come from its own load generator).
    fn joined(slices: Vec<Stats>) -> Stats {
        let requests: u64 = slices.iter().map(|s| s.requests).sum();
        let seconds: f64 = slices.iter().map(|s| s.seconds).sum();
        let cpu: Option<f64> = slices
            .iter()
            .map(|s| s.cpu_us.map(|us| us * s.requests as f64))
            .sum();
        let of = |f: fn(&Stats) -> f64| median(&slices.iter().map(f).collect::<Vec<_>>());
        Stats {
            rate: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            requests,
            seconds,
            p50_ms: of(|s| s.p50_ms),
            p99_ms: of(|s| s.p99_ms),
            cpu_us: cpu.filter(|_| requests > 0).map(|c| c / requests as f64),
            errors: slices.iter().map(|s| s.errors).sum(),
            first_error: slices.into_iter().find_map(|s| s.first_error),
        }
    }
}

struct Target {
    /// Name in the summary.
    key: &'static str,
    name: &'static str,
    addr: SocketAddr,
    path: &'static str,
    /// Host among them.
    headers: Vec<(String, String)>,
}

impl Target {
    fn raw_request(&self) -> String {
        let mut r = format!("GET {} HTTP/1.1\r\n", self.path);
        for (k, v) in &self.headers {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        r.push_str("\r\n");
        r
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }
}

/// Who sends the load.
enum Load {
    Wrk(wrk::Wrk),
    Client,
}

impl Load {
    /// Loads `t` for `--warmup` + `--seconds`; with `pace`, each connection waits that long
    /// after every answer.
    fn measure(
        &self,
        rt: &tokio::runtime::Runtime,
        t: &Target,
        connections: usize,
        args: &Args,
        pace: Option<(&Path, Duration)>,
    ) -> Res<Stats> {
        self.phase(rt, t, connections, args.warmup, args.seconds, pace)
    }

    /// Loads `t` for `warmup` (unmeasured, may be 0) + `seconds`.
    fn phase(
        &self,
        rt: &tokio::runtime::Runtime,
        t: &Target,
        connections: usize,
        warmup: u64,
        seconds: u64,
        pace: Option<(&Path, Duration)>,
    ) -> Res<Stats> {
        match self {
            Load::Wrk(w) => {
                let script = pace.map(|(s, _)| s);
                if warmup > 0 {
                    w.run(&t.url(), &t.headers, connections, warmup, script)?;
                }
                let cpu = process_cpu();
                let r = w.run(&t.url(), &t.headers, connections, seconds, script)?;
                let cpu = cpu.zip(process_cpu()).map(|(before, after)| after - before);
                Ok(Stats {
                    rate: r.rate,
                    requests: r.requests,
                    seconds: if r.rate > 0.0 {
                        r.requests as f64 / r.rate
                    } else {
                        seconds as f64
                    },
                    p50_ms: r.p50_ms,
                    p99_ms: r.p99_ms,
                    cpu_us: cpu
                        .filter(|_| r.requests > 0)
                        .map(|d| d.as_secs_f64() * 1e6 / r.requests as f64),
                    errors: r.errors,
                    first_error: r.error_text,
                })
            }
            Load::Client => rt.block_on(load_client(
                t,
                connections,
                warmup,
                seconds,
                pace.map(|(_, d)| d),
            )),
        }
    }
}

fn run(args: Args) -> Res<()> {
    let tmp = tempfile::tempdir()?;
    let mut summary = Summary::open(args.summary.as_deref())?;
    let load = match args.load.as_str() {
        "wrk" => Load::Wrk(
            wrk::Wrk::find(args.wrk_threads)
                .ok_or("wrk is not installed (Debian package `wrk`); or use --load client")?,
        ),
        _ => Load::Client,
    };
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let hello = server_rt.block_on(start_hello())?;
    let bulwark = server_rt.block_on(start_bulwark(tmp.path(), &args))?;
    let lemonldap = match (&args.lemonldap_socket, &args.lemonldap_cookie_file) {
        (Some(socket), Some(file)) => Some((
            socket.clone(),
            std::fs::read_to_string(file)?.trim().to_string(),
        )),
        _ => None,
    };
    let nginx = match Nginx::start(
        tmp.path(),
        bulwark.addr,
        hello,
        lemonldap
            .as_ref()
            .map(|(s, _)| (s.as_path(), args.lemonldap_host.as_str())),
    ) {
        Ok(n) => Some(n),
        Err(e) => {
            println!("nginx not started ({e}): targets (c), (d) and (e) are skipped");
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
        "  load:     {}, {} keep-alive connections; {} round(s) of {} s warm-up + {} s measured per target, in slices of {} s, the targets taking turns",
        match &load {
            Load::Wrk(w) => format!("wrk ({} thread(s), separate process)", w.threads()),
            Load::Client => "in-process client".into(),
        },
        args.connections,
        args.rounds,
        args.warmup,
        args.seconds,
        args.slice_seconds.clamp(1, args.seconds.max(1))
    );
    println!();

    let auth = |extra: Vec<(String, String)>| {
        let mut h = vec![
            ("Host".to_string(), bulwark.addr.to_string()),
            ("X-Original-Method".into(), "GET".into()),
            ("X-Forwarded-For".into(), "203.0.113.7".into()),
        ];
        h.extend(extra);
        h
    };
    let session = ("Cookie".to_string(), bulwark.cookie.clone());
    let check = auth(vec![
        ("X-Original-URL".into(), format!("https://{HOST}/web")),
        session.clone(),
    ]);
    // Hello gets the very request Bulwark gets (but for Host), as it does behind nginx in
    // (d): the two differ only in the handler, not in the bytes to read and parse.
    let mut to_hello = check.clone();
    to_hello[0].1 = hello.to_string();
    let mut targets = vec![
        Target {
            key: "hello",
            name: "(a) hello",
            addr: hello,
            path: "/",
            headers: to_hello,
        },
        Target {
            key: "bulwark",
            name: "(b) bulwark",
            addr: bulwark.addr,
            path: "/api/authz/auth-request",
            headers: check,
        },
        Target {
            key: "api_key",
            name: "api key → bulwark",
            addr: bulwark.addr,
            path: "/api/authz/auth-request",
            headers: auth(vec![
                (
                    "X-Original-URL".into(),
                    format!("https://{HOST}/xmlrpc/2/object"),
                ),
                (
                    "Authorization".into(),
                    format!("Bearer {}", bulwark.api_key),
                ),
            ]),
        },
    ];
    if let Some(n) = &nginx {
        let browser = vec![("Host".to_string(), HOST.to_string()), session.clone()];
        targets.push(Target {
            key: "nginx_bulwark",
            name: "(c) nginx → bulwark",
            addr: n.protected,
            path: "/web",
            headers: browser.clone(),
        });
        targets.push(Target {
            key: "nginx_hello",
            name: "(d) nginx → hello",
            addr: n.baseline,
            path: "/web",
            headers: browser.clone(),
        });
        let lemonldap = match (n.lemonldap, &lemonldap) {
            (Some(addr), Some((_, cookie))) => Some((
                addr,
                vec![
                    ("Host".to_string(), args.lemonldap_host.clone()),
                    ("Cookie".to_string(), format!("lemonldap={cookie}")),
                ],
            )),
            _ => None,
        };
        if let Some((addr, headers)) = &lemonldap {
            targets.push(Target {
                key: "nginx_lemonldap",
                name: "(e) nginx → LemonLDAP",
                addr: *addr,
                path: "/web",
                headers: headers.clone(),
            });
        }
        targets.push(Target {
            key: "check_bulwark",
            name: "(c′) check only → bulwark",
            addr: n.protected,
            path: CHECK_ONLY_PATH,
            headers: browser.clone(),
        });
        targets.push(Target {
            key: "check_hello",
            name: "(d′) check only → hello",
            addr: n.baseline,
            path: CHECK_ONLY_PATH,
            headers: browser,
        });
        if let Some((addr, headers)) = lemonldap {
            targets.push(Target {
                key: "check_lemonldap",
                name: "(e′) check only → LemonLDAP",
                addr,
                path: CHECK_ONLY_PATH,
                headers,
            });
        }
    }
    for t in &targets {
        client_rt.block_on(expect_ok(t))?;
    }

    let mut results: Vec<Vec<Stats>> = vec![Vec::new(); targets.len()];
    let slices = slice_lengths(args.seconds, args.slice_seconds);
    for round in 1..=args.rounds {
        let mut taken: Vec<Vec<Stats>> = vec![Vec::new(); targets.len()];
        for (pass, &seconds) in slices.iter().enumerate() {
            // Every other pass runs the targets in reverse, so that no target always follows
            // the same one (a target measured right after another can inherit its state: a
            // warm or cold nginx, connections still closing, the scheduler's history).
            let mut order: Vec<usize> = (0..targets.len()).collect();
            if (round - 1 + pass) % 2 == 1 {
                order.reverse();
            }
            // Each target's first slice of a round comes after its warm-up.
            let warmup = if pass == 0 { args.warmup } else { 0 };
            for i in order {
                let t = &targets[i];
                let s = load.phase(&client_rt, t, args.connections, warmup, seconds, None)?;
                taken[i].push(s);
            }
        }
        for (i, t) in targets.iter().enumerate() {
            let s = Stats::joined(std::mem::take(&mut taken[i]));
            report(&format!("round {round} {}", t.name), &s)?;
            results[i].push(s);
        }
    }
    for t in &targets {
        client_rt.block_on(expect_ok(t))?;
    }
    println!();
    println!("Result (median of {} rounds)", args.rounds);
    let mut rates = std::collections::BTreeMap::new();
    let mut round_rates = std::collections::BTreeMap::new();
    let mut cpus = std::collections::BTreeMap::new();
    for (t, r) in targets.iter().zip(&results) {
        round_rates.insert(t.key, r.iter().map(|s| s.rate).collect::<Vec<_>>());
        let rate = median(&r.iter().map(|s| s.rate).collect::<Vec<_>>());
        let p99 = median(&r.iter().map(|s| s.p99_ms).collect::<Vec<_>>());
        let p50 = median(&r.iter().map(|s| s.p50_ms).collect::<Vec<_>>());
        let cpu: Option<Vec<f64>> = r.iter().map(|s| s.cpu_us).collect();
        let cpu = cpu.map(|c| median(&c));
        println!(
            "  {:<24} {rate:>9.0} req/s  p50 {p50:.2} ms  p99 {p99:.2} ms{}",
            t.name,
            cpu_text(cpu)
        );
        if let Some(us) = cpu {
            summary.put(&format!("gateway.{}.cpu_us", t.key), format!("{us:.1}"))?;
            cpus.insert(t.key, us);
        }
        summary.put(&format!("gateway.{}.rate", t.key), format!("{rate:.0}"))?;
        summary.put(&format!("gateway.{}.p50_ms", t.key), format!("{p50:.2}"))?;
        summary.put(&format!("gateway.{}.p99_ms", t.key), format!("{p99:.2}"))?;
        rates.insert(t.key, rate);
    }
    let ratio = |a: &str, b: &str| Some(rates.get(a)? / rates.get(b)?);
    for (key, label, num, den, target) in [
        ("b_over_a", "(b)/(a)", "bulwark", "hello", Some(0.8)),
        (
            "c_over_d",
            "(c)/(d)",
            "nginx_bulwark",
            "nginx_hello",
            Some(0.9),
        ),
        (
            "c_over_e",
            "(c)/(e)",
            "nginx_bulwark",
            "nginx_lemonldap",
            Some(8.0),
        ),
        (
            "e_over_d",
            "(e)/(d)",
            "nginx_lemonldap",
            "nginx_hello",
            None,
        ),
        (
            "c_over_d_check",
            "(c′)/(d′)",
            "check_bulwark",
            "check_hello",
            None,
        ),
        (
            "c_over_e_check",
            "(c′)/(e′)",
            "check_bulwark",
            "check_lemonldap",
            Some(8.0),
        ),
        (
            "e_over_d_check",
            "(e′)/(d′)",
            "check_lemonldap",
            "check_hello",
            None,
        ),
        ("api_over_b", "api key/(b)", "api_key", "bulwark", None),
    ] {
        if let Some(r) = ratio(num, den) {
            let verdict = target.map_or(String::new(), |t| {
                format!(" (target >= {t:.2}: {})", met(r, t))
            });
            // The two targets of a round are measured one right after the other: their
            // ratio shows how far the machine moved between rounds, which the ratio of the
            // medians (the figure) may take from two different rounds.
            let per_round = match (round_rates.get(num), round_rates.get(den)) {
                (Some(n), Some(d)) => n
                    .iter()
                    .zip(d)
                    .map(|(n, d)| format!("{:.2}", n / d))
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => String::new(),
            };
            println!("  ratio {label:<14} {r:.2}{verdict}; per round {per_round}");
            summary.put(&format!("gateway.{key}"), format!("{r:.3}"))?;
            summary.put(&format!("gateway.{key}.rounds"), &per_round)?;
            // Where both checks ran in this process, the same ratio by the servers' CPU per
            // request: what the check costs, whatever the VM's scheduling did to the rates.
            if !(num.contains("lemonldap") || den.contains("lemonldap")) {
                if let (Some(n), Some(d)) = (cpus.get(num), cpus.get(den)) {
                    let by_cpu = d / n;
                    println!("  {:<20} by the servers' CPU per request: {by_cpu:.2}", "");
                    summary.put(&format!("gateway.{key}.cpu"), format!("{by_cpu:.3}"))?;
                }
            }
        }
    }
    let peak = rates.get("bulwark").copied().unwrap_or(0.0);
    if !args.no_extras && peak > 0.0 {
        let b = &targets[1];
        half_load(&load, &client_rt, b, peak, &args, tmp.path(), &mut summary)?;
        login_flood(&load, &client_rt, b, peak, &bulwark, &args, &mut summary)?;
    }
    summary.put("gateway.connections", args.connections)?;
    summary.put("gateway.seconds", args.seconds)?;
    summary.put("gateway.slice_seconds", slices[0])?;
    summary.put(
        "gateway.load",
        match &load {
            Load::Wrk(w) => format!("wrk, {} thread(s)", w.threads()),
            Load::Client => "in-process client".into(),
        },
    )?;
    drop(nginx);
    Ok(())
}

/// The CPU time this process has used (user and system, every thread, exited ones too), to
/// the kernel's tick of 10 ms: about 0.2% of a 5-second phase on one core.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 14th and 15th fields of the line, in ticks of 1/100 s.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

/// The machine's time stolen by the hypervisor as a report line shows it.
fn steal_text(steal: Option<f64>) -> String {
    steal.map_or("steal unknown".into(), |s| {
        format!(
            "the hypervisor took {:.0}% of the machine (steal)",
            s * 100.0
        )
    })
}

/// The servers' CPU per request as a report line shows it, if it was measured.
fn cpu_text(cpu_us: Option<f64>) -> String {
    cpu_us.map_or(String::new(), |us| {
        format!("  servers' CPU {us:.1} µs/request")
    })
}

fn report(label: &str, s: &Stats) -> Res<()> {
    println!(
        "  {label:<32} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms{}{}",
        s.rate,
        s.p50_ms,
        s.p99_ms,
        cpu_text(s.cpu_us),
        match &s.first_error {
            Some(e) => format!("  ({} errors: {e})", s.errors),
            None => String::new(),
        }
    );
    if s.errors > 0 {
        return Err(format!("{label} had errors: the run has no valid figures").into());
    }
    Ok(())
}

/// (b) at half of its median rate: p50/p99 when the server is not saturated.
fn half_load(
    load: &Load,
    rt: &tokio::runtime::Runtime,
    b: &Target,
    peak: f64,
    args: &Args,
    dir: &Path,
    summary: &mut Summary,
) -> Res<()> {
    let offered = peak / 2.0;
    let script = wrk::pacing_script(dir, PACE_MS)?;
    let pace = Some((script.as_path(), Duration::from_millis(PACE_MS)));
    // C / (pause + latency) requests per second: start from the pause alone, then correct C
    // by what one calibration phase reached.
    let guess = ((offered * PACE_MS as f64 / 1000.0).round() as usize).max(1);
    let calibration = load.measure(rt, b, guess, args, pace)?;
    let connections = if calibration.rate > 0.0 {
        ((guess as f64 * offered / calibration.rate).round() as usize).max(1)
    } else {
        guess
    };
    println!();
    println!(
        "Half load on (b): {offered:.0} req/s wanted; {connections} connections, each pausing {PACE_MS} ms after an answer ({guess} reached {:.0} req/s)",
        calibration.rate
    );
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        let s = load.measure(rt, b, connections, args, pace)?;
        report(&format!("round {round} (b) at half load"), &s)?;
        runs.push(s);
    }
    let rate = median(&runs.iter().map(|s| s.rate).collect::<Vec<_>>());
    let p50 = median(&runs.iter().map(|s| s.p50_ms).collect::<Vec<_>>());
    let p99 = median(&runs.iter().map(|s| s.p99_ms).collect::<Vec<_>>());
    println!(
        "  median: {rate:.0} req/s ({:.2} of peak), p50 {p50:.2} ms, p99 {p99:.2} ms (a reference: paced connections arrive in bursts; the target is judged at the even rate below)",
        rate / peak
    );
    summary.put("gateway.half.connections", connections)?;
    summary.put("gateway.half.pace_ms", PACE_MS)?;
    summary.put("gateway.half.rate", format!("{rate:.0}"))?;
    summary.put("gateway.half.p50_ms", format!("{p50:.2}"))?;
    summary.put("gateway.half.p99_ms", format!("{p99:.2}"))?;

    // The same offered rate at an even pace from this process (see `even_rate`).
    println!();
    println!(
        "Half load on (b) at an even rate: {offered:.0} req/s on {EVEN_CONNECTIONS} connections, each sending on its own schedule"
    );
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        let before = setup::machine_ticks();
        let (s, schedule) = even_rate(rt, b, offered, EVEN_CONNECTIONS, args.warmup, args.seconds)?;
        // A vCPU the hypervisor takes away stops the server and the generator alike: every
        // request due meanwhile waits, which no code of theirs can shorten.
        let steal = setup::steal_between(before, setup::machine_ticks());
        report(&format!("round {round} (b) at an even half load"), &s)?;
        println!(
            "  {:<32} sends late by p99 {:.2} ms; p99 from the schedule {:.2} ms; {}",
            "",
            schedule.late_p99_ms,
            schedule.from_due_p99_ms,
            steal_text(steal)
        );
        runs.push((s, schedule, steal.unwrap_or(0.0)));
    }
    let pick =
        |f: fn(&(Stats, Schedule, f64)) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let (rate, p50, p99, late, from_due, steal) = (
        pick(|r| r.0.rate),
        pick(|r| r.0.p50_ms),
        pick(|r| r.0.p99_ms),
        pick(|r| r.1.late_p99_ms),
        pick(|r| r.1.from_due_p99_ms),
        pick(|r| r.2),
    );
    println!(
        "  median: {rate:.0} req/s ({:.2} of peak), p50 {p50:.2} ms, p99 {p99:.2} ms, sends late by p99 {late:.2} ms, p99 from the schedule {from_due:.2} ms (target: both < 2 ms: {}); {}",
        rate / peak,
        if p99.max(from_due) < 2.0 { "met" } else { "NOT met" },
        steal_text(Some(steal))
    );
    summary.put("gateway.even.steal_pct", format!("{:.0}", steal * 100.0))?;
    summary.put("gateway.even.connections", EVEN_CONNECTIONS)?;
    summary.put("gateway.even.rate", format!("{rate:.0}"))?;
    summary.put("gateway.even.p50_ms", format!("{p50:.2}"))?;
    summary.put("gateway.even.p99_ms", format!("{p99:.2}"))?;
    summary.put("gateway.even.late_p99_ms", format!("{late:.2}"))?;
    summary.put("gateway.even.from_due_p99_ms", format!("{from_due:.2}"))?;
    Ok(())
}

/// Connections of the even-rate load (each request goes on the next one with no request
/// unanswered).
const EVEN_CONNECTIONS: usize = 64;

/// Offers `rate` requests/s of `t` at an even pace, whatever the answers before (an open
/// loop, unlike wrk, whose paced connections drift into bursts): the k-th request of the run
/// is due at `start + k / rate`, on the next of `connections` with no request unanswered, as
/// a proxy's pool of keep-alive connections would send it (never a second request behind an
/// unanswered one).
///
/// One thread sends: it sleeps until each request is due (the OS timer wakes it within about
/// 0.1 ms; the runtime's ticks by the millisecond, which would send every request due in the
/// same millisecond together, `rate / 1000` of them queueing behind each other) and writes it
/// on a blocking socket. The answers are read on `rt` (one thread), each timed from its
/// request's actual send. How the sends kept to their schedule is returned with the figures:
/// a large lateness means the generator (or every connection) was held up, and the p99 from
/// the schedule counts that wait too.
fn even_rate(
    rt: &tokio::runtime::Runtime,
    t: &Target,
    rate: f64,
    connections: usize,
    warmup: u64,
    seconds: u64,
) -> Res<(Stats, Schedule)> {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    /// When each request still unanswered on a connection was due and sent.
    type Sent = Mutex<VecDeque<(Instant, Instant)>>;

    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let begin = Instant::now() + Duration::from_millis(100);
    let start = begin + Duration::from_secs(warmup);
    let end = start + Duration::from_secs(seconds);
    let request = t.raw_request().into_bytes();
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for _ in 0..connections {
        let stream = std::net::TcpStream::connect(t.addr)?;
        stream.set_nodelay(true)?;
        let reader = stream.try_clone()?;
        // Non-blocking for the runtime; the flag is shared with the writer's handle, whose
        // small writes into an empty socket buffer go through at once anyway.
        reader.set_nonblocking(true)?;
        writers.push(stream);
        readers.push(reader);
    }
    let sent: Arc<Vec<Sent>> = Arc::new((0..connections).map(|_| Sent::default()).collect());
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (sent, done) = (sent.clone(), done.clone());
        std::thread::spawn(move || -> Res<()> {
            let mut due = begin;
            let (mut k, mut last) = (0usize, 0usize);
            let result = loop {
                if due >= end {
                    break Ok(());
                }
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                // The next connection with no request unanswered: a second request on a
                // busy one would wait behind the first (and its answer behind Nagle's
                // algorithm until the first is acknowledged). When all are busy, the send
                // waits, and is counted late.
                let idle = |c: &usize| sent[*c].lock().is_ok_and(|q| q.is_empty());
                let c = loop {
                    let n = writers.len();
                    if let Some(c) = (1..=n).map(|i| (last + i) % n).find(idle) {
                        break Some(c);
                    }
                    if due.elapsed() > NO_ANSWER {
                        break None;
                    }
                    std::thread::sleep(Duration::from_micros(20));
                };
                let Some(c) = c else {
                    break Err(
                        format!("no connection answered for {} s", NO_ANSWER.as_secs()).into(),
                    );
                };
                last = c;
                let at = Instant::now();
                if let Ok(mut q) = sent[c].lock() {
                    q.push_back((due, at));
                }
                if let Err(e) = write_all_nonblocking(&mut writers[c], &request) {
                    // Not sent: its reader must not wait for an answer.
                    if let Ok(mut q) = sent[c].lock() {
                        q.pop_back();
                    }
                    break Err(e.into());
                }
                k += 1;
                due = begin + interval.mul_f64(k as f64);
            };
            done.store(true, Ordering::Release);
            result
        })
    };
    let tallies = rt.block_on(async {
        let tasks: Vec<_> = readers
            .into_iter()
            .enumerate()
            .map(|(c, reader)| {
                let (sent, done) = (sent.clone(), done.clone());
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut stream = tokio::net::TcpStream::from_std(reader)?;
                    let mut buf = Vec::with_capacity(16 * 1024);
                    let mut tally = Tally::default();
                    let mut answered = Instant::now();
                    loop {
                        while let Some((res, used)) = http::parse_response(&buf)? {
                            buf.drain(..used);
                            let now = Instant::now();
                            answered = now;
                            let Some((due, at)) =
                                sent[c].lock().ok().and_then(|mut q| q.pop_front())
                            else {
                                return Err("an answer to no request".into());
                            };
                            if due >= start {
                                tally.late.push(at - due);
                                if res.status == 200 {
                                    tally.from_due.push(now - due);
                                }
                                tally.count(if res.status == 200 {
                                    Ok(now - at)
                                } else {
                                    Err(format!("HTTP {}", res.status))
                                });
                            }
                        }
                        let waiting = sent[c].lock().map_or(0, |q| q.len());
                        if waiting == 0 && done.load(Ordering::Acquire) {
                            return Ok::<_, BoxError>(tally);
                        }
                        if waiting == 0 {
                            // Idle: the wait for an answer starts with the next request.
                            answered = Instant::now();
                        } else if answered.elapsed() > NO_ANSWER {
                            return Err(format!("no answer for {} s", NO_ANSWER.as_secs()).into());
                        }
                        buf.reserve(16 * 1024);
                        // Woken now and then to see whether the sender has finished.
                        match tokio::time::timeout(
                            Duration::from_millis(50),
                            stream.read_buf(&mut buf),
                        )
                        .await
                        {
                            Ok(Ok(0)) => return Err("the connection closed".into()),
                            Ok(Ok(_)) | Err(_) => {}
                            Ok(Err(e)) => return Err(e.into()),
                        }
                    }
                })
            })
            .collect();
        let mut tallies = Vec::new();
        for task in tasks {
            tallies.push(task.await??);
        }
        Ok::<_, BoxError>(tallies)
    });
    sender.join().map_err(|_| "the even-rate sender died")??;
    Ok(figures(tallies?, seconds))
}

/// How long the even-rate load waits for an answer before it gives up on the run.
const NO_ANSWER: Duration = Duration::from_secs(10);

/// Writes all of `bytes` on a socket that may be non-blocking, waiting a little whenever its
/// buffer is full.
fn write_all_nonblocking(
    stream: &mut std::net::TcpStream,
    mut bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What one connection of a load saw: latencies of good answers, errors, and (at an even
/// rate) how late each send was against its schedule.
#[derive(Default)]
struct Tally {
    ok: Vec<Duration>,
    late: Vec<Duration>,
    /// At an even rate: from when each request was due to its answer (lateness included).
    from_due: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn count(&mut self, outcome: Result<Duration, String>) {
        match outcome {
            Ok(latency) => self.ok.push(latency),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Sends `request` once: the latency of a 200, or what went wrong instead. A broken
/// connection is reopened for the next request.
async fn check_once(
    conn: &mut Conn,
    addr: SocketAddr,
    request: &[u8],
) -> Res<Result<Duration, String>> {
    let sent = Instant::now();
    Ok(match conn.exchange(request).await {
        Ok(res) if res.status == 200 => Ok(sent.elapsed()),
        Ok(res) => Err(format!("HTTP {}", res.status)),
        Err(e) => {
            *conn = Conn::open(addr).await?;
            Err(e.to_string())
        }
    })
}

/// At an even rate, how the sends kept to their schedule.
#[derive(Clone, Copy)]
struct Schedule {
    /// p99 of how late the sends were (ms).
    late_p99_ms: f64,
    /// p99 from when each request was due to its answer (ms): the latency a client sending
    /// on that schedule would have seen, waits for the generator included.
    from_due_p99_ms: f64,
}

/// The figures of a load from its connections' tallies over `seconds`, and (at an even rate)
/// how its sends kept to their schedule.
fn figures(tallies: Vec<Tally>, seconds: u64) -> (Stats, Schedule) {
    let (mut latencies, mut lateness, mut from_due) = (Vec::new(), Vec::new(), Vec::new());
    let mut stats = Stats::default();
    for tally in tallies {
        latencies.extend(tally.ok);
        lateness.extend(tally.late);
        from_due.extend(tally.from_due);
        stats.errors += tally.errors;
        if stats.first_error.is_none() {
            stats.first_error = tally.first_error;
        }
    }
    stats.requests = latencies.len() as u64;
    stats.seconds = seconds.max(1) as f64;
    stats.rate = stats.requests as f64 / stats.seconds;
    stats.p50_ms = percentile_ms(&latencies, 50);
    stats.p99_ms = percentile_ms(&latencies, 99);
    let schedule = Schedule {
        late_p99_ms: percentile_ms(&lateness, 99),
        from_due_p99_ms: percentile_ms(&from_due, 99),
    };
    (stats, schedule)
}

/// (b) while browsers of another user log in as fast as they can.
fn login_flood(
    load: &Load,
    rt: &tokio::runtime::Runtime,
    b: &Target,
    peak: f64,
    bulwark: &Bulwark,
    args: &Args,
    summary: &mut Summary,
) -> Res<()> {
    let clients = 2 * bulwark.hash_permits;
    println!();
    println!(
        "Login flood: (b) while {clients} browsers post logins of `{FLOOD_LOGIN}` on their own runtime"
    );
    let mut checks = Vec::new();
    let mut logins = Vec::new();
    for round in 1..=args.rounds {
        // The browsers run on their own thread for the whole phase (warm-up included); their
        // window is the measured one.
        let window = login::Window::after_warmup(
            Duration::from_secs(args.warmup),
            Duration::from_secs(args.seconds),
        );
        let addr = bulwark.addr;
        let flood = std::thread::spawn(move || -> Res<login::HttpStats> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(login::http_phase(
                addr,
                FLOOD_LOGIN.into(),
                PASSWORD.into(),
                clients,
                window,
            ))
        });
        let s = load.measure(rt, b, args.connections, args, None);
        let stats = flood.join().map_err(|_| "the login flood thread died")??;
        let s = s?;
        let rate = stats.ok as f64 / stats.window_secs.max(1e-9);
        report(&format!("round {round} (b) during logins"), &s)?;
        println!(
            "  {:<32} {rate:>9.1} logins/s",
            format!("round {round} logins")
        );
        if !stats.errors.is_empty() {
            return Err(format!("logins failed during the flood: {:?}", stats.errors).into());
        }
        checks.push(s.rate);
        logins.push(rate);
    }
    let rate = median(&checks);
    let per_s = median(&logins);
    println!(
        "  median: {rate:.0} checks/s with {per_s:.1} logins/s = {:.2} of idle (target >= 0.50: {})",
        rate / peak,
        met(rate / peak, 0.5)
    );
    summary.put("gateway.flood.clients", clients)?;
    summary.put("gateway.flood.rate", format!("{rate:.0}"))?;
    summary.put("gateway.flood.logins_per_s", format!("{per_s:.1}"))?;
    summary.put("gateway.flood.ratio", format!("{:.3}", rate / peak))?;
    Ok(())
}

fn met(ratio: f64, target: f64) -> &'static str {
    if ratio >= target {
        "met"
    } else {
        "NOT met"
    }
}

/// One request: the target must answer 200 (wrk would count a redirect to a login page as a
/// success).
async fn expect_ok(t: &Target) -> Res<()> {
    let mut conn = Conn::open(t.addr).await?;
    let res = conn.exchange(t.raw_request().as_bytes()).await?;
    if res.status != 200 {
        return Err(format!(
            "{} answered {} (Location: {:?}) instead of 200",
            t.name,
            res.status,
            res.header("location")
        )
        .into());
    }
    Ok(())
}

/// `seconds` cut into slices of `slice` seconds (the last one shorter if they do not divide).
fn slice_lengths(seconds: u64, slice: u64) -> Vec<u64> {
    let (seconds, slice) = (seconds.max(1), slice.max(1));
    (0..seconds.div_ceil(slice))
        .map(|k| slice.min(seconds - k * slice))
        .collect()
}

/// Loads one target from this process: `connections` keep-alive connections for warm-up +
/// measured time, each pausing `pace` after every answer if given.
async fn load_client(
    t: &Target,
    connections: usize,
    warmup: u64,
    seconds: u64,
    pace: Option<Duration>,
) -> Res<Stats> {
    let start = Instant::now() + Duration::from_secs(warmup);
    let end = start + Duration::from_secs(seconds);
    let request = Arc::new(t.raw_request());
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let addr = t.addr;
            let request = request.clone();
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await?;
                let mut tally = Tally::default();
                while Instant::now() < end {
                    let outcome = check_once(&mut conn, addr, request.as_bytes()).await?;
                    let done = Instant::now();
                    if done >= start && done <= end {
                        tally.count(outcome);
                    }
                    if let Some(p) = pace {
                        tokio::time::sleep(p).await;
                    }
                }
                Ok::<_, BoxError>(tally)
            })
        })
        .collect();
    let mut tallies = Vec::new();
    for task in tasks {
        tallies.push(task.await??);
    }
    Ok(figures(tallies, seconds).0)
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

/// The Bulwark under test.
struct Bulwark {
    addr: SocketAddr,
    /// `name=value` of a valid session of user `bench`.
    cookie: String,
    /// A gateway-scoped API key of user `bench`.
    api_key: String,
    hash_permits: usize,
}

/// Bulwark as `serve` assembles it, with user `bench` (a session and an API key) and user
/// `flood` (for the login flood).
async fn start_bulwark(dir: &Path, args: &Args) -> Res<Bulwark> {
    let file = setup::write_config(dir, args.cache_seconds)?;
    let app = setup::build_app(dir, &file, args.store == "postgres", Arc::new(SystemClock)).await?;
    setup::add_user(&app, "bench", PASSWORD).await?;
    setup::add_user(&app, FLOOD_LOGIN, PASSWORD).await?;
    let login = app
        .login("bench", PASSWORD.into(), &ClientInfo::cli(), None)
        .await?;
    let key = app
        .create_api_key(
            KeyActor::Cli,
            "bench",
            NewApiKeyInput {
                name: "benchmark".into(),
                scopes: vec!["gateway".into()],
                expiry: ExpiryChoice::Days(30),
                password: None,
            },
            &ClientInfo::cli(),
        )
        .await?;
    let hash_permits = app.config.passwords.max_concurrent_hashes;
    Ok(Bulwark {
        cookie: format!("bulwark_session={}", login.token.expose()),
        api_key: key.key.expose().to_string(),
        hash_permits,
        addr: setup::serve(app).await?,
    })
}

/// Debian's nginx with server blocks sharing one configuration, differing only in where the
/// auth subrequest goes: Bulwark, hello, and LemonLDAP::NG's FastCGI handler if given.
struct Nginx {
    child: Child,
    bin: PathBuf,
    prefix: PathBuf,
    conf: PathBuf,
    protected: SocketAddr,
    baseline: SocketAddr,
    lemonldap: Option<SocketAddr>,
}

impl Nginx {
    fn start(
        dir: &Path,
        bulwark: SocketAddr,
        hello: SocketAddr,
        lemonldap: Option<(&Path, &str)>,
    ) -> Res<Self> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or("nginx is not installed (Debian package `nginx`)")?;
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs"))?;
        let protected = free_port()?;
        let baseline = free_port()?;
        let lemonldap_port = lemonldap.map(|_| free_port()).transpose()?;
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
                 proxy_set_header Connection \"\";\n    proxy_pass http://hello;\n  }}\n\
                 {CHECK_ONLY_LOCATION} {{\n    auth_request /internal/auth;\n    empty_gif;\n  }}\n}}\n"
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
        // LemonLDAP::NG's handler as its Debian example (test-nginx.conf) calls it: FastCGI on
        // a Unix socket, the request body dropped, the original URI passed along.
        let conf = match (lemonldap, lemonldap_port) {
            (Some((socket, vhost)), Some(port)) => {
                let e = format!(
                    "server {{\n  listen {port};\n  server_name {vhost};\n\
                     location = /lmauth {{\n    internal;\n    include /etc/nginx/fastcgi_params;\n\
                     fastcgi_pass unix:{socket};\n    fastcgi_pass_request_body off;\n\
                     fastcgi_param CONTENT_LENGTH \"\";\n    fastcgi_param HTTP_HOST $host;\n\
                     fastcgi_param X_ORIGINAL_URI $original_uri;\n  }}\n\
                     location / {{\n    set $original_uri $uri$is_args$args;\n\
                     auth_request /lmauth;\n\
                     auth_request_set $lmremote_user $upstream_http_lm_remote_user;\n\
                     auth_request_set $lmlocation $upstream_http_location;\n\
                     error_page 401 $lmlocation;\n\
                     proxy_set_header Remote-User $lmremote_user;\n    proxy_http_version 1.1;\n\
                     proxy_set_header Connection \"\";\n    proxy_pass http://hello;\n  }}\n\
                     {CHECK_ONLY_LOCATION} {{\n    set $original_uri $uri$is_args$args;\n\
                     auth_request /lmauth;\n    empty_gif;\n  }}\n}}\n",
                    socket = socket.display()
                );
                match conf.rfind('}') {
                    Some(i) => format!("{}{e}}}\n", &conf[..i]),
                    None => conf,
                }
            }
            _ => conf,
        };
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
            lemonldap: lemonldap_port,
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
