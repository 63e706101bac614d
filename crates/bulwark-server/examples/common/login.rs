//! Browser-like password logins for the benchmarks: each client fetches the login form once
//! (CSRF cookie and token), then posts the right password again and again on one keep-alive
//! connection. Used by bench_login (logins against raw Argon2id) and bench_gateway (the login
//! flood while the gateway is loaded).

#![allow(dead_code, reason = "bench_gateway uses the clients, not every helper")]

use super::http::{Conn, Response};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const USER_AGENT: &str = "bulwark-bench-login/1";

/// Start and end of the measured window of one phase.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn after_warmup(warmup: Duration, measured: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + measured,
        }
    }

    pub fn contains(&self, t: Instant) -> bool {
        t >= self.start && t <= self.end
    }

    pub fn seconds(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }
}

/// What the clients of one phase achieved.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub ok: u64,
    /// Where successful logins were sent, and how often.
    pub landings: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub latencies: Vec<Duration>,
    pub window_secs: f64,
}

impl HttpStats {
    pub fn merge(&mut self, other: HttpStats) {
        self.ok += other.ok;
        self.window_secs += other.window_secs;
        self.latencies.extend(other.latencies);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.landings {
            *self.landings.entry(k).or_default() += v;
        }
    }
}

/// `clients` browsers logging in as `login` until the window ends.
pub async fn http_phase(
    addr: SocketAddr,
    login: String,
    password: String,
    clients: usize,
    window: Window,
) -> Res<HttpStats> {
    let login = Arc::new(login);
    let password = Arc::new(password);
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(addr, login.clone(), password.clone(), window)))
        .collect();
    let mut total = HttpStats {
        window_secs: window.seconds(),
        ..Default::default()
    };
    for t in tasks {
        let mut s = t.await??;
        s.window_secs = 0.0;
        total.merge(s);
    }
    Ok(total)
}

/// One browser: fetches the login form once, then logs in again and again on a keep-alive
/// connection until the window ends.
async fn client(
    addr: SocketAddr,
    login: Arc<String>,
    password: Arc<String>,
    window: Window,
) -> Res<HttpStats> {
    let mut stats = HttpStats::default();
    let mut conn = Conn::open(addr).await?;
    let get = format!(
        "GET /login HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {USER_AGENT}\r\nAccept: text/html\r\n\r\n"
    );
    let form = conn.exchange(get.as_bytes()).await?;
    if form.status != 200 {
        return Err(format!("GET /login answered {}", form.status).into());
    }
    let cookie = form
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next())
        .find(|pair| {
            pair.split_once('=')
                .is_some_and(|(name, _)| name.ends_with("bulwark_csrf"))
        })
        .ok_or("GET /login set no CSRF cookie")?
        .to_string();
    let html = String::from_utf8_lossy(&form.body);
    let marker = "name=\"csrf_token\" value=\"";
    let token = html
        .split_once(marker)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(token, _)| token.to_string())
        .ok_or("no csrf_token in the login form")?;

    let body = format!(
        "csrf_token={}&login={}&password={}",
        url_encode(&token),
        url_encode(&login),
        url_encode(&password)
    );
    let post = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {USER_AGENT}\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    while Instant::now() < window.end {
        let started = Instant::now();
        let outcome = conn.exchange(post.as_bytes()).await;
        let done = Instant::now();
        let error = match outcome {
            Ok(res) => {
                let location = res.header("location").unwrap_or("");
                if res.status == 303 && logged_in(&res, location) {
                    if window.contains(done) {
                        stats.ok += 1;
                        stats.latencies.push(done - started);
                        *stats.landings.entry(location.to_string()).or_default() += 1;
                    }
                    None
                } else {
                    Some(format!("HTTP {} (Location: {location:?})", res.status))
                }
            }
            Err(e) => {
                conn = Conn::open(addr).await?;
                Some(format!("connection: {e}"))
            }
        };
        if let Some(e) = error {
            *stats.errors.entry(e).or_default() += 1;
        }
    }
    Ok(stats)
}

/// A completed login: a new session cookie and a redirect into the site, not to another
/// login step (such as `/login/2fa`, which this benchmark's user never needs).
fn logged_in(res: &Response, location: &str) -> bool {
    let session = res
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next()?.split_once('='))
        .any(|(name, value)| name.ends_with("bulwark_session") && !value.is_empty());
    session && location.starts_with('/') && !location.starts_with("/login")
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
