//! Password hashes: Argon2id for new hashes, plus Odoo/passlib `$pbkdf2-sha512$` so users
//! imported from Odoo can log in and be moved to the current scheme.
//!
//! Stored strings are parsed into [`PasswordHash`] before use, so a corrupt database row is
//! an error at parse time, never a panic while verifying. Verification compares in constant
//! time and reports `needs_rehash` when the stored scheme or cost differs from the current
//! configuration; the caller re-hashes after a successful login.

use super::Password;
use argon2::password_hash::PasswordHash as PhcHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore as _;
use sha2::Sha512;
use std::fmt;
use subtle::ConstantTimeEq as _;

/// Fewest PBKDF2 rounds allowed for new hashes (Odoo's current default).
pub const MIN_PBKDF2_ROUNDS: u32 = 600_000;

/// Most Argon2 memory accepted (4 GiB), in config and in stored hashes: argon2 aborts the
/// process, rather than erroring, when an allocation this large fails.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 4 * 1024 * 1024;

const ARGON2ID_PREFIX: &str = "$argon2id$";
const PBKDF2_PREFIX: &str = "$pbkdf2-sha512$";
const SALT_LEN: usize = 16;
const MIN_SALT_LEN: usize = 8;
// passlib rejects pbkdf2_sha512 digests of any other length.
const PBKDF2_OUTPUT_LEN: usize = 64;

/// Argon2id cost parameters; the default is OWASP's m=19456 KiB, t=2, p=1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Params {
    /// Memory per hash in KiB (m).
    pub memory_kib: u32,
    /// Passes over memory (t).
    pub iterations: u32,
    /// Lanes (p).
    pub parallelism: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// The scheme used for new hashes; either scheme can always be verified.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Scheme {
    /// Argon2id in PHC format (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`).
    #[default]
    #[serde(rename = "argon2id")]
    Argon2id,
    /// passlib/Odoo `$pbkdf2-sha512$ROUNDS$SALT$HASH`, for deployments Odoo must still read.
    #[serde(rename = "pbkdf2-sha512")]
    Pbkdf2Sha512,
}

impl Scheme {
    /// The name used in hash strings and configuration (`argon2id`, `pbkdf2-sha512`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Argon2id => "argon2id",
            Self::Pbkdf2Sha512 => "pbkdf2-sha512",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a hash could not be parsed or made, or why hasher settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("password hash uses an unsupported scheme (expected $argon2id$ or $pbkdf2-sha512$)")]
    UnsupportedScheme,
    #[error("password hash is malformed: {0}")]
    Malformed(&'static str),
    #[error("argon2 parameter `{field}` is invalid: {message}")]
    InvalidArgon2Params {
        field: &'static str,
        message: String,
    },
    #[error("pbkdf2_rounds must be at least {MIN_PBKDF2_ROUNDS}, got {0}")]
    Pbkdf2RoundsTooLow(u32),
    #[error("the operating system's random number generator failed")]
    Random,
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// A stored password hash (PHC or passlib string); `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Parses `$argon2id$...` or passlib `$pbkdf2-sha512$ROUNDS$SALT$HASH`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        Decoded::decode(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The hash string, for storage.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The scheme this hash was made with.
    pub fn scheme(&self) -> Scheme {
        if self.0.starts_with(PBKDF2_PREFIX) {
            Scheme::Pbkdf2Sha512
        } else {
            Scheme::Argon2id
        }
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// Outcome of checking a password against a stored hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// The password matches; re-hash and store it when `needs_rehash`.
    Valid { needs_rehash: bool },
    /// The password does not match.
    Invalid,
}

impl Verification {
    /// True for [`Verification::Valid`].
    pub fn is_valid(self) -> bool {
        matches!(self, Self::Valid { .. })
    }
}

/// Hashes and verifies passwords with validated settings.
#[derive(Clone, Debug)]
pub struct PasswordHasher {
    params: Params,
    scheme: Scheme,
    pbkdf2_rounds: u32,
    dummy: PasswordHash,
}

impl PasswordHasher {
    /// Validates the settings and precomputes the dummy hash (costs one hash).
    pub fn new(
        params: Argon2Params,
        scheme: Scheme,
        pbkdf2_rounds: u32,
    ) -> Result<Self, HashError> {
        let params = argon2_params(params)?;
        if pbkdf2_rounds < MIN_PBKDF2_ROUNDS {
            return Err(HashError::Pbkdf2RoundsTooLow(pbkdf2_rounds));
        }
        let mut hasher = Self {
            params,
            scheme,
            pbkdf2_rounds,
            dummy: PasswordHash(String::new()),
        };
        // A random password: nobody can know what the dummy hash matches.
        let mut seed = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|_| HashError::Random)?;
        let dummy = Password::parse(STANDARD_NO_PAD.encode(seed))
            .map_err(|e| HashError::Hashing(e.to_string()))?;
        hasher.dummy = hasher.hash(&dummy)?;
        Ok(hasher)
    }

    /// Hashes with the current scheme and a fresh 16-byte salt from the OS.
    pub fn hash(&self, password: &Password) -> Result<PasswordHash, HashError> {
        self.hash_in(&mut HashMemory::default(), password)
    }

    /// [`hash`](Self::hash) with working memory kept by the caller between hashes.
    pub fn hash_in(
        &self,
        memory: &mut HashMemory,
        password: &Password,
    ) -> Result<PasswordHash, HashError> {
        let mut salt = [0u8; SALT_LEN];
        OsRng
            .try_fill_bytes(&mut salt)
            .map_err(|_| HashError::Random)?;
        let pw = password.expose().as_bytes();
        let encoded = match self.scheme {
            Scheme::Argon2id => {
                let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
                let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone());
                memory
                    .with_blocks(&self.params, &self.params, |blocks| {
                        argon2.hash_password_into_with_memory(pw, &salt, &mut out, blocks)
                    })
                    .map_err(hashing_error)?;
                // The PHC string format: base64 without padding for salt and hash.
                format!(
                    "{ARGON2ID_PREFIX}v=19$m={},t={},p={}${}${}",
                    self.params.m_cost(),
                    self.params.t_cost(),
                    self.params.p_cost(),
                    STANDARD_NO_PAD.encode(salt),
                    STANDARD_NO_PAD.encode(out)
                )
            }
            Scheme::Pbkdf2Sha512 => {
                let mut out = [0u8; PBKDF2_OUTPUT_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(pw, &salt, self.pbkdf2_rounds, &mut out);
                format!(
                    "{PBKDF2_PREFIX}{}${}${}",
                    self.pbkdf2_rounds,
                    ab64_encode(&salt),
                    ab64_encode(&out)
                )
            }
        };
        Ok(PasswordHash(encoded))
    }

    /// Checks `password` against `stored` in constant time.
    pub fn verify(&self, password: &Password, stored: &PasswordHash) -> Verification {
        self.verify_in(&mut HashMemory::default(), password, stored)
    }

    /// [`verify`](Self::verify) with working memory kept by the caller between hashes.
    pub fn verify_in(
        &self,
        memory: &mut HashMemory,
        password: &Password,
        stored: &PasswordHash,
    ) -> Verification {
        let Ok(decoded) = Decoded::decode(&stored.0) else {
            return Verification::Invalid;
        };
        let pw = password.expose().as_bytes();
        match decoded {
            Decoded::Argon2 {
                phc,
                params,
                salt_len,
            } => {
                let version = phc
                    .version
                    .and_then(|v| Version::try_from(v).ok())
                    .unwrap_or_default();
                let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
                    return Verification::Invalid;
                };
                let mut salt_buf = [0u8; 64];
                let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
                    return Verification::Invalid;
                };
                let expected = expected.as_bytes();
                let mut out = vec![0u8; expected.len()];
                let argon2 = Argon2::new(Algorithm::Argon2id, version, params.clone());
                let computed = memory.with_blocks(&params, &self.params, |blocks| {
                    argon2.hash_password_into_with_memory(pw, salt, &mut out, blocks)
                });
                if computed.is_err() || !bool::from(out[..].ct_eq(expected)) {
                    return Verification::Invalid;
                }
                let needs_rehash = self.scheme != Scheme::Argon2id
                    || version != Version::V0x13
                    || salt_len < SALT_LEN
                    || params.m_cost() != self.params.m_cost()
                    || params.t_cost() != self.params.t_cost()
                    || params.p_cost() != self.params.p_cost()
                    || params.output_len() != Some(Params::DEFAULT_OUTPUT_LEN);
                Verification::Valid { needs_rehash }
            }
            Decoded::Pbkdf2 { rounds, salt, hash } => {
                let mut out = [0u8; PBKDF2_OUTPUT_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(pw, &salt, rounds, &mut out);
                if !bool::from(out[..].ct_eq(&hash[..])) {
                    return Verification::Invalid;
                }
                let needs_rehash = self.scheme != Scheme::Pbkdf2Sha512
                    || rounds != self.pbkdf2_rounds
                    || salt.len() < SALT_LEN;
                Verification::Valid { needs_rehash }
            }
        }
    }

    /// Does the work of one verification and discards it, so unknown users cost the same time.
    pub fn dummy_verify(&self, password: &Password) {
        self.dummy_verify_in(&mut HashMemory::default(), password);
    }

    /// [`dummy_verify`](Self::dummy_verify) with working memory kept by the caller.
    pub fn dummy_verify_in(&self, memory: &mut HashMemory, password: &Password) {
        std::hint::black_box(self.verify_in(memory, password, &self.dummy));
    }
}

/// Working memory for Argon2id, kept between hashes by whoever hashes in a loop.
///
/// Allocating and zeroing `m` KiB for every hash (19 MiB by default) costs a large share of
/// the hash itself, in page faults and memset; one `HashMemory` per hashing thread avoids it.
/// The memory grows to the configured cost and stays there. A stored hash that asks for more
/// than the configured cost gets a temporary block, so one odd row cannot pin gigabytes.
#[derive(Default)]
pub struct HashMemory(Vec<Block>);

impl fmt::Debug for HashMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashMemory({} KiB)", self.0.len())
    }
}

impl HashMemory {
    fn with_blocks<T>(
        &mut self,
        needed: &Params,
        configured: &Params,
        f: impl FnOnce(&mut [Block]) -> T,
    ) -> T {
        let count = needed.block_count();
        if count > configured.block_count() {
            return f(&mut vec![Block::default(); count]);
        }
        if self.0.len() < count {
            self.0.resize(count, Block::default());
        }
        f(&mut self.0[..count])
    }
}

fn argon2_params(p: Argon2Params) -> Result<Params, HashError> {
    let invalid =
        |field: &'static str, message: String| HashError::InvalidArgon2Params { field, message };
    if p.parallelism < Params::MIN_P_COST || p.parallelism > Params::MAX_P_COST {
        return Err(invalid(
            "parallelism",
            format!(
                "must be between {} and {}, got {}",
                Params::MIN_P_COST,
                Params::MAX_P_COST,
                p.parallelism
            ),
        ));
    }
    if p.iterations < Params::MIN_T_COST {
        return Err(invalid(
            "iterations",
            format!(
                "must be at least {}, got {}",
                Params::MIN_T_COST,
                p.iterations
            ),
        ));
    }
    let min_memory = Params::MIN_M_COST.max(p.parallelism.saturating_mul(8));
    if p.memory_kib < min_memory || p.memory_kib > MAX_ARGON2_MEMORY_KIB {
        return Err(invalid(
            "memory_kib",
            format!(
                "must be between {min_memory} (8 per lane) and {MAX_ARGON2_MEMORY_KIB} (4 GiB), got {}",
                p.memory_kib
            ),
        ));
    }
    Params::new(p.memory_kib, p.iterations, p.parallelism, None)
        .map_err(|e| invalid("memory_kib", e.to_string()))
}

fn hashing_error(e: impl fmt::Display) -> HashError {
    HashError::Hashing(e.to_string())
}

/// A hash string taken apart; built for every parse and verify so both apply the same rules.
#[expect(
    clippy::large_enum_variant,
    reason = "short-lived stack value, one per parse or verify"
)]
enum Decoded<'a> {
    Argon2 {
        phc: PhcHash<'a>,
        params: Params,
        salt_len: usize,
    },
    Pbkdf2 {
        rounds: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl<'a> Decoded<'a> {
    fn decode(s: &'a str) -> Result<Self, HashError> {
        if s.starts_with(ARGON2ID_PREFIX) {
            Self::argon2(s)
        } else if let Some(rest) = s.strip_prefix(PBKDF2_PREFIX) {
            Self::pbkdf2(rest)
        } else {
            Err(HashError::UnsupportedScheme)
        }
    }

    fn argon2(s: &'a str) -> Result<Self, HashError> {
        let phc = PhcHash::new(s).map_err(|_| HashError::Malformed("not a valid PHC string"))?;
        if phc.algorithm != argon2::ARGON2ID_IDENT {
            return Err(HashError::UnsupportedScheme);
        }
        if let Some(v) = phc.version {
            Version::try_from(v).map_err(|_| HashError::Malformed("unknown argon2 version"))?;
        }
        let params = Params::try_from(&phc)
            .map_err(|_| HashError::Malformed("invalid argon2 parameters"))?;
        if params.m_cost() > MAX_ARGON2_MEMORY_KIB {
            return Err(HashError::Malformed("argon2 memory cost above 4 GiB"));
        }
        if phc.hash.is_none() {
            return Err(HashError::Malformed("missing hash"));
        }
        let salt = phc.salt.ok_or(HashError::Malformed("missing salt"))?;
        let mut buf = [0u8; 64];
        let salt_len = salt
            .decode_b64(&mut buf)
            .map_err(|_| HashError::Malformed("salt is not valid base64"))?
            .len();
        if salt_len < MIN_SALT_LEN {
            return Err(HashError::Malformed("salt shorter than 8 bytes"));
        }
        Ok(Self::Argon2 {
            phc,
            params,
            salt_len,
        })
    }

    fn pbkdf2(rest: &str) -> Result<Self, HashError> {
        let mut parts = rest.split('$');
        let (Some(rounds), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(HashError::Malformed(
                "expected $pbkdf2-sha512$ROUNDS$SALT$HASH",
            ));
        };
        // passlib refuses zero-padded rounds; u32::from_str alone would accept "+5" and "007".
        if rounds.is_empty()
            || !rounds.bytes().all(|b| b.is_ascii_digit())
            || (rounds.starts_with('0'))
        {
            return Err(HashError::Malformed(
                "rounds must be a positive decimal number",
            ));
        }
        let rounds = rounds
            .parse::<u32>()
            .map_err(|_| HashError::Malformed("rounds out of range"))?;
        let salt = ab64_decode(salt).ok_or(HashError::Malformed("salt is not valid ab64"))?;
        if salt.len() < MIN_SALT_LEN {
            return Err(HashError::Malformed("salt shorter than 8 bytes"));
        }
        let hash = ab64_decode(hash).ok_or(HashError::Malformed("hash is not valid ab64"))?;
        if hash.len() != PBKDF2_OUTPUT_LEN {
            return Err(HashError::Malformed("pbkdf2-sha512 hash must be 64 bytes"));
        }
        Ok(Self::Pbkdf2 { rounds, salt, hash })
    }
}

/// passlib's "adapted base64": standard alphabet with `.` for `+`, no padding.
fn ab64_encode(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes).replace('+', ".")
}

fn ab64_decode(s: &str) -> Option<Vec<u8>> {
    if s.contains('+') {
        return None;
    }
    STANDARD_NO_PAD.decode(s.replace('.', "+")).ok()
}
