//! Benchmark: the cost of a forward-auth check inside the process, without sockets, against a
//! bare axum hello-world in the same run.
//!
//! ```text
//! cargo run --release -p bulwark-server --example bench_handler -- [--requests N] [--rounds R]
//!     [--summary FILE]
//! ```
//!
//! `bench_gateway` measures what a proxy sees, through the kernel and a load generator that
//! share the machine's cores with the server; on a shared VM those ratios move by ±0.05 from
//! run to run. This one isolates the handler: Bulwark's web service (`web::router`, as
//! `bulwark serve` builds it; a valid session of a user, the gateway cache on) and an axum
//! router whose only handler answers "hello" are each called N times in a row through
//! `tower::ServiceExt::oneshot` with the request nginx `auth_request` sends (the same headers
//! for both, `ConnectInfo` of a trusted proxy), on one thread and then on two at once (each
//! with its own single-threaded runtime), R times; the figure kept for each is the best round
//! (the least disturbed by the rest of the machine). It reports nanoseconds per request and
//! Bulwark's cost above hello's. Building each request is included, the same for both.
//!
//! Speed is never a timed test: this is a separate command; see docs/benchmarks.md.

use bulwark_server::clock::SystemClock;
use bulwark_server::services::ClientInfo;
use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use tower::util::BoxCloneService;
use tower::ServiceExt;

#[path = "common/setup.rs"]
mod setup;
use setup::{Summary, HOST};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

type Request = axum::http::Request<axum::body::Body>;
type Service = BoxCloneService<Request, axum::response::Response, std::convert::Infallible>;

const PASSWORD: &str = "Benchmark-Handler-Password-2026";

/// A forward-auth check in process vs an axum hello-world.
#[derive(Debug, Parser)]
#[command(name = "bench_handler")]
struct Args {
    /// Requests per thread per round.
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Rounds; the best of them is kept.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Append `key=value` results to this file (read by scripts/bench).
    #[arg(long)]
    summary: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    setup::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Res<()> {
    if args.requests == 0 || args.rounds == 0 {
        return Err("--requests and --rounds must be at least 1".into());
    }
    let dir = tempfile::tempdir()?;
    let setup_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (bulwark, cookie) = setup_rt.block_on(async {
        let file = setup::write_config(dir.path(), 60)?;
        let app = setup::build_app(dir.path(), &file, false, Arc::new(SystemClock)).await?;
        setup::add_user(&app, "bench", PASSWORD).await?;
        let login = app
            .login("bench", PASSWORD.into(), &ClientInfo::cli(), None)
            .await?;
        let cookie = format!("bulwark_session={}", login.token.expose());
        Ok::<_, BoxError>((Service::new(bulwark_server::web::router(app)), cookie))
    })?;
    let hello = Service::new(axum::Router::new().fallback(|| async { "hello" }));
    let cookie: Arc<str> = cookie.into();

    println!("Bulwark handler benchmark (in process, no sockets)");
    println!(
        "  {} requests per thread per round, best of {} rounds",
        args.requests, args.rounds
    );
    let mut best = [[f64::MAX; 2]; 2];
    for _ in 0..args.rounds {
        for (i, service) in [&bulwark, &hello].into_iter().enumerate() {
            for (j, threads) in [1usize, 2].into_iter().enumerate() {
                let ns = on_threads(service, &cookie, threads, args.requests)?;
                best[i][j] = best[i][j].min(ns);
            }
        }
    }
    let mut summary = Summary::open(args.summary.as_deref())?;
    for (j, threads) in [1, 2].into_iter().enumerate() {
        let (b, h) = (best[0][j], best[1][j]);
        summary.put(&format!("handler.t{threads}.bulwark_ns"), format!("{b:.0}"))?;
        summary.put(&format!("handler.t{threads}.hello_ns"), format!("{h:.0}"))?;
        summary.put(
            &format!("handler.t{threads}.above_ns"),
            format!("{:.0}", b - h),
        )?;
        println!(
            "  {threads} thread(s): Bulwark {b:.0} ns/request, hello {h:.0} ns/request; \
             Bulwark's check costs {:.0} ns more (hello/Bulwark = {:.2})",
            b - h,
            h / b
        );
    }
    drop(setup_rt);
    Ok(())
}

/// Mean nanoseconds per request over `threads` threads, each sending `n` requests.
fn on_threads(service: &Service, cookie: &Arc<str>, threads: usize, n: usize) -> Res<f64> {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (service, cookie) = (service.clone(), cookie.clone());
            std::thread::spawn(move || -> Res<f64> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(send(service, &cookie, n))
            })
        })
        .collect();
    let mut total = 0.0;
    for h in handles {
        total += h.join().map_err(|_| "a benchmark thread panicked")??;
    }
    Ok(total / threads as f64)
}

async fn send(service: Service, cookie: &str, n: usize) -> Res<f64> {
    // Warm-up: caches, the session cache entry, the allocator.
    for _ in 0..n / 10 {
        check(&service, cookie).await?;
    }
    let started = Instant::now();
    for _ in 0..n {
        check(&service, cookie).await?;
    }
    Ok(started.elapsed().as_nanos() as f64 / n as f64)
}

/// One request as nginx `auth_request` sends it; an answer other than 200 is an error.
async fn check(service: &Service, cookie: &str) -> Res<()> {
    let mut req = axum::http::Request::builder()
        .uri("/api/authz/auth-request")
        .header("host", "127.0.0.1:9091")
        .header("x-original-url", format!("https://{HOST}/web"))
        .header("x-original-method", "GET")
        .header("x-forwarded-for", "203.0.113.7")
        .header("cookie", cookie)
        .body(axum::body::Body::empty())?;
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            40000,
        ))));
    let res = service.clone().oneshot(req).await?;
    if !res.status().is_success() {
        return Err(format!("the check answered {}", res.status()).into());
    }
    std::hint::black_box(res);
    Ok(())
}
