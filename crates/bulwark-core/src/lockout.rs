//! Login throttling: escalating delay, then a temporary lock.
//!
//! A counter exists per key (an account login, or a client IP). The store increments it
//! atomically on each failure, so every node sees the same count; this module only decides
//! what a count means.
//!
//! ```text
//!  failures <= free_attempts          -> Open            (no delay)
//!  free_attempts < failures < lock_after -> Wait 2^(n-1) s  (n = failures - free_attempts, capped)
//!  failures >= lock_after             -> Locked for lock_secs
//!  no failure for window_secs         -> counter starts again from zero
//!  successful login (account key)     -> counter cleared
//! ```
//! While a key is blocked (`blocked_until > now`) attempts are refused with `Retry-After`
//! before any password is checked, and are not counted again.

use crate::UnixTime;
use serde::{Deserialize, Serialize};

/// Thresholds for one kind of key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockoutPolicy {
    /// Failures allowed before any delay.
    pub free_attempts: u32,
    /// Upper bound of one escalating delay, in seconds.
    pub max_delay_secs: i64,
    /// Failures that lock the key.
    pub lock_after: u32,
    /// How long a lock lasts, in seconds.
    pub lock_secs: i64,
    /// Failures older than this many seconds are forgotten.
    pub window_secs: i64,
}

impl LockoutPolicy {
    /// Default for accounts: 3 free attempts, then 1, 2, 4, 8, 16, 30 s, locked 15 min at 10.
    pub const ACCOUNT: Self = Self {
        free_attempts: 3,
        max_delay_secs: 30,
        lock_after: 10,
        lock_secs: 15 * 60,
        window_secs: 15 * 60,
    };

    /// Default for second-factor codes: 5 wrong codes an hour lock code entry for an hour, so
    /// guessing a 6-digit code (3 valid of 10^6 at a time) would take centuries.
    pub const CODE: Self = Self {
        free_attempts: 3,
        max_delay_secs: 30,
        lock_after: 5,
        lock_secs: 60 * 60,
        window_secs: 60 * 60,
    };

    /// Default for client IPs: generous for offices behind one NAT, still stops spraying.
    pub const IP: Self = Self {
        free_attempts: 20,
        max_delay_secs: 30,
        lock_after: 100,
        lock_secs: 15 * 60,
        window_secs: 15 * 60,
    };

    /// How long the key is blocked after reaching `failures`, if at all.
    pub fn block_after(&self, failures: u32) -> Option<Block> {
        if failures >= self.lock_after {
            return Some(Block {
                secs: self.lock_secs,
                locked: true,
            });
        }
        if failures <= self.free_attempts {
            return None;
        }
        let n = failures - self.free_attempts - 1;
        let delay = 1i64.checked_shl(n.min(62)).unwrap_or(i64::MAX);
        Some(Block {
            secs: delay.min(self.max_delay_secs),
            locked: false,
        })
    }

    /// Whether an attempt may proceed now, given when the key is blocked until.
    pub fn gate(&self, blocked_until: UnixTime, failures: u32, now: UnixTime) -> Gate {
        if blocked_until > now {
            let retry_after = blocked_until - now;
            if failures >= self.lock_after {
                Gate::Locked { retry_after }
            } else {
                Gate::Wait { retry_after }
            }
        } else {
            Gate::Open
        }
    }

    /// Checks the values make sense; the error names the field.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.lock_after == 0 || self.lock_after <= self.free_attempts {
            return Err("lock_after must be greater than free_attempts");
        }
        if self.lock_secs <= 0 || self.window_secs <= 0 || self.max_delay_secs <= 0 {
            return Err("lock_secs, window_secs and max_delay_secs must be positive");
        }
        Ok(())
    }
}

/// A block imposed after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Seconds from now.
    pub secs: i64,
    /// True for a lock (reported to the user and audited), false for a short delay.
    pub locked: bool,
}

/// The decision for one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Check the credentials.
    Open,
    /// Too fast: come back in `retry_after` seconds.
    Wait { retry_after: i64 },
    /// Locked after too many failures.
    Locked { retry_after: i64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: LockoutPolicy = LockoutPolicy::ACCOUNT;

    #[test]
    fn delays_escalate_then_lock() {
        let blocks: Vec<_> = (1..=10).map(|f| P.block_after(f)).collect();
        assert_eq!(blocks[0..3], [None, None, None]);
        let secs: Vec<i64> = blocks[3..9].iter().map(|b| b.unwrap().secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30]);
        assert_eq!(
            blocks[9],
            Some(Block {
                secs: 900,
                locked: true
            })
        );
        assert_eq!(
            P.block_after(1000),
            Some(Block {
                secs: 900,
                locked: true
            })
        );
    }

    #[test]
    fn gate_reports_retry_after() {
        assert_eq!(P.gate(0, 0, 100), Gate::Open);
        assert_eq!(P.gate(105, 5, 100), Gate::Wait { retry_after: 5 });
        assert_eq!(P.gate(1000, 10, 100), Gate::Locked { retry_after: 900 });
        assert_eq!(P.gate(1000, 10, 1000), Gate::Open);
    }

    #[test]
    fn validate_rejects_nonsense() {
        let mut p = P;
        p.lock_after = 2;
        assert!(p.validate().is_err());
        assert!(P.validate().is_ok());
        assert!(LockoutPolicy::IP.validate().is_ok());
        assert!(LockoutPolicy::CODE.validate().is_ok());
    }
}
