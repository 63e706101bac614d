//! Recovery codes: ten one-time codes that stand in for the authenticator when it is lost.
//!
//! Each code is 12 symbols of Crockford's base32 alphabet (`0-9` and `a-z` without `i`, `l`,
//! `o`, `u`): 5 bits per symbol, 60 bits per code, shown as `xxxx-xxxx-xxxx`. The alphabet
//! has no `i`, `l` or `o`, so a user who reads `1` as `l` or `0` as `o` and types that is
//! understood: [`normalize`] maps `i`/`l` to `1` and `o` to `0`, as Crockford's spec says.
//! `u` is left out so codes never spell the usual rude words.
//!
//! The store keeps only [`hash_code`]: an HMAC under a server key rather than a plain digest,
//! because 60 bits is few enough that someone holding a stolen database, but not the key,
//! could otherwise test guesses offline. Lookups go by that hash, so no constant-time
//! comparison is needed; consuming a code is an atomic conditional update
//! (`used_at` set only if still unset) in the store.

use crate::SecretString;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;

/// Codes issued per set (shown once at enrolment and on regeneration).
pub const CODES_PER_SET: usize = 10;
/// Symbols per code, without the dashes: 12 × 5 bits = 60 bits.
pub const CODE_SYMBOLS: usize = 12;

/// Crockford's base32 alphabet, lowercase: 32 symbols so each one carries exactly 5 bits.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Longest input looked at before normalizing; anything longer is junk.
const MAX_INPUT: usize = 64;

/// One recovery code, held in its display form `xxxx-xxxx-xxxx`. Never printed by `Debug`.
#[derive(Clone)]
pub struct RecoveryCode(SecretString);

impl RecoveryCode {
    /// The grouped form shown to the user once, e.g. `7k2m-q9xd-4hbn`.
    pub fn display(&self) -> &str {
        self.0.expose()
    }

    /// The form [`hash_code`] expects, for storing this code's hash.
    pub fn normalized(&self) -> String {
        self.0.expose().replace('-', "")
    }
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(<redacted>)")
    }
}

/// A fresh set of [`CODES_PER_SET`] distinct codes from the operating system's RNG.
pub fn generate_set() -> Vec<RecoveryCode> {
    let mut codes: Vec<RecoveryCode> = Vec::with_capacity(CODES_PER_SET);
    while codes.len() < CODES_PER_SET {
        let code = generate_one();
        // A repeat within a set (chance about 2^-54) would leave the user one code short.
        if !codes.iter().any(|c| c.display() == code.display()) {
            codes.push(code);
        }
    }
    codes
}

fn generate_one() -> RecoveryCode {
    let random = rand::rngs::OsRng.next_u64();
    let mut out = String::with_capacity(CODE_SYMBOLS + 2);
    for i in 0..CODE_SYMBOLS {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        // 32 symbols and 5-bit slices: every symbol equally likely, no modulo bias.
        let index = (random >> (5 * i)) & 0x1f;
        out.push(char::from(ALPHABET[index as usize]));
    }
    RecoveryCode(SecretString::new(out))
}

/// The canonical form of a typed code (12 lowercase symbols), or `None` if it cannot be one.
///
/// Case, spaces and dashes are ignored; `o` becomes `0` and `i`/`l` become `1`.
pub fn normalize(input: &str) -> Option<String> {
    if input.len() > MAX_INPUT {
        return None;
    }
    let mut out = String::with_capacity(CODE_SYMBOLS);
    for c in input.chars() {
        let c = match c.to_ascii_lowercase() {
            c if c.is_whitespace() || c == '-' => continue,
            'o' => '0',
            'i' | 'l' => '1',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
            return None;
        }
        out.push(c);
    }
    (out.len() == CODE_SYMBOLS).then_some(out)
}

/// Hex HMAC-SHA256 of a normalized code under the server key: the only form the store keeps.
pub fn hash_code(key: &[u8], normalized: &str) -> String {
    // HMAC accepts keys of any length, so the error branch is unreachable.
    let digest = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            // Domain separation: the same server key may also sign other things.
            mac.update(b"bulwark-recovery-v1:");
            mac.update(normalized.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    };
    crate::hex(&digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_set_has_ten_distinct_well_formed_codes() {
        let set = generate_set();
        assert_eq!(set.len(), CODES_PER_SET);
        let distinct: HashSet<&str> = set.iter().map(RecoveryCode::display).collect();
        assert_eq!(distinct.len(), CODES_PER_SET);
        for code in &set {
            let shown = code.display();
            assert_eq!(shown.len(), 14);
            let groups: Vec<&str> = shown.split('-').collect();
            assert_eq!(groups.len(), 3);
            assert!(groups.iter().all(|g| g.len() == 4));
            assert_eq!(normalize(shown), Some(code.normalized()));
        }
    }

    #[test]
    fn codes_use_every_symbol_and_no_look_alikes() {
        let mut seen = HashSet::new();
        for _ in 0..50 {
            for code in generate_set() {
                seen.extend(code.normalized().chars());
            }
        }
        assert_eq!(seen.len(), 32, "6000 symbols should cover all 32");
        for c in ['i', 'l', 'o', 'u'] {
            assert!(!seen.contains(&c));
        }
    }

    #[test]
    fn normalize_forgives_case_spacing_and_confusions() {
        assert_eq!(normalize("7K2M-Q9XD-4HBN").as_deref(), Some("7k2mq9xd4hbn"));
        assert_eq!(
            normalize(" 7k2m q9xd 4hbn ").as_deref(),
            Some("7k2mq9xd4hbn")
        );
        assert_eq!(normalize("oOiI-lL00-1111").as_deref(), Some("001111001111"));
    }

    #[test]
    fn normalize_refuses_wrong_length_and_symbols() {
        assert_eq!(normalize(""), None);
        assert_eq!(normalize("7k2m-q9xd-4hb"), None);
        assert_eq!(normalize("7k2m-q9xd-4hbnn"), None);
        assert_eq!(normalize("7k2m-q9xd-4hbu"), None);
        assert_eq!(normalize("7k2m-q9xd-4hb!"), None);
        assert_eq!(normalize("7k2m-q9xd-4hbé"), None);
        assert_eq!(normalize(&"a".repeat(10_000)), None);
    }

    #[test]
    fn hash_is_keyed_and_deterministic() {
        let h = hash_code(b"key-1", "7k2mq9xd4hbn");
        assert_eq!(h.len(), 64);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(h, hash_code(b"key-1", "7k2mq9xd4hbn"));
        assert_ne!(h, hash_code(b"key-2", "7k2mq9xd4hbn"));
        assert_ne!(h, hash_code(b"key-1", "7k2mq9xd4hbm"));
        assert!(!h.contains("7k2m"));
    }

    #[test]
    fn debug_never_shows_the_code() {
        let code = generate_one();
        let shown = format!("{code:?}");
        assert!(!shown.contains(code.display()));
        assert!(!shown.contains(&code.normalized()));
    }
}
