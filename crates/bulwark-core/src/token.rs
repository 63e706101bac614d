//! Random tokens (sessions, reset and invitation links, setup) and CSRF tokens.
//!
//! Tokens carry 256 random bits and are stored only as their SHA-256 digest: a stolen
//! database does not yield usable tokens, and lookups by digest need no constant-time compare.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

use crate::{hex, SecretString};

/// The SHA-256 digest of a token, hex-encoded: what the store keeps.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(String);

impl TokenHash {
    /// Digest of a token as presented by a client.
    pub fn of(token: &str) -> Self {
        Self(hex(&Sha256::digest(token.as_bytes())))
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

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even the digest is withheld: it identifies a live session in the store.
        f.write_str("TokenHash(<redacted>)")
    }
}

/// A fresh random token: the secret for the client and its digest for the store.
pub fn generate() -> (SecretString, TokenHash) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = TokenHash::of(&token);
    (SecretString::new(token), hash)
}

/// Whether a client-supplied string has the shape of a token (bounds work on junk input).
pub fn looks_like_token(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The CSRF token for a browser: an HMAC of its CSRF cookie under the server key, so a
/// cookie planted by a sibling subdomain is useless without the matching form value.
pub fn csrf_token(key: &[u8], cookie_value: &str) -> String {
    URL_SAFE_NO_PAD.encode(csrf_mac(key, cookie_value))
}

/// Constant-time check of a submitted CSRF token against the browser's cookie.
pub fn csrf_matches(key: &[u8], cookie_value: &str, submitted: &str) -> bool {
    let expected = csrf_token(key, cookie_value);
    !cookie_value.is_empty() && bool::from(expected.as_bytes().ct_eq(submitted.as_bytes()))
}

fn csrf_mac(key: &[u8], cookie_value: &str) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(b"bulwark-csrf-v1:");
    mac.update(cookie_value.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_lower_hex_sha256() {
        assert_eq!(
            TokenHash::of("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn generated_tokens_are_unique_and_hash_consistently() {
        let (a, ha) = generate();
        let (b, hb) = generate();
        assert_ne!(a.expose(), b.expose());
        assert!(looks_like_token(a.expose()));
        assert_eq!(TokenHash::of(a.expose()), ha);
        assert_ne!(ha, hb);
        assert_eq!(ha.as_str().len(), 64);
        assert!(!format!("{ha:?}").contains(ha.as_str()));
    }

    #[test]
    fn csrf_token_binds_cookie_and_key() {
        let key = b"k1";
        let t = csrf_token(key, "cookie-a");
        assert!(csrf_matches(key, "cookie-a", &t));
        assert!(!csrf_matches(key, "cookie-b", &t));
        assert!(!csrf_matches(b"k2", "cookie-a", &t));
        assert!(!csrf_matches(key, "cookie-a", ""));
        assert!(!csrf_matches(key, "", &csrf_token(key, "")));
    }

    #[test]
    fn junk_is_not_a_token() {
        assert!(!looks_like_token("short"));
        assert!(!looks_like_token(&"é".repeat(43)));
    }
}
