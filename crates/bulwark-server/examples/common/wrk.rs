//! Debian's `wrk` as the load generator: a separate process, so the client's parsing and
//! bookkeeping are not charged to the server's process (they still share the machine's cores).
//!
//! wrk counts only 4xx and 5xx answers as errors ("Non-2xx or 3xx responses"): a redirect to a
//! login page would pass as success, so callers check a target answers 200 before and after.

#![allow(dead_code, reason = "each benchmark uses only some of these helpers")]

use std::path::{Path, PathBuf};
use std::process::Command;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// One wrk run, as it reports it.
#[derive(Debug, Clone, Default)]
pub struct WrkRun {
    pub rate: f64,
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// 4xx/5xx answers plus socket errors.
    pub errors: u64,
    pub error_text: Option<String>,
}

/// The wrk binary and its thread count.
#[derive(Debug, Clone)]
pub struct Wrk {
    bin: PathBuf,
    threads: usize,
}

impl Wrk {
    /// wrk from `PATH`, if installed (Debian package `wrk`).
    pub fn find(threads: usize) -> Option<Self> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("wrk"))
            .find(|p| p.is_file())
            .map(|bin| Self {
                bin,
                threads: threads.max(1),
            })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Loads `url` with `connections` keep-alive connections for `seconds`, sending `headers`
    /// (a `Host` among them replaces wrk's); `script` is a wrk Lua script (e.g. a `delay`).
    pub fn run(
        &self,
        url: &str,
        headers: &[(String, String)],
        connections: usize,
        seconds: u64,
        script: Option<&Path>,
    ) -> Res<WrkRun> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--latency")
            .arg(format!("-t{}", self.threads.min(connections.max(1))))
            .arg(format!("-c{}", connections.max(1)))
            .arg(format!("-d{}s", seconds.max(1)))
            .arg("--timeout")
            .arg("5s");
        for (name, value) in headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        if let Some(s) = script {
            cmd.arg("-s").arg(s);
        }
        cmd.arg(url);
        let out = cmd.output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "wrk failed ({}): {}{}",
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        parse(&text).ok_or_else(|| format!("cannot read wrk's report:\n{text}").into())
    }
}

/// Reads the parts of wrk's `--latency` report the benchmarks use.
fn parse(text: &str) -> Option<WrkRun> {
    let mut run = WrkRun::default();
    let mut rate = None;
    let mut errors = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rate = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            run.p50_ms = duration_ms(v.trim())?;
        } else if let Some(v) = line.strip_prefix("99%") {
            run.p99_ms = duration_ms(v.trim())?;
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            run.requests = n.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += v.trim().parse::<u64>().ok()?;
            errors.push(line.to_string());
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            let n: u64 = v
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
            if n > 0 {
                run.errors += n;
                errors.push(line.to_string());
            }
        }
    }
    run.rate = rate?;
    if !errors.is_empty() {
        run.error_text = Some(errors.join("; "));
    }
    Some(run)
}

/// `812.00us`, `1.23ms`, `2.01s` → milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(n / 1000.0),
        "ms" => Some(n),
        "s" => Some(n * 1000.0),
        "m" => Some(n * 60_000.0),
        _ => None,
    }
}

/// A wrk script that waits `delay_ms` after each answer before a connection sends its next
/// request: with C connections the offered load is about C / (delay + latency) requests per
/// second (wrk2's constant rate is not in Debian).
pub fn pacing_script(dir: &Path, delay_ms: u64) -> Res<PathBuf> {
    let path = dir.join(format!("pace-{delay_ms}ms.lua"));
    std::fs::write(
        &path,
        format!("function delay()\n  return {delay_ms}\nend\n"),
    )?;
    Ok(path)
}
