//! The only place the server reads the time; tests substitute a manual clock.

use bulwark_core::UnixTime;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now(&self) -> UnixTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to: for tests of expiry and lockout.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Starts at `now`.
    pub fn new(now: UnixTime) -> Self {
        Self(AtomicI64::new(now))
    }

    /// Moves the clock forward by `secs`.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

/// Formats a Unix time for people: `2026-11-23 19:02 UTC`.
pub fn format_time(t: UnixTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|dt| dt.format(&format).ok())
        .unwrap_or_else(|| t.to_string())
}

/// Formats a Unix time for machines (ISO 8601, UTC): `2026-11-23T19:02:05Z`.
pub fn format_iso(t: UnixTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|dt| dt.format(&format).ok())
        .unwrap_or_else(|| t.to_string())
}

/// Reads a time given by a person or a form: `2026-11-23` (midnight UTC),
/// `2026-11-23T19:02` / `2026-11-23 19:02` / `…:05` (UTC, an optional trailing `Z`), or Unix
/// seconds. `None` when it is none of these.
pub fn parse_time(text: &str) -> Option<UnixTime> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return Some(secs);
    }
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, clock) = match text.split_once(['T', ' ']) {
        Some((d, c)) => (d, Some(c)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    let (hour, minute, second) = match clock {
        None => (0, 0, 0),
        Some(c) => {
            let mut parts = c.splitn(3, ':');
            let h: u8 = parts.next()?.parse().ok()?;
            let m: u8 = parts.next()?.parse().ok()?;
            let s: u8 = match parts.next() {
                Some(s) => s.parse().ok()?,
                None => 0,
            };
            (h, m, s)
        }
    };
    let t = time::Time::from_hms(hour, minute, second).ok()?;
    Some(date.with_time(t).assume_utc().unix_timestamp())
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
    fn times_are_read_in_every_documented_form() {
        let day = 1_795_392_000; // 2026-11-23 00:00 UTC
        assert_eq!(parse_time("2026-11-23"), Some(day));
        assert_eq!(parse_time(" 2026-11-23 "), Some(day));
        assert_eq!(parse_time("2026-11-23T19:02"), Some(day + 19 * 3600 + 120));
        assert_eq!(
            parse_time("2026-11-23 19:02:05Z"),
            Some(day + 19 * 3600 + 125)
        );
        assert_eq!(parse_time("1795392000"), Some(day));
        assert_eq!(format_time(day), "2026-11-23 00:00 UTC");
        assert_eq!(format_iso(day + 125), "2026-11-23T00:02:05Z");
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2026-11-23T25:00",
            "2026-11",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
