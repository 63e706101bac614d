//! Bulwark's pure domain: password hashing and policy, lockout, sessions, one-time tokens,
//! second factors, API keys, access rules.
//!
//! Nothing here does I/O, spawns tasks or reads the clock: time is always an argument
//! (`now`, seconds since the Unix epoch), so every rule can be tested with a fixed clock.

pub mod access;
pub mod account;
pub mod api_key;
pub mod audit;
pub mod enforcement;
pub mod lockout;
pub mod password;
pub mod recovery;
pub mod redirect;
pub mod secret;
pub mod session;
pub mod token;
pub mod totp;

pub use secret::SecretString;

/// Seconds since the Unix epoch; the only notion of time in the domain.
pub type UnixTime = i64;
