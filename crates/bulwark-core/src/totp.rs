//! Time-based one-time passwords (RFC 6238, on top of HOTP from RFC 4226).
//!
//! A code is HOTP over the time step `floor(now / period)`. Verification accepts the current
//! step and `skew` steps either side (±1 by default): phones drift by a few seconds and a
//! user needs a moment to type a code, so a code shown just before a step boundary must still
//! work a little after it. Wider windows only give a guesser more valid codes at once.
//!
//! A code stays valid for its whole window, so someone who sees it typed (over a shoulder,
//! by a keylogger, in a proxy log) could replay it within that window. [`verify`] therefore
//! returns the matched step and refuses any step not strictly newer than the last one accepted
//! for the account; the caller stores that step with an atomic conditional update, so two
//! nodes racing on one code cannot both succeed. (A live phishing relay that submits first is
//! not stopped by this; only WebAuthn stops that.)
//!
//! Six digits give 10^6 codes and at most `2 * skew + 1` of them are valid at any moment, so
//! an unthrottled guesser would win quickly: the per-account attempt limit that stops this
//! lives in the lockout policy ([`crate::lockout`]), not here.

use crate::{SecretString, UnixTime};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use std::fmt;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq, ConstantTimeGreater};

/// Bytes in a generated secret: 160 bits, the HMAC-SHA1 output size RFC 4226 recommends.
pub const SECRET_BYTES: usize = 20;
/// Shortest secret accepted (RFC 4226 requires at least 128 bits).
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest secret accepted: one SHA-512 block, enough for the RFC 6238 test seeds; bounds junk.
pub const MAX_SECRET_BYTES: usize = 128;
/// Longest code input looked at before parsing; anything longer is junk.
const MAX_CODE_INPUT: usize = 64;

/// Why a TOTP secret or code was refused. Messages never contain the secret or the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("the TOTP secret is shorter than {MIN_SECRET_BYTES} bytes")]
    SecretTooShort,
    #[error("the TOTP secret is longer than {MAX_SECRET_BYTES} bytes")]
    SecretTooLong,
    #[error("the TOTP secret is not valid base32")]
    Base32,
    #[error("the code must be {digits} digits")]
    CodeFormat { digits: u32 },
}

/// The HMAC hash behind the codes; authenticator apps assume SHA-1 unless told otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The name used in `otpauth://` URIs (`SHA1`, `SHA256`, `SHA512`).
    pub fn otpauth_name(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
            Self::Sha512 => "SHA512",
        }
    }
}

/// How codes are made and checked; the default (SHA-1, 6 digits, 30 s, ±1 step) suits every app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TotpParams {
    /// HMAC hash.
    pub algorithm: Algorithm,
    /// Code length: 6 or 8.
    pub digits: u32,
    /// Seconds per time step.
    pub period: u64,
    /// Steps accepted either side of the current one.
    pub skew: u64,
}

impl Default for TotpParams {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Sha1,
            digits: 6,
            period: 30,
            skew: 1,
        }
    }
}

impl TotpParams {
    /// Checks the values make sense; the error names the field.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.digits != 6 && self.digits != 8 {
            return Err("digits must be 6 or 8");
        }
        // Apps show a countdown per step; outside this range they either ignore the value
        // or the codes become unusable (too short) or long-lived (too long).
        if !(10..=300).contains(&self.period) {
            return Err("period must be between 10 and 300 seconds");
        }
        if self.skew > 2 {
            return Err("skew must be 0, 1 or 2 steps");
        }
        Ok(())
    }
}

/// A shared TOTP secret (raw bytes). Never printed; encrypt it before it reaches storage.
#[derive(Clone)]
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    /// A fresh 160-bit secret from the operating system's RNG.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps raw bytes (e.g. decrypted from storage); refuses fewer than 128 bits.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, TotpError> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(TotpError::SecretTooShort);
        }
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(TotpError::SecretTooLong);
        }
        Ok(Self(bytes))
    }

    /// Parses base32 as apps and other servers print it (any case, spaces, optional padding).
    pub fn from_base32(input: &str) -> Result<Self, TotpError> {
        // Reject before decoding so a huge paste costs nothing.
        if input.len() > MAX_SECRET_BYTES * 4 {
            return Err(TotpError::SecretTooLong);
        }
        Self::from_bytes(base32::decode(input)?)
    }

    /// Unpadded uppercase base32, as `otpauth://` URIs and apps expect.
    pub fn to_base32(&self) -> SecretString {
        SecretString::new(base32::encode(&self.0))
    }

    /// Base32 in groups of four separated by spaces, for typing the secret by hand.
    pub fn to_base32_grouped(&self) -> SecretString {
        let plain = base32::encode(&self.0);
        let mut out = String::with_capacity(plain.len() + plain.len() / 4);
        for (i, c) in plain.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        SecretString::new(out)
    }

    /// The raw secret, for encryption at rest only.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

/// A code as typed by a user: exactly `digits` ASCII digits once spaces and dashes are gone.
#[derive(Clone)]
pub struct TotpCode(String);

impl TotpCode {
    /// Strips spaces and dashes (apps display `123 456`) and requires `digits` ASCII digits.
    pub fn parse(input: &str, digits: u32) -> Result<Self, TotpError> {
        let err = TotpError::CodeFormat { digits };
        if input.len() > MAX_CODE_INPUT {
            return Err(err);
        }
        let code: String = input
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect();
        let right_length = usize::try_from(digits).is_ok_and(|d| d == code.len());
        if !right_length || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err);
        }
        Ok(Self(code))
    }

    /// The digits, for comparison only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpCode(<redacted>)")
    }
}

/// The time step containing `now`: `floor(now / period)`; times before 1970 count as step 0.
pub fn time_step(now: UnixTime, period: u64) -> u64 {
    u64::try_from(now)
        .unwrap_or(0)
        .checked_div(period)
        .unwrap_or(0)
}

/// The code for a time step (HOTP with the step as counter), zero-padded to `params.digits`.
pub fn generate(secret: &TotpSecret, params: &TotpParams, step: u64) -> String {
    let value = hotp_value(secret.as_bytes(), params.algorithm, step);
    // The truncated value has 31 bits (10 decimal digits): more digits would only pad zeros,
    // and clamping keeps unvalidated params from asking for a gigabyte of them.
    let digits = params.digits.clamp(1, 10);
    let modulus = 10u64.pow(digits);
    let width = digits as usize;
    format!("{:0width$}", u64::from(value) % modulus)
}

/// The step a code matches within `±skew` of `now` and newer than `last_used_step`, if any.
///
/// Every candidate step is computed and compared in constant time before deciding, so timing
/// does not reveal which step (if any) matched. Invalid params match nothing.
pub fn verify(
    secret: &TotpSecret,
    params: &TotpParams,
    code: &TotpCode,
    now: UnixTime,
    last_used_step: Option<u64>,
) -> Option<u64> {
    if params.validate().is_err() {
        return None;
    }
    let step = time_step(now, params.period);
    let mut matched_step = 0u64;
    let mut matched = Choice::from(0);
    // Ascending order: a later match overwrites an earlier one, so the newest step wins.
    for candidate in step.saturating_sub(params.skew)..=step.saturating_add(params.skew) {
        let expected = generate(secret, params, candidate);
        let fresh = match last_used_step {
            Some(last) => candidate.ct_gt(&last),
            None => Choice::from(1),
        };
        let hit = expected.as_bytes().ct_eq(code.expose().as_bytes()) & fresh;
        matched_step.conditional_assign(&candidate, hit);
        matched |= hit;
    }
    bool::from(matched).then_some(matched_step)
}

/// The `otpauth://totp/...` URI that authenticator apps scan; it contains the secret.
pub fn otpauth_uri(
    secret: &TotpSecret,
    params: &TotpParams,
    issuer: &str,
    account: &str,
) -> SecretString {
    let issuer = percent_encode(issuer);
    // The label's ':' separates issuer and account, so any ':' inside them is encoded.
    SecretString::new(format!(
        "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}\
         &algorithm={algorithm}&digits={digits}&period={period}",
        account = percent_encode(account),
        secret = secret.to_base32().expose(),
        algorithm = params.algorithm.otpauth_name(),
        digits = params.digits,
        period = params.period,
    ))
}

/// RFC 4226 section 5.3: HMAC of the big-endian counter, dynamically truncated to 31 bits.
fn hotp_value(key: &[u8], algorithm: Algorithm, counter: u64) -> u32 {
    let msg = counter.to_be_bytes();
    let digest = match algorithm {
        Algorithm::Sha1 => hmac_digest::<Hmac<Sha1>>(key, &msg),
        Algorithm::Sha256 => hmac_digest::<Hmac<Sha256>>(key, &msg),
        Algorithm::Sha512 => hmac_digest::<Hmac<Sha512>>(key, &msg),
    };
    let offset = digest.last().map_or(0, |b| usize::from(b & 0x0f));
    let word = digest
        .get(offset..offset + 4)
        .and_then(|w| <[u8; 4]>::try_from(w).ok())
        .map_or(0, u32::from_be_bytes);
    word & 0x7fff_ffff
}

fn hmac_digest<M: Mac + KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    match <M as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            Mac::update(&mut mac, msg);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (space becomes `%20`).
fn percent_encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// RFC 4648 base32 (the uppercase `A-Z2-7` alphabet), as used for TOTP secrets.
pub mod base32 {
    use super::TotpError;

    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

    /// Encodes without `=` padding (what `otpauth://` URIs use).
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
        let mut buffer = 0u16;
        let mut bits = 0u32;
        for &b in bytes {
            buffer = (buffer << 8) | u16::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(symbol(buffer >> bits));
            }
        }
        if bits > 0 {
            out.push(symbol(buffer << (5 - bits)));
        }
        out
    }

    /// Decodes any case, ignoring whitespace and trailing `=` padding.
    ///
    /// Lengths no encoder produces (1, 3 or 6 symbols past a multiple of 8) are refused;
    /// unused low bits of the last symbol are ignored, as other TOTP implementations do.
    pub fn decode(input: &str) -> Result<Vec<u8>, TotpError> {
        let symbols: Vec<u8> = input.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let unpadded = symbols
            .iter()
            .rposition(|&b| b != b'=')
            .map_or(&symbols[..0], |last| &symbols[..=last]);
        if matches!(unpadded.len() % 8, 1 | 3 | 6) {
            return Err(TotpError::Base32);
        }
        let mut out = Vec::with_capacity(unpadded.len() * 5 / 8);
        let mut buffer = 0u16;
        let mut bits = 0u32;
        for &b in unpadded {
            let value = value_of(b).ok_or(TotpError::Base32)?;
            buffer = (buffer << 5) | u16::from(value);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                // Keeping only the low byte is the point: the rest was already emitted.
                out.push((buffer >> bits) as u8);
            }
        }
        Ok(out)
    }

    fn symbol(five_bits: u16) -> char {
        char::from(ALPHABET[usize::from(five_bits & 0x1f)])
    }

    fn value_of(b: u8) -> Option<u8> {
        match b.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => Some(c - b'A'),
            c @ b'2'..=b'7' => Some(c - b'2' + 26),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890".to_vec()).unwrap()
    }

    #[test]
    fn time_step_floors_and_clamps() {
        assert_eq!(time_step(59, 30), 1);
        assert_eq!(time_step(60, 30), 2);
        assert_eq!(time_step(0, 30), 0);
        assert_eq!(time_step(-1, 30), 0);
        assert_eq!(time_step(i64::MIN, 30), 0);
        assert_eq!(time_step(100, 0), 0);
    }

    #[test]
    fn junk_params_never_panic_and_never_verify() {
        let params = TotpParams {
            digits: u32::MAX,
            period: 0,
            skew: u64::MAX,
            ..TotpParams::default()
        };
        assert_eq!(generate(&secret(), &params, u64::MAX).len(), 10);
        let code = TotpCode::parse("123456", 6).unwrap();
        assert_eq!(verify(&secret(), &params, &code, i64::MAX, None), None);
    }

    #[test]
    fn verify_at_the_first_step_does_not_underflow() {
        let p = TotpParams::default();
        let code = TotpCode::parse(&generate(&secret(), &p, 0), 6).unwrap();
        assert_eq!(verify(&secret(), &p, &code, 0, None), Some(0));
        assert_eq!(verify(&secret(), &p, &code, 0, Some(0)), None);
    }

    #[test]
    fn validate_names_the_field() {
        assert!(TotpParams::default().validate().is_ok());
        let p = TotpParams {
            digits: 7,
            ..TotpParams::default()
        };
        assert!(p.validate().unwrap_err().contains("digits"));
        let p = TotpParams {
            period: 0,
            ..TotpParams::default()
        };
        assert!(p.validate().unwrap_err().contains("period"));
        let p = TotpParams {
            skew: 3,
            ..TotpParams::default()
        };
        assert!(p.validate().unwrap_err().contains("skew"));
    }

    #[test]
    fn base32_refuses_impossible_lengths_and_symbols() {
        assert_eq!(base32::decode("A"), Err(TotpError::Base32));
        assert_eq!(base32::decode("MZX"), Err(TotpError::Base32));
        assert_eq!(base32::decode("MZXW6Y"), Err(TotpError::Base32));
        assert_eq!(base32::decode("MZ1W"), Err(TotpError::Base32));
        assert_eq!(base32::decode("MZ=XW6==="), Err(TotpError::Base32));
        assert_eq!(base32::decode("  ").unwrap(), b"");
    }

    #[test]
    fn algorithm_names_are_lowercase_in_serde() {
        use serde::de::value::{Error, StrDeserializer};
        use serde::de::IntoDeserializer;
        let parse = |s: &str| {
            let d: StrDeserializer<'_, Error> = s.into_deserializer();
            Algorithm::deserialize(d).ok()
        };
        assert_eq!(parse("sha1"), Some(Algorithm::Sha1));
        assert_eq!(parse("sha256"), Some(Algorithm::Sha256));
        assert_eq!(parse("sha512"), Some(Algorithm::Sha512));
        assert_eq!(parse("SHA1"), None);
        assert_eq!(Algorithm::default(), Algorithm::Sha1);
        assert_eq!(Algorithm::Sha256.otpauth_name(), "SHA256");
    }

    #[test]
    fn errors_do_not_echo_input() {
        let e = TotpCode::parse("12345x", 6).unwrap_err();
        assert_eq!(e.to_string(), "the code must be 6 digits");
        let e = TotpSecret::from_base32("MZXW6YTBOI!!").unwrap_err();
        assert!(!e.to_string().contains("MZXW"));
    }
}
