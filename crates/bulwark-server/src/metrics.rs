//! Prometheus metrics, in the text exposition format at `/metrics`.
//!
//! Counters live in memory (per node; Prometheus sums nodes). Most come from one place: every
//! audit event passes through [`Metrics::record_event`], which counts logins by outcome and
//! reason, second-factor outcomes, lockouts, and every event by name. The gateway counts its
//! decisions with atomics (no lock on the check path); the hashing threads feed a latency
//! histogram. Gauges that need the database (mail queue, 2FA coverage per group) are read when
//! Prometheus scrapes; the coverage, which walks every user, at most once a minute.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Login reasons reported as labels; any other detail is counted as `other`, so a label can
/// never carry user input.
const LOGIN_REASONS: [&str; 11] = [
    "wrong password",
    "unknown user",
    "account disabled",
    "no password set",
    "throttled",
    "device account outside its networks",
    "password",
    "trusted device",
    "totp",
    "recovery code",
    "e-mailed code",
];

/// A histogram with fixed buckets (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// What the gateway answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayDecision {
    Allowed,
    /// No (good enough) credentials: sent to the portal.
    Unauthenticated,
    Forbidden,
    Error,
}

const DECISIONS: [(GatewayDecision, &str); 4] = [
    (GatewayDecision::Allowed, "allowed"),
    (GatewayDecision::Unauthenticated, "unauthenticated"),
    (GatewayDecision::Forbidden, "forbidden"),
    (GatewayDecision::Error, "error"),
];

/// Coverage of one group, as last computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCoverage {
    pub group: String,
    pub active: u64,
    pub with_two_factor: u64,
    pub exempt: u64,
}

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// (metric, first label, second label) -> count. Labels are `'static` strings chosen by
    /// the code, or event names (also fixed by the code).
    counters: Mutex<BTreeMap<(&'static str, String, &'static str), u64>>,
    gateway: [AtomicU64; 4],
    pub password_hashing: Histogram,
    /// Hash jobs turned away because the queue was full or waited too long.
    pub hash_rejected: AtomicU64,
    pub mail_sent: AtomicU64,
    pub mail_failures: AtomicU64,
    /// Audit events the store failed to write (the action they record went ahead).
    pub audit_failures: AtomicU64,
    /// (computed at, coverage per group).
    coverage: Mutex<Option<(std::time::Instant, Vec<GroupCoverage>)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            counters: Mutex::new(BTreeMap::new()),
            gateway: Default::default(),
            password_hashing: Histogram::new(&[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            hash_rejected: AtomicU64::new(0),
            mail_sent: AtomicU64::new(0),
            mail_failures: AtomicU64::new(0),
            audit_failures: AtomicU64::new(0),
            coverage: Mutex::new(None),
        }
    }
}

fn static_outcome(outcome: &str) -> &'static str {
    match outcome {
        "success" => "success",
        "failure" => "failure",
        "denied" => "denied",
        _ => "other",
    }
}

impl Metrics {
    fn add(&self, metric: &'static str, label: String, second: &'static str) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *counters.entry((metric, label, second)).or_insert(0) += 1;
    }

    /// Counts one audit event.
    pub fn record_event(&self, event: &str, outcome: &str, detail: Option<&str>) {
        let outcome = static_outcome(outcome);
        self.add("bulwark_audit_events_total", event.to_string(), outcome);
        match event {
            "login" => {
                let reason = detail
                    .and_then(|d| LOGIN_REASONS.iter().find(|r| **r == d))
                    .copied()
                    .unwrap_or(if detail.is_some() { "other" } else { "none" });
                self.add("bulwark_logins_total", outcome.to_string(), reason);
            }
            "second_factor" => {
                self.add("bulwark_second_factor_total", outcome.to_string(), "");
            }
            "account_locked" => self.add("bulwark_lockouts_total", "account".into(), ""),
            "ip_locked" => self.add("bulwark_lockouts_total", "ip".into(), ""),
            "code_entry_locked" => self.add("bulwark_lockouts_total", "code".into(), ""),
            _ => {}
        }
    }

    /// Counts one gateway answer (lock-free).
    pub fn record_gateway(&self, decision: GatewayDecision) {
        if let Some(i) = DECISIONS.iter().position(|(d, _)| *d == decision) {
            self.gateway[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The cached coverage if it is younger than `max_age`.
    pub fn cached_coverage(&self, max_age: Duration) -> Option<Vec<GroupCoverage>> {
        let cache = self.coverage.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .as_ref()
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, c)| c.clone())
    }

    pub fn store_coverage(&self, coverage: Vec<GroupCoverage>) {
        let mut cache = self.coverage.lock().unwrap_or_else(|e| e.into_inner());
        *cache = Some((std::time::Instant::now(), coverage));
    }

    /// The exposition text, with the gauges read from the database by the caller.
    pub fn render(
        &self,
        mail_queued: u64,
        mail_retrying: u64,
        coverage: &[GroupCoverage],
    ) -> String {
        let mut out = String::with_capacity(4096);
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let family = |out: &mut String, metric: &str, help: &str, labels: (&str, &str)| {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for ((m, first, second), n) in &counters {
                if *m != metric {
                    continue;
                }
                let _ = if labels.1.is_empty() {
                    writeln!(out, "{metric}{{{}=\"{}\"}} {n}", labels.0, escape(first))
                } else {
                    writeln!(
                        out,
                        "{metric}{{{}=\"{}\",{}=\"{}\"}} {n}",
                        labels.0,
                        escape(first),
                        labels.1,
                        escape(second)
                    )
                };
            }
        };
        family(
            &mut out,
            "bulwark_logins_total",
            "Login attempts by outcome and reason (for successes: how the login was completed).",
            ("outcome", "reason"),
        );
        family(
            &mut out,
            "bulwark_second_factor_total",
            "Wrong or reused codes at the second step (successes are logins with reason totp, recovery code or e-mailed code).",
            ("outcome", ""),
        );
        family(
            &mut out,
            "bulwark_lockouts_total",
            "Locks started after repeated failures, by what was locked.",
            ("kind", ""),
        );
        family(
            &mut out,
            "bulwark_audit_events_total",
            "Audit events of this node, by event and outcome (any the database failed to store included: see bulwark_audit_write_failures_total).",
            ("event", "outcome"),
        );
        let _ = writeln!(
            out,
            "# HELP bulwark_gateway_decisions_total Forward-auth answers by decision.\n# TYPE bulwark_gateway_decisions_total counter"
        );
        for ((_, name), n) in DECISIONS.iter().zip(&self.gateway) {
            let _ = writeln!(
                out,
                "bulwark_gateway_decisions_total{{decision=\"{name}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        self.password_hashing.render(
            &mut out,
            "bulwark_password_hash_seconds",
            "Time from asking for a password hash or verification to its result, queueing included.",
        );
        let _ = writeln!(
            out,
            "# HELP bulwark_password_hash_rejected_total Password checks answered 503 because too many were waiting for a hashing thread.\n# TYPE bulwark_password_hash_rejected_total counter\nbulwark_password_hash_rejected_total {}",
            self.hash_rejected.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bulwark_audit_write_failures_total Audit events this node failed to write to the audit log (the action went ahead; the error is logged).\n# TYPE bulwark_audit_write_failures_total counter\nbulwark_audit_write_failures_total {}",
            self.audit_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bulwark_mail_sent_total Mails delivered by this node.\n# TYPE bulwark_mail_sent_total counter\nbulwark_mail_sent_total {}",
            self.mail_sent.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bulwark_mail_failures_total Failed delivery attempts by this node.\n# TYPE bulwark_mail_failures_total counter\nbulwark_mail_failures_total {}",
            self.mail_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bulwark_mail_queue Mails waiting in the queue (all nodes).\n# TYPE bulwark_mail_queue gauge\nbulwark_mail_queue {mail_queued}"
        );
        let _ = writeln!(
            out,
            "# HELP bulwark_mail_queue_retrying Queued mails that failed at least once.\n# TYPE bulwark_mail_queue_retrying gauge\nbulwark_mail_queue_retrying {mail_retrying}"
        );
        for (metric, help, value) in [
            (
                "bulwark_group_active_users",
                "Active users per group.",
                (|c: &GroupCoverage| c.active) as fn(&GroupCoverage) -> u64,
            ),
            (
                "bulwark_group_two_factor_users",
                "Active users per group with a confirmed authenticator.",
                |c: &GroupCoverage| c.with_two_factor,
            ),
            (
                "bulwark_group_exempt_users",
                "Active device accounts per group (exempt from two-factor).",
                |c: &GroupCoverage| c.exempt,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
            for c in coverage {
                let _ = writeln!(
                    out,
                    "{metric}{{group=\"{}\"}} {}",
                    escape(&c.group),
                    value(c)
                );
            }
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]
    use super::*;

    #[test]
    fn login_reasons_never_carry_free_text() {
        let m = Metrics::default();
        m.record_event("login", "failure", Some("wrong password"));
        m.record_event("login", "failure", Some("wrong password"));
        m.record_event("login", "failure", Some("alice\"}\n evil 1"));
        m.record_event("login", "success", Some("totp"));
        m.record_event("account_locked", "success", None);
        m.record_gateway(GatewayDecision::Allowed);
        m.password_hashing.observe(Duration::from_millis(40));
        let text = m.render(3, 1, &[]);
        assert!(
            text.contains("bulwark_logins_total{outcome=\"failure\",reason=\"wrong password\"} 2"),
            "{text}"
        );
        assert!(text.contains("bulwark_logins_total{outcome=\"failure\",reason=\"other\"} 1"));
        assert!(!text.contains("evil"));
        assert!(text.contains("bulwark_logins_total{outcome=\"success\",reason=\"totp\"} 1"));
        assert!(text.contains("bulwark_lockouts_total{kind=\"account\"} 1"));
        assert!(text.contains("bulwark_gateway_decisions_total{decision=\"allowed\"} 1"));
        assert!(text.contains("bulwark_password_hash_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("bulwark_password_hash_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("bulwark_mail_queue 3\n"));
    }
}
