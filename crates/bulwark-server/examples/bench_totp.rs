//! Benchmark: TOTP second-factor steps per second, with the replay write, at the service level.
//!
//! ```text
//! cargo run --release -p bulwark-server --example bench_totp -- [--seconds N] [--rounds R]
//!     [--users U] [--tasks T] [--store sqlite|postgres] [--summary FILE]
//! ```
//!
//! Each operation is `App::complete_second_factor`, what `POST /login/2fa` calls: the code
//! and IP throttle reads, the factor read, opening the sealed secret, the code check, the
//! write of its time step (a step is never accepted twice: the replay guard), the half
//! session replaced by a full one, the login bookkeeping and the audit event. HTTP, the form
//! and the CSRF check are not in it: compare with the login benchmark for their cost.
//!
//! A time step works once per user, so the benchmark enrols U users through the real flow
//! (login, password re-check, confirmation with a first code) and runs on a manual clock:
//! each pass moves it 30 s on, gives every user a half session (written straight to the
//! store, outside the measured time) and then, measured, completes all of them with their
//! current code on T concurrent tasks. Passes repeat until N measured seconds are reached;
//! the figure is the median of R such rounds.
//!
//! Speed is never a timed test: this is a separate command; see docs/benchmarks.md.

use bulwark_core::token;
use bulwark_core::totp::{self, TotpParams, TotpSecret};
use bulwark_server::app::App;
use bulwark_server::clock::{Clock, ManualClock, SystemClock};
use bulwark_server::services::auth::CurrentSession;
use bulwark_server::services::ClientInfo;
use bulwark_store::{NewSession, SessionStage};
use clap::Parser;
use setup::{median, Summary};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/setup.rs"]
mod setup;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const PASSWORD: &str = "Benchmark-Totp-Password-2026";
const PERIOD: i64 = 30;

/// TOTP second-factor steps per second through the two-factor service.
#[derive(Debug, Parser)]
#[command(name = "bench_totp")]
struct Args {
    /// Measured seconds per round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Users with an authenticator (each completes one step per pass).
    #[arg(long, default_value_t = 64)]
    users: usize,
    /// Concurrent tasks completing steps.
    #[arg(long, default_value_t = 8)]
    tasks: usize,
    /// The store: sqlite (a temporary file) or postgres (a fresh database on the server named
    /// by TEST_POSTGRES_URL).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    store: String,
    /// Append `key=value` results to this file (read by scripts/bench).
    #[arg(long)]
    summary: Option<PathBuf>,
}

fn main() -> ExitCode {
    setup::exit_code(run(Args::parse()))
}

fn client() -> ClientInfo {
    ClientInfo {
        ip: "203.0.113.7".parse().ok(),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0".into()),
    }
}

struct Enrolled {
    user: bulwark_store::UserRecord,
    secret: TotpSecret,
}

fn run(args: Args) -> Res<()> {
    if args.users == 0 || args.tasks == 0 || args.rounds == 0 {
        return Err("--users, --tasks and --rounds must be at least 1".into());
    }
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let file = setup::write_config(tmp.path(), 5)?;
    let app = rt.block_on(setup::build_app(
        tmp.path(),
        &file,
        args.store == "postgres",
        clock.clone(),
    ))?;
    println!("Bulwark TOTP benchmark");
    println!(
        "  {} users with an authenticator, {} concurrent tasks, {} round(s) of {} s, store {}",
        args.users, args.tasks, args.rounds, args.seconds, args.store
    );
    print!("  enrolling ... ");
    let started = Instant::now();
    let users = rt.block_on(enrol(&app, args.users))?;
    println!("{:.1} s", started.elapsed().as_secs_f64());

    let users = Arc::new(users);
    let mut rates = Vec::new();
    for round in 1..=args.rounds {
        let mut done = 0u64;
        let mut busy = Duration::ZERO;
        while busy < Duration::from_secs(args.seconds) {
            clock.advance(PERIOD);
            let (n, took) = rt.block_on(pass(&app, &users, args.tasks))?;
            done += n;
            busy += took;
        }
        let rate = done as f64 / busy.as_secs_f64();
        println!(
            "  round {round}: {rate:>8.0} steps/s ({done} in {:.2} s)",
            busy.as_secs_f64()
        );
        rates.push(rate);
    }
    let rate = median(&rates);
    println!(
        "Result: {rate:.0} TOTP second-factor steps/s (median of {} rounds)",
        args.rounds
    );
    let mut summary = Summary::open(args.summary.as_deref())?;
    summary.put("totp.rate", format!("{rate:.0}"))?;
    summary.put("totp.users", args.users)?;
    summary.put("totp.tasks", args.tasks)?;
    summary.put("totp.store", &args.store)?;
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// Enrols `n` users through the service: login, enrolment with the password, confirmation.
/// As many at once as there are hashing threads, so that none waits long enough in the
/// hashing queue to be turned away as an overload (`passwords.max_queued_hashes`).
async fn enrol(app: &App, n: usize) -> Res<Vec<Enrolled>> {
    let at_once = Arc::new(tokio::sync::Semaphore::new(
        app.config.passwords.max_concurrent_hashes.max(1),
    ));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let app = app.clone();
            let at_once = at_once.clone();
            tokio::spawn(async move {
                let _turn = at_once.acquire().await?;
                enrol_one(&app, &format!("totp{i}")).await
            })
        })
        .collect();
    let mut users = Vec::with_capacity(n);
    for t in tasks {
        users.push(t.await??);
    }
    Ok(users)
}

async fn enrol_one(app: &App, login: &str) -> Res<Enrolled> {
    setup::add_user(app, login, PASSWORD).await?;
    let done = app.login(login, PASSWORD.into(), &client(), None).await?;
    let current = app
        .authenticate(done.token.expose())
        .await?
        .ok_or("a fresh session did not authenticate")?;
    app.begin_enrolment(&current, PASSWORD.into(), &client())
        .await?;
    let view = app
        .pending_enrolment(&current.user)
        .await?
        .ok_or("no pending enrolment")?;
    let grouped: String = view
        .secret_grouped
        .expose()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let secret = TotpSecret::from_base32(&grouped).map_err(|e| e.to_string())?;
    let code = code_now(app, &secret);
    app.confirm_enrolment(&current, &code, &client()).await?;
    Ok(Enrolled {
        user: current.user.clone(),
        secret,
    })
}

fn code_now(app: &App, secret: &TotpSecret) -> String {
    let params = TotpParams::default();
    totp::generate(secret, &params, totp::time_step(app.now(), params.period))
}

/// One pass: a half session per user (not measured), then every user's step (measured).
async fn pass(app: &App, users: &Arc<Vec<Enrolled>>, tasks: usize) -> Res<(u64, Duration)> {
    let now = app.now();
    let mut pending: Vec<(CurrentSession, String)> = Vec::with_capacity(users.len());
    for u in users.iter() {
        let (cookie, hash) = token::generate();
        app.store
            .insert_session(&NewSession {
                token_hash: hash,
                user: u.user.id,
                stage: SessionStage::SecondFactor,
                two_factor: false,
                created_at: now,
                ip: Some("203.0.113.7".into()),
                user_agent: client().user_agent,
            })
            .await?;
        let current = app
            .authenticate(cookie.expose())
            .await?
            .ok_or("a half session did not authenticate")?;
        pending.push((current, code_now(app, &u.secret)));
    }
    let chunk = pending.len().div_ceil(tasks);
    let mut work: Vec<Vec<(CurrentSession, String)>> = Vec::new();
    while !pending.is_empty() {
        let rest = pending.split_off(chunk.min(pending.len()));
        work.push(std::mem::replace(&mut pending, rest));
    }
    let started = Instant::now();
    let handles: Vec<_> = work
        .into_iter()
        .map(|batch| {
            let app = app.clone();
            tokio::spawn(async move {
                let client = client();
                let mut n = 0u64;
                for (current, code) in batch {
                    app.complete_second_factor(&current, &code, false, &client)
                        .await
                        .map_err(|e| format!("a right code was refused: {e}"))?;
                    n += 1;
                }
                Ok::<u64, BoxError>(n)
            })
        })
        .collect();
    let mut done = 0;
    for h in handles {
        done += h.await??;
    }
    Ok((done, started.elapsed()))
}
