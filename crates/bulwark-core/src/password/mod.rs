//! Passwords: the input type, hashing (Argon2id, Odoo/passlib PBKDF2) and the policy.

pub mod hash;
pub mod policy;

use crate::SecretString;
use std::fmt;

/// Hard cap on any password input, before policy: bounds hashing and zxcvbn work.
pub const MAX_PASSWORD_INPUT_BYTES: usize = 1024;

/// A password as typed by a user. Built only by [`Password::parse`]; never printed.
#[derive(Clone)]
pub struct Password(SecretString);

/// Why a password input was refused before any policy rule ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordInputError {
    #[error("the password is empty")]
    Empty,
    #[error("the password is longer than {MAX_PASSWORD_INPUT_BYTES} bytes")]
    TooLong,
}

impl Password {
    /// Accepts any non-empty input up to [`MAX_PASSWORD_INPUT_BYTES`].
    pub fn parse(input: String) -> Result<Self, PasswordInputError> {
        if input.is_empty() {
            return Err(PasswordInputError::Empty);
        }
        if input.len() > MAX_PASSWORD_INPUT_BYTES {
            return Err(PasswordInputError::TooLong);
        }
        Ok(Self(SecretString::new(input)))
    }

    /// The password itself, for hashing and policy checks only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}
