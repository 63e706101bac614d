//! API keys: how programs (XML-RPC and JSON-RPC scripts, the JSON API) authenticate without
//! the interactive login.
//!
//! A key is `bwk_` followed by 40 symbols of Crockford's base32 alphabet, lowercase
//! (`0-9` and `a-z` without `i`, `l`, `o`, `u`): 5 bits per symbol, 200 random bits from the
//! operating system's RNG. The first 8 symbols (`bwk_7k2mq9xd`) are the *display prefix*: it
//! is stored in clear and shown in listings so people can tell their keys apart, which leaves
//! 160 bits that appear nowhere but in the key itself. NEVER CHANGE THE PREFIX: secret
//! scanners and people recognise keys by it, and [`looks_like_key`] routes on it.
//!
//! The store keeps only [`ApiKeyDigest`]: the SHA-256 of the whole key, hex-encoded. Not an
//! HMAC under a server key, deliberately:
//! - with 160 unknown bits, testing guesses against a stolen digest offline is hopeless with
//!   or without a key; a keyed hash only earns its keep for low-entropy secrets (recovery
//!   codes have 60 bits, so they get one);
//! - keys stay valid when the server key file is rotated or lost, and on every node;
//! - anyone holding a leaked key can find its row with `sha256sum`, without the server key;
//! - session and trusted-device tokens are stored the same way, so a database writer gains
//!   nothing from API keys that it does not already have from sessions.
//!
//! Checking a presented key is one indexed read by digest: no password hash, no comparison
//! of secrets in application code (the index compares digests, which reveal nothing), and
//! [`ApiKey::parse`] looks at every byte of its input whatever it finds, so its time says
//! nothing about where a malformed key goes wrong.

use crate::{SecretString, UnixTime};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::{Choice, ConstantTimeEq};

/// What every key starts with.
pub const PREFIX: &str = "bwk_";
/// Symbols after the prefix: 40 × 5 = 200 random bits.
pub const BODY_LEN: usize = 40;
/// Length of a whole key.
pub const KEY_LEN: usize = PREFIX.len() + BODY_LEN;
/// Symbols of the body shown in listings (and stored in clear).
pub const DISPLAY_SYMBOLS: usize = 8;
/// Longest key name.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest lifetime a key can be given, whatever the configuration (ten years).
pub const MAX_DAYS: u32 = 3650;

/// Crockford's base32 alphabet, lowercase: 32 symbols, so each carries exactly 5 bits.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Why an API key, its name, scopes or lifetime were refused. Messages are safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("this is not an API key")]
    Malformed,
    #[error("give the key a name of 1 to 64 characters, without control characters")]
    Name,
    #[error("choose at least one scope")]
    NoScope,
    #[error("`{0}` is not a scope: use gateway, api:read or api:write")]
    UnknownScope(String),
    #[error("a key lives 1 to 3650 days")]
    Days,
    #[error("keys may live at most {max} days for this account")]
    TooLong { max: u32 },
    #[error("keys must expire for this account: at most {max} days")]
    MustExpire { max: u32 },
}

/// An API key in full: the secret a program presents. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(SecretString);

impl ApiKey {
    /// A fresh key from the operating system's RNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; BODY_LEN * 5 / 8];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let mut out = String::with_capacity(KEY_LEN);
        out.push_str(PREFIX);
        let mut acc: u32 = 0;
        let mut bits = 0;
        for b in bytes {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                // 5-bit slices of uniform bytes: every symbol equally likely, no modulo bias.
                out.push(char::from(ALPHABET[((acc >> bits) & 0x1f) as usize]));
            }
            acc &= (1 << bits) - 1;
        }
        Self(SecretString::new(out))
    }

    /// Accepts exactly `bwk_` and 40 lowercase symbols of the alphabet; anything else is
    /// [`ApiKeyError::Malformed`]. Every byte is examined, valid or not (see the module docs).
    pub fn parse(input: &str) -> Result<Self, ApiKeyError> {
        let bytes = input.as_bytes();
        // The length is not secret: every key has the same one.
        if bytes.len() != KEY_LEN {
            return Err(ApiKeyError::Malformed);
        }
        let (prefix, body) = bytes.split_at(PREFIX.len());
        let mut symbols = 1u8;
        for &c in body {
            symbols &= is_symbol(c);
        }
        if bool::from(prefix.ct_eq(PREFIX.as_bytes()) & Choice::from(symbols)) {
            Ok(Self(SecretString::new(input.to_string())))
        } else {
            Err(ApiKeyError::Malformed)
        }
    }

    /// The key itself: show it once to its owner, never log it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// What the store keeps and looks keys up by.
    pub fn digest(&self) -> ApiKeyDigest {
        ApiKeyDigest::of(self.expose())
    }

    /// `bwk_` and the first 8 symbols: shown in listings, stored in clear.
    pub fn display_prefix(&self) -> String {
        self.expose()
            .chars()
            .take(PREFIX.len() + DISPLAY_SYMBOLS)
            .collect()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// 1 if `c` is a symbol of the alphabet, else 0, computed without branching on `c`: each
/// comparison is a subtraction whose sign bit is the answer. Plain arithmetic rather than
/// `subtle`'s operations, whose optimisation barrier on each of the 14 steps made a key's
/// check cost more than its SHA-256; the caller turns the result into a `Choice` once.
fn is_symbol(c: u8) -> u8 {
    let c = u32::from(c);
    // 1 if a < b, for a and b below 2^31.
    let lt = |a: u32, b: u32| a.wrapping_sub(b) >> 31;
    let eq = |b: u8| lt(c ^ u32::from(b), 1);
    let within = |lo: u8, hi: u8| (1 ^ lt(c, u32::from(lo))) & lt(c, u32::from(hi) + 1);
    let excluded = eq(b'i') | eq(b'l') | eq(b'o') | eq(b'u');
    // Each term is 0 or 1, so the result fits a byte.
    (within(b'0', b'9') | (within(b'a', b'z') & (1 ^ excluded))) as u8
}

/// Whether a presented credential is meant as an API key (it carries the prefix), before
/// checking it: the gateway treats such a request as a program's, not a browser's.
pub fn looks_like_key(s: &str) -> bool {
    s.starts_with(PREFIX)
}

/// The SHA-256 digest of a whole key, hex-encoded: what the store keeps.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKeyDigest(String);

impl ApiKeyDigest {
    fn of(key: &str) -> Self {
        Self(crate::hex(&Sha256::digest(key.as_bytes())))
    }

    /// Rebuilds a digest read from storage.
    pub fn from_stored(hex_digest: String) -> Self {
        Self(hex_digest)
    }

    /// Hex digest, for storage.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest is the lookup key of a live credential: keep it out of logs too.
        f.write_str("ApiKeyDigest(<redacted>)")
    }
}

/// A key's name, unique among its owner's live keys: trimmed, 1 to 64 characters, no
/// control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyName(String);

impl KeyName {
    /// Trims and checks a name.
    pub fn parse(input: &str) -> Result<Self, ApiKeyError> {
        let name = input.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(ApiKeyError::Name);
        }
        Ok(Self(name.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a key may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Passes the gateway's `api_key` rules (XML-RPC, JSON-RPC behind the proxy).
    Gateway,
    /// Reads through Bulwark's own JSON API.
    ApiRead,
    /// Changes through Bulwark's own JSON API; includes `api:read`.
    ApiWrite,
}

impl Scope {
    /// Every scope, in display order.
    pub const ALL: [Scope; 3] = [Scope::Gateway, Scope::ApiRead, Scope::ApiWrite];

    /// Parses a scope name (`gateway`, `api:read`, `api:write`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim() {
            "gateway" => Self::Gateway,
            "api:read" => Self::ApiRead,
            "api:write" => Self::ApiWrite,
            _ => return None,
        })
    }

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::ApiRead => "api:read",
            Self::ApiWrite => "api:write",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Gateway => 1,
            Self::ApiRead => 2,
            Self::ApiWrite => 4,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scopes a key was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Parses the scopes asked for: at least one, each known; repeats are fine.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, ApiKeyError> {
        let mut bits = 0;
        for name in names {
            let name = name.as_ref();
            let scope = Scope::parse(name)
                .ok_or_else(|| ApiKeyError::UnknownScope(name.chars().take(32).collect()))?;
            bits |= scope.bit();
        }
        if bits == 0 {
            return Err(ApiKeyError::NoScope);
        }
        Ok(Self(bits))
    }

    /// Reads the stored form; names this build does not know grant nothing.
    pub fn from_stored(s: &str) -> Self {
        Self(
            s.split_whitespace()
                .filter_map(Scope::parse)
                .fold(0, |acc, scope| acc | scope.bit()),
        )
    }

    /// The stored (and displayed) form: names separated by spaces, in [`Scope::ALL`] order.
    pub fn to_stored(self) -> String {
        self.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
    }

    /// The scopes given, in [`Scope::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL
            .into_iter()
            .filter(move |s| self.0 & s.bit() != 0)
    }

    /// Whether a key with these scopes may do what `needed` covers. `api:write` includes
    /// `api:read`; nothing else includes anything.
    pub fn allows(self, needed: Scope) -> bool {
        let granted = |s: Scope| self.0 & s.bit() != 0;
        granted(needed) || (needed == Scope::ApiRead && granted(Scope::ApiWrite))
    }
}

/// When a key made at `now` expires: after `days` (`None`: never), within `max_days`
/// (`None`: no maximum applies to the owner).
pub fn expires_at(
    now: UnixTime,
    days: Option<u32>,
    max_days: Option<u32>,
) -> Result<Option<UnixTime>, ApiKeyError> {
    match (days, max_days) {
        (None, None) => Ok(None),
        (None, Some(max)) => Err(ApiKeyError::MustExpire { max }),
        (Some(d), _) if d == 0 || d > MAX_DAYS => Err(ApiKeyError::Days),
        (Some(d), Some(max)) if d > max => Err(ApiKeyError::TooLong { max }),
        (Some(d), _) => Ok(Some(now + i64::from(d) * 86_400)),
    }
}

/// Whether a key still works at `now`: not revoked and not expired.
pub fn is_live(expires_at: Option<UnixTime>, revoked_at: Option<UnixTime>, now: UnixTime) -> bool {
    revoked_at.is_none() && expires_at.is_none_or(|at| now < at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_keys_are_well_formed_and_unique() {
        let keys: Vec<ApiKey> = (0..200).map(|_| ApiKey::generate()).collect();
        let distinct: HashSet<&str> = keys.iter().map(ApiKey::expose).collect();
        assert_eq!(distinct.len(), keys.len());
        for key in &keys {
            assert_eq!(key.expose().len(), KEY_LEN);
            assert!(key.expose().starts_with("bwk_"));
            assert_eq!(ApiKey::parse(key.expose()).as_ref(), Ok(key));
            assert_eq!(key.display_prefix().len(), 12);
            assert!(key.expose().starts_with(&key.display_prefix()));
        }
    }

    #[test]
    fn keys_use_every_symbol_and_no_look_alikes() {
        let mut seen = HashSet::new();
        for _ in 0..100 {
            seen.extend(ApiKey::generate().expose()[PREFIX.len()..].chars());
        }
        assert_eq!(seen.len(), 32, "4000 symbols should cover all 32");
        for c in ['i', 'l', 'o', 'u'] {
            assert!(!seen.contains(&c));
        }
    }

    #[test]
    fn parse_refuses_anything_but_the_exact_form() {
        let good = ApiKey::generate();
        let body = &good.expose()[PREFIX.len()..];
        let mut bad = vec![
            String::new(),
            "bwk_".into(),
            body.to_string(),
            format!("bwk-{body}"),
            format!("BWK_{body}"),
            format!("bwk_{}", body.to_uppercase()),
            format!("bwk_{}", &body[1..]),
            format!("bwk_{body}0"),
            format!(" bwk_{}", &body[1..]),
            format!("bwk_{}\n", &body[1..]),
            format!("bwk_{}é", &body[2..]),
            "x".repeat(10_000),
        ];
        for c in ['i', 'l', 'o', 'u', '-', '_', '=', '/', '\0'] {
            bad.push(format!("bwk_{c}{}", &body[1..]));
            bad.push(format!("bwk_{}{c}", &body[..BODY_LEN - 1]));
        }
        for input in bad {
            assert_eq!(
                ApiKey::parse(&input),
                Err(ApiKeyError::Malformed),
                "{input:?}"
            );
        }
        assert!(ApiKey::parse(&format!("bwk_{}", "0".repeat(40))).is_ok());
        assert!(ApiKey::parse(&format!("bwk_{}", "z".repeat(40))).is_ok());
    }

    #[test]
    fn the_symbol_check_matches_the_alphabet() {
        for c in 0..=255u8 {
            assert_eq!(is_symbol(c) == 1, ALPHABET.contains(&c), "byte {c:#04x}");
        }
    }

    #[test]
    fn digest_is_the_sha256_of_the_whole_key() {
        let key = ApiKey::parse("bwk_0123456789abcdefghjkmnpqrstvwxyz01234567").unwrap();
        // printf %s bwk_0123456789abcdefghjkmnpqrstvwxyz01234567 | sha256sum
        assert_eq!(
            key.digest().as_str(),
            "e7a2bedc587576e2b44a99afb6b24ef9fa39957fe700c8f5011c6ce379b55dd8"
        );
        assert_ne!(key.digest(), ApiKey::generate().digest());
        assert_eq!(key.display_prefix(), "bwk_01234567");
    }

    #[test]
    fn debug_never_shows_the_key_or_its_digest() {
        let key = ApiKey::generate();
        let shown = format!("{key:?} {:?}", key.digest());
        assert!(!shown.contains(&key.expose()[PREFIX.len()..]));
        assert!(!shown.contains(key.digest().as_str()));
    }

    #[test]
    fn looks_like_key_only_checks_the_prefix() {
        assert!(looks_like_key("bwk_whatever"));
        assert!(!looks_like_key("Bwk_x"));
        assert!(!looks_like_key("eyJhbGciOi"));
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            KeyName::parse("  nightly sync ").unwrap().as_str(),
            "nightly sync"
        );
        assert_eq!(
            KeyName::parse(&"é".repeat(64))
                .unwrap()
                .as_str()
                .chars()
                .count(),
            64
        );
        for bad in ["", "   ", "a\nb", "tab\there", &"x".repeat(65)] {
            assert_eq!(KeyName::parse(bad), Err(ApiKeyError::Name), "{bad:?}");
        }
    }

    #[test]
    fn scopes_parse_store_and_allow() {
        let s = Scopes::parse(&["api:write", "gateway", "gateway"]).unwrap();
        assert_eq!(s.to_stored(), "gateway api:write");
        assert_eq!(Scopes::from_stored(&s.to_stored()), s);
        assert!(s.allows(Scope::Gateway));
        assert!(s.allows(Scope::ApiWrite));
        assert!(s.allows(Scope::ApiRead), "write includes read");
        let read = Scopes::parse(&["api:read"]).unwrap();
        assert!(read.allows(Scope::ApiRead));
        assert!(!read.allows(Scope::ApiWrite));
        assert!(!read.allows(Scope::Gateway));
        let gateway = Scopes::parse(&["gateway"]).unwrap();
        assert!(!gateway.allows(Scope::ApiRead));
        assert_eq!(Scopes::parse::<&str>(&[]), Err(ApiKeyError::NoScope));
        assert_eq!(
            Scopes::parse(&["admin"]),
            Err(ApiKeyError::UnknownScope("admin".into()))
        );
        assert_eq!(
            Scopes::from_stored("gateway admin:all"),
            Scopes::parse(&["gateway"]).unwrap(),
            "an unknown stored name grants nothing"
        );
        assert_eq!(Scopes::from_stored("").iter().count(), 0);
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
    }

    #[test]
    fn expiry_respects_the_maximum() {
        let now = 1_000_000;
        assert_eq!(
            expires_at(now, Some(30), Some(90)),
            Ok(Some(now + 30 * 86_400))
        );
        assert_eq!(
            expires_at(now, Some(90), Some(90)),
            Ok(Some(now + 90 * 86_400))
        );
        assert_eq!(
            expires_at(now, Some(91), Some(90)),
            Err(ApiKeyError::TooLong { max: 90 })
        );
        assert_eq!(
            expires_at(now, None, Some(90)),
            Err(ApiKeyError::MustExpire { max: 90 })
        );
        assert_eq!(expires_at(now, None, None), Ok(None));
        assert_eq!(expires_at(now, Some(0), None), Err(ApiKeyError::Days));
        assert_eq!(expires_at(now, Some(3651), None), Err(ApiKeyError::Days));
        assert_eq!(
            expires_at(now, Some(3650), None),
            Ok(Some(now + 3650 * 86_400))
        );
    }

    #[test]
    fn keys_stop_at_expiry_and_revocation() {
        assert!(is_live(None, None, 5));
        assert!(is_live(Some(10), None, 9));
        assert!(!is_live(Some(10), None, 10));
        assert!(!is_live(None, Some(3), 5));
        assert!(!is_live(Some(100), Some(3), 5));
    }
}
