//! Session lifetime rules: idle and absolute timeouts.
//!
//! A session is created at login with a fresh random id (the old pre-login id is never
//! promoted). It stays live while `now - last_seen < idle` and `now - created < absolute`.
//! `last_seen` is written back at most once per [`SessionPolicy::TOUCH_EVERY`] seconds so a
//! busy user does not cost a database write per request.

use crate::UnixTime;

/// Timeouts for interactive sessions, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Ends a session nobody used for this long.
    pub idle_secs: i64,
    /// Ends every session this long after login, used or not.
    pub absolute_secs: i64,
}

impl SessionPolicy {
    /// Granularity of `last_seen` updates.
    pub const TOUCH_EVERY: i64 = 60;

    /// Whether a session created at `created_at` and last used at `last_seen` is still valid.
    pub fn is_live(&self, created_at: UnixTime, last_seen: UnixTime, now: UnixTime) -> bool {
        now - last_seen < self.idle_secs && now - created_at < self.absolute_secs
    }

    /// Whether `last_seen` is stale enough to be written back.
    pub fn touch_due(&self, last_seen: UnixTime, now: UnixTime) -> bool {
        now - last_seen >= Self::TOUCH_EVERY
    }

    /// When the session ends if not used again.
    pub fn expires_at(&self, created_at: UnixTime, last_seen: UnixTime) -> UnixTime {
        (last_seen + self.idle_secs).min(created_at + self.absolute_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: SessionPolicy = SessionPolicy {
        idle_secs: 1800,
        absolute_secs: 43200,
    };

    #[test]
    fn idle_timeout_ends_session() {
        assert!(P.is_live(0, 0, 1799));
        assert!(!P.is_live(0, 0, 1800));
    }

    #[test]
    fn absolute_timeout_ends_busy_session() {
        assert!(P.is_live(0, 43000, 43199));
        assert!(!P.is_live(0, 43199, 43200));
        assert_eq!(P.expires_at(0, 43000), 43200);
    }

    #[test]
    fn touch_is_rate_limited() {
        assert!(!P.touch_due(100, 159));
        assert!(P.touch_due(100, 160));
    }
}
