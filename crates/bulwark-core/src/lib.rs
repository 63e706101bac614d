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

/// Lowercase hex of `bytes`: how digests of tokens, keys, recovery codes and audit events are
/// stored. By table, not `write!("{:02x}")`, which costs about ten times as much: it runs on
/// every request that carries a token or key and on every audit append.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}
