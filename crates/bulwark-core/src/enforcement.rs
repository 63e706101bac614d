//! Two-factor enforcement with a grace period.
//!
//! A user is *under enforcement* when one of their groups requires 2FA (admins always do).
//! Device accounts are exempt (they are bound to networks instead, checked by the caller).
//!
//! ```text
//!  not under enforcement ---------------------------------> Optional (may enrol)
//!  under enforcement, has an active factor ---------------> Satisfied (ask for the factor)
//!  under enforcement, no factor, now < grace start + days -> Grace { deadline } (asked to enrol at
//!                                                            every login, may postpone)
//!  under enforcement, no factor, grace over --------------> EnrolmentRequired (only the enrolment
//!                                                            page is reachable)
//! ```
//! The grace period starts the first time the user logs in while under enforcement (the
//! caller stores that time once), so a policy switched on today gives everyone the full period.

use crate::UnixTime;

/// Where a user stands with respect to 2FA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// 2FA is not required for this user; they may still enrol.
    Optional,
    /// Device account: no second factor, bound to its networks.
    Exempt,
    /// Required and the user has an active factor.
    Satisfied,
    /// Required, not enrolled, still inside the grace period.
    Grace { deadline: UnixTime },
    /// Required, not enrolled, grace over: only enrolment is allowed.
    EnrolmentRequired,
}

/// Decides a user's standing at `now`.
pub fn standing(
    required: bool,
    device_account: bool,
    has_factor: bool,
    grace_started_at: Option<UnixTime>,
    grace_days: u32,
    now: UnixTime,
) -> Standing {
    if device_account {
        return Standing::Exempt;
    }
    if !required {
        return Standing::Optional;
    }
    if has_factor {
        return Standing::Satisfied;
    }
    let deadline = grace_deadline(grace_started_at.unwrap_or(now), grace_days);
    if now < deadline {
        Standing::Grace { deadline }
    } else {
        Standing::EnrolmentRequired
    }
}

/// Whether a member of `groups` is under enforcement: one of them is among `required_groups`.
pub fn required_for<S: AsRef<str>>(required_groups: &[String], groups: &[S]) -> bool {
    groups
        .iter()
        .any(|g| required_groups.iter().any(|r| r == g.as_ref()))
}

/// When a grace period of `grace_days` that started at `started` ends.
pub fn grace_deadline(started: UnixTime, grace_days: u32) -> UnixTime {
    started.saturating_add(i64::from(grace_days) * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn walk_through_grace() {
        let t0 = 1_800_000_000;
        assert_eq!(
            standing(false, false, false, None, 7, t0),
            Standing::Optional
        );
        assert_eq!(
            standing(true, false, false, None, 7, t0),
            Standing::Grace {
                deadline: t0 + 7 * DAY
            }
        );
        assert_eq!(
            standing(true, false, false, Some(t0), 7, t0 + 7 * DAY - 1),
            Standing::Grace {
                deadline: t0 + 7 * DAY
            }
        );
        assert_eq!(
            standing(true, false, false, Some(t0), 7, t0 + 7 * DAY),
            Standing::EnrolmentRequired
        );
        assert_eq!(
            standing(true, false, true, Some(t0), 7, t0 + 70 * DAY),
            Standing::Satisfied
        );
    }

    #[test]
    fn zero_grace_requires_enrolment_at_once() {
        assert_eq!(
            standing(true, false, false, None, 0, 100),
            Standing::EnrolmentRequired
        );
    }

    #[test]
    fn device_accounts_are_exempt() {
        assert_eq!(standing(true, true, false, None, 0, 100), Standing::Exempt);
    }
}
