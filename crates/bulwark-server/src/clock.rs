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
    let mut out = String::with_capacity(20);
    write_iso(&mut out, t);
    out
}

/// Appends [`format_iso`]'s text to `out` (for exports of many rows: no allocation).
pub fn write_iso(out: &mut String, t: UnixTime) {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(dt) if (0..=9999).contains(&dt.year()) => {
            // Digit by digit: `write!` costs several times more, a million times per export.
            push_digits(out, dt.year().unsigned_abs(), 4);
            out.push('-');
            push_digits(out, u32::from(u8::from(dt.month())), 2);
            out.push('-');
            push_digits(out, u32::from(dt.day()), 2);
            out.push('T');
            push_digits(out, u32::from(dt.hour()), 2);
            out.push(':');
            push_digits(out, u32::from(dt.minute()), 2);
            out.push(':');
            push_digits(out, u32::from(dt.second()), 2);
            out.push('Z');
        }
        _ => {
            let format =
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
            let text = time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|dt| dt.format(&format).ok())
                .unwrap_or_else(|| t.to_string());
            out.push_str(&text);
        }
    }
}

/// Appends the last `width` decimal digits of `n`, zero-padded.
fn push_digits(out: &mut String, n: u32, width: u32) {
    for place in (0..width).rev() {
        let digit = (n / 10u32.pow(place)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
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
    fn iso_times_match_the_time_crate_everywhere() {
        let format =
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
        let reference = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|dt| dt.format(&format).ok())
                .unwrap_or_else(|| t.to_string())
        };
        let mut t = -62_167_219_300; // before year 0
        while t < 253_402_400_000 {
            // past year 9999
            assert_eq!(format_iso(t), reference(t), "{t}");
            t += 86_400 * 13 + 3_607;
        }
        // Every day of three centuries, at a different second of each.
        for day in -25_567..84_000_i64 {
            let t = day * 86_400 + (day * 7_919).rem_euclid(86_400);
            assert_eq!(format_iso(t), reference(t), "{t}");
        }
        for t in [
            0,
            1_795_392_000,
            951_782_400,
            i64::MIN,
            i64::MAX,
            -1,
            -62_167_219_200,
            -62_167_219_201,
            253_402_300_799,
            253_402_300_800,
        ] {
            assert_eq!(format_iso(t), reference(t), "{t}");
        }
        assert_eq!(format_iso(1_795_460_525), "2026-11-23T19:02:05Z");
    }

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
