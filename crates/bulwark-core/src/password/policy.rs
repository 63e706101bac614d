//! Password policy: the static rules checked on every set, change and reset, plus the
//! time rules (expiry, minimum age). History is enforced by the caller, which holds the old
//! hashes; the policy only carries how many to keep.
//!
//! The blocklist (`blocklist.txt`) is the 10,000 most frequent entries of the `passwords`
//! frequency list shipped in the zxcvbn 3.1.1 crate (`src/frequency_lists.rs`, itself from
//! Dropbox's zxcvbn data), lowercased, deduplicated and sorted.

use super::Password;
use crate::UnixTime;
use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

/// Longest `max_length` a policy may set; inputs are capped at 1024 bytes anyway.
pub const MAX_POLICY_LENGTH: usize = 1024;

const BLOCKLIST: &str = include_str!("blocklist.txt");
const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;

/// Which rules a password must satisfy; combine per-group policies with [`PasswordPolicy::strictest`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PasswordPolicy {
    /// Fewest characters (Unicode scalar values, not bytes).
    pub min_length: usize,
    /// Most characters.
    pub max_length: usize,
    /// Fewest lowercase letters (`char::is_lowercase`).
    pub min_lower: usize,
    /// Fewest uppercase letters (`char::is_uppercase`).
    pub min_upper: usize,
    /// Fewest digits (`char::is_numeric`, so other scripts' digits count).
    pub min_digit: usize,
    /// Fewest special characters: anything neither a letter nor a digit (`!char::is_alphanumeric`).
    pub min_special: usize,
    /// Lowest zxcvbn score accepted, 0..=4.
    pub min_score: u8,
    /// Refuse passwords on the embedded list of common passwords.
    pub blocklist: bool,
    /// How many previous passwords may not be reused (checked by the caller).
    pub history: usize,
    /// Days until a password expires; 0 means never.
    pub expiry_days: u32,
    /// Hours before a password may be changed again; 0 means no minimum.
    pub min_age_hours: u32,
}

/// Named starting points: `nist` (NIST SP 800-63B) and `strict` (PCI DSS-style).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Length, strength and blocklist; no composition rules, no expiry.
    Nist,
    /// Adds one of each character class, 90-day expiry and a 24-hour minimum age.
    Strict,
}

/// One rule a password failed; `Display` is the sentence shown to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyViolation {
    TooShort {
        min: usize,
    },
    TooLong {
        max: usize,
    },
    TooFewLower {
        min: usize,
    },
    TooFewUpper {
        min: usize,
    },
    TooFewDigits {
        min: usize,
    },
    TooFewSpecial {
        min: usize,
    },
    TooWeak {
        score: u8,
        min: u8,
    },
    Blocklisted,
    /// The password is the user's login, email or name (or a part of one).
    PersonalInfo,
    Reused {
        history: usize,
    },
    TooSoon {
        seconds: i64,
    },
}

/// A policy setting that cannot work, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("password policy `{field}`: {message}")]
pub struct PolicyConfigError {
    /// The offending field, as spelled in configuration.
    pub field: &'static str,
    /// What is allowed.
    pub message: String,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self::preset(Preset::Nist)
    }
}

impl PasswordPolicy {
    /// The settings of a named preset.
    pub fn preset(p: Preset) -> Self {
        let nist = Self {
            min_length: 12,
            max_length: 128,
            min_lower: 0,
            min_upper: 0,
            min_digit: 0,
            min_special: 0,
            min_score: 3,
            blocklist: true,
            history: 12,
            expiry_days: 0,
            min_age_hours: 0,
        };
        match p {
            Preset::Nist => nist,
            Preset::Strict => Self {
                min_lower: 1,
                min_upper: 1,
                min_digit: 1,
                min_special: 1,
                expiry_days: 90,
                min_age_hours: 24,
                ..nist
            },
        }
    }

    /// Field by field, the stricter of two policies (for users in several groups); validate the result.
    pub fn strictest(&self, other: &Self) -> Self {
        Self {
            min_length: self.min_length.max(other.min_length),
            max_length: self.max_length.min(other.max_length),
            min_lower: self.min_lower.max(other.min_lower),
            min_upper: self.min_upper.max(other.min_upper),
            min_digit: self.min_digit.max(other.min_digit),
            min_special: self.min_special.max(other.min_special),
            min_score: self.min_score.max(other.min_score),
            blocklist: self.blocklist || other.blocklist,
            history: self.history.max(other.history),
            // 0 (never expires) is the least strict value, not the smallest.
            expiry_days: match (self.expiry_days, other.expiry_days) {
                (0, d) | (d, 0) => d,
                (a, b) => a.min(b),
            },
            min_age_hours: self.min_age_hours.max(other.min_age_hours),
        }
    }

    /// Checks that the settings can be satisfied; the error names the first bad field.
    pub fn validate(&self) -> Result<(), PolicyConfigError> {
        let err = |field, message: String| Err(PolicyConfigError { field, message });
        if self.min_length < 1 {
            return err("min_length", "must be at least 1".into());
        }
        if self.max_length > MAX_POLICY_LENGTH {
            return err(
                "max_length",
                format!(
                    "must be at most {MAX_POLICY_LENGTH}, got {}",
                    self.max_length
                ),
            );
        }
        if self.max_length < self.min_length {
            return err(
                "max_length",
                format!(
                    "must be at least min_length ({}), got {}",
                    self.min_length, self.max_length
                ),
            );
        }
        if self.min_score > 4 {
            return err(
                "min_score",
                format!("must be between 0 and 4 (zxcvbn), got {}", self.min_score),
            );
        }
        let classes = [
            self.min_lower,
            self.min_upper,
            self.min_digit,
            self.min_special,
        ]
        .iter()
        .fold(0usize, |sum, n| sum.saturating_add(*n));
        if classes > self.max_length {
            return err(
                "min_lower",
                format!(
                    "min_lower + min_upper + min_digit + min_special ({classes}) must not exceed max_length ({})",
                    self.max_length
                ),
            );
        }
        if self.expiry_days > 0 && i64::from(self.min_age_hours) >= i64::from(self.expiry_days) * 24
        {
            return err(
                "min_age_hours",
                format!(
                    "must be shorter than expiry_days ({} days = {} hours), got {}",
                    self.expiry_days,
                    i64::from(self.expiry_days) * 24,
                    self.min_age_hours
                ),
            );
        }
        Ok(())
    }

    /// Every static rule the password fails; `context` is the user's login, email and name.
    pub fn check(&self, password: &Password, context: &[&str]) -> Vec<PolicyViolation> {
        let pw = password.expose();
        let mut violations = Vec::new();
        let length = pw.chars().count();
        if length < self.min_length {
            violations.push(PolicyViolation::TooShort {
                min: self.min_length,
            });
        }
        if length > self.max_length {
            violations.push(PolicyViolation::TooLong {
                max: self.max_length,
            });
        }
        let count = |f: fn(&char) -> bool| pw.chars().filter(f).count();
        if count(|c| c.is_lowercase()) < self.min_lower {
            let min = self.min_lower;
            violations.push(PolicyViolation::TooFewLower { min });
        }
        if count(|c| c.is_uppercase()) < self.min_upper {
            let min = self.min_upper;
            violations.push(PolicyViolation::TooFewUpper { min });
        }
        if count(|c| c.is_numeric()) < self.min_digit {
            let min = self.min_digit;
            violations.push(PolicyViolation::TooFewDigits { min });
        }
        if count(|c| !c.is_alphanumeric()) < self.min_special {
            let min = self.min_special;
            violations.push(PolicyViolation::TooFewSpecial { min });
        }
        let lower = pw.to_lowercase();
        if self.blocklist && blocklist().contains(lower.as_str()) {
            violations.push(PolicyViolation::Blocklisted);
        }
        let words = context_words(context);
        if words.contains(&lower) {
            violations.push(PolicyViolation::PersonalInfo);
        }
        // zxcvbn is slow on long inputs, and an over-long password is already refused.
        if self.min_score > 0 && length <= self.max_length {
            let inputs: Vec<&str> = words.iter().map(String::as_str).collect();
            let score = u8::from(zxcvbn::zxcvbn(pw, &inputs).score());
            if score < self.min_score {
                violations.push(PolicyViolation::TooWeak {
                    score,
                    min: self.min_score,
                });
            }
        }
        violations
    }

    /// Whether a password changed at `changed_at` must be replaced at `now`.
    pub fn is_expired(&self, changed_at: UnixTime, now: UnixTime) -> bool {
        self.expires_at(changed_at).is_some_and(|at| now >= at)
    }

    /// When a password changed at `changed_at` expires; `None` if passwords never expire.
    pub fn expires_at(&self, changed_at: UnixTime) -> Option<UnixTime> {
        (self.expiry_days > 0).then(|| changed_at.saturating_add(i64::from(self.expiry_days) * DAY))
    }

    /// Seconds until the password may be changed again, or `None` if it may be changed now.
    pub fn too_soon_to_change(&self, changed_at: UnixTime, now: UnixTime) -> Option<i64> {
        let min_age = i64::from(self.min_age_hours) * HOUR;
        let earliest = changed_at.saturating_add(min_age);
        // Clamped so a node whose clock lags the one that stored `changed_at` never asks for more.
        (min_age > 0 && now < earliest).then(|| earliest.saturating_sub(now).min(min_age))
    }
}

impl PolicyViolation {
    /// A stable snake_case code for APIs and tests.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooShort { .. } => "too_short",
            Self::TooLong { .. } => "too_long",
            Self::TooFewLower { .. } => "too_few_lower",
            Self::TooFewUpper { .. } => "too_few_upper",
            Self::TooFewDigits { .. } => "too_few_digits",
            Self::TooFewSpecial { .. } => "too_few_special",
            Self::TooWeak { .. } => "too_weak",
            Self::Blocklisted => "blocklisted",
            Self::PersonalInfo => "personal_info",
            Self::Reused { .. } => "reused",
            Self::TooSoon { .. } => "too_soon",
        }
    }
}

impl fmt::Display for PolicyViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural =
            |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        match *self {
            Self::TooShort { min } => write!(f, "Use at least {min} {}.", plural(min, "character", "characters")),
            Self::TooLong { max } => write!(f, "Use at most {max} {}.", plural(max, "character", "characters")),
            Self::TooFewLower { min } => write!(
                f,
                "Use at least {min} lowercase {}.",
                plural(min, "letter", "letters")
            ),
            Self::TooFewUpper { min } => write!(
                f,
                "Use at least {min} uppercase {}.",
                plural(min, "letter", "letters")
            ),
            Self::TooFewDigits { min } => write!(f, "Use at least {min} {}.", plural(min, "digit", "digits")),
            Self::TooFewSpecial { min } => write!(
                f,
                "Use at least {min} special {} (a symbol, punctuation mark or space).",
                plural(min, "character", "characters")
            ),
            Self::TooWeak { score, min } => write!(
                f,
                "This password is too easy to guess (strength {score} of 4, {min} needed). Add more words or characters."
            ),
            Self::Blocklisted => f.write_str("This password appears in lists of common or breached passwords."),
            Self::PersonalInfo => f.write_str("This password is your login, email or name; choose something else."),
            Self::Reused { history: 1 } => f.write_str(
                "You used this password recently; pick one different from your previous password.",
            ),
            Self::Reused { history } => write!(
                f,
                "You used this password recently; pick one you have not used in your last {history} passwords."
            ),
            Self::TooSoon { seconds } if seconds < HOUR => {
                let minutes = (seconds.max(1) + 59) / 60;
                write!(
                    f,
                    "You changed your password recently; you can change it again in {minutes} {}.",
                    if minutes == 1 { "minute" } else { "minutes" }
                )
            }
            Self::TooSoon { seconds } => {
                let hours = (seconds + HOUR - 1) / HOUR;
                write!(
                    f,
                    "You changed your password recently; you can change it again in {hours} {}.",
                    if hours == 1 { "hour" } else { "hours" }
                )
            }
        }
    }
}

fn blocklist() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| BLOCKLIST.lines().filter(|l| !l.is_empty()).collect())
}

/// Context words lowercased, plus their pieces ("jane.doe@example.com" also gives "jane",
/// "doe", "example"), so zxcvbn and the personal-info rule see names inside emails.
fn context_words(context: &[&str]) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in context {
        let word = word.trim().to_lowercase();
        if word.is_empty() {
            continue;
        }
        let pieces: Vec<String> = word
            .split(|c: char| !c.is_alphanumeric())
            .filter(|p| p.chars().count() >= 3 && *p != word)
            .map(str::to_owned)
            .collect();
        words.push(word);
        words.extend(pieces);
    }
    words.sort();
    words.dedup();
    words
}
