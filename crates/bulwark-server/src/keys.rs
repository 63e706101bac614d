//! The server's key ring: where CSRF keys and the TOTP-secret encryption key come from.
//!
//! The ring lives in a file in the data directory (mode 0600, created on first start) or in
//! the `secret_key` setting (`BULWARK_SECRET_KEY`), never in the database: a stolen database
//! alone does not reveal any TOTP secret. Each line is `ID:BASE64-32-BYTES`; the first key is
//! current (seals new secrets, keys CSRF tokens), the others only open older secrets.
//! `bulwark key rotate` puts a new key first and re-seals every secret; nodes that meet a key
//! id they do not know re-read the file, so rotation needs no downtime.
//!
//! Sub-keys are derived per purpose (HMAC-SHA256 of a label), so the CSRF key and the AEAD
//! key are never the same bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use std::path::Path;

/// Why keys could not be loaded or a secret not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key ring is empty")]
    Empty,
    #[error("key ring line {0} is not `ID:BASE64` with a 32-byte key")]
    BadLine(usize),
    #[error("key ring has key id `{0}` twice")]
    DuplicateId(String),
    #[error("no key with id `{0}` in the key ring")]
    UnknownKey(String),
    #[error("a sealed secret failed to decrypt (wrong key or altered data)")]
    Corrupt,
    #[error("{0}")]
    Io(String),
}

#[derive(Clone)]
struct Key {
    id: String,
    bytes: [u8; 32],
}

/// The loaded keys; the first is current.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("KeyRing")
            .field("ids", &ids)
            .finish_non_exhaustive()
    }
}

fn derive(key: &[u8; 32], label: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) {
        mac.update(label.as_bytes());
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

impl KeyRing {
    /// Parses ring text. A single bare base64 line is accepted as key `k0`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<Key> = Vec::new();
        for (n, line) in text
            .lines()
            .map(str::trim)
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        {
            let (id, b64) = line.split_once(':').unwrap_or(("k0", line));
            let id = id.trim();
            let valid_id = !id.is_empty()
                && id.len() <= 32
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            let bytes = STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok());
            match (valid_id, bytes) {
                (true, Some(bytes)) => {
                    if keys.iter().any(|k| k.id == id) {
                        return Err(KeyError::DuplicateId(id.to_string()));
                    }
                    keys.push(Key {
                        id: id.to_string(),
                        bytes,
                    });
                }
                _ => return Err(KeyError::BadLine(n + 1)),
            }
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { keys })
    }

    /// A ring with one fresh random key.
    pub fn generate() -> Self {
        Self {
            keys: vec![new_key()],
        }
    }

    /// The same ring with a fresh key in front (the old ones still open old secrets).
    pub fn rotated(&self) -> Self {
        let mut keys = vec![new_key()];
        keys.extend(self.keys.iter().cloned());
        Self { keys }
    }

    /// The ring as file text.
    pub fn to_text(&self) -> String {
        self.keys
            .iter()
            .map(|k| format!("{}:{}\n", k.id, STANDARD.encode(k.bytes)))
            .collect()
    }

    /// Id of the current key.
    pub fn current_id(&self) -> &str {
        self.keys.first().map(|k| k.id.as_str()).unwrap_or("")
    }

    /// Key ids, current first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    fn current(&self) -> Result<&Key, KeyError> {
        self.keys.first().ok_or(KeyError::Empty)
    }

    /// The key for CSRF tokens (derived from the current key).
    pub fn csrf_key(&self) -> [u8; 32] {
        self.current()
            .map(|k| derive(&k.bytes, "bulwark csrf v1"))
            .unwrap_or([0; 32])
    }

    /// The key for keyed hashes of recovery and e-mailed codes. Derived from the OLDEST key so
    /// rotation does not invalidate stored code hashes.
    pub fn code_hash_key(&self) -> [u8; 32] {
        self.keys
            .last()
            .map(|k| derive(&k.bytes, "bulwark code hash v1"))
            .unwrap_or([0; 32])
    }

    /// The id and key that sign audit checkpoints now (derived from the current key).
    pub fn audit_signing_key(&self) -> Result<(&str, [u8; 32]), KeyError> {
        let k = self.current()?;
        Ok((&k.id, derive(&k.bytes, "bulwark audit checkpoint v1")))
    }

    /// The key that signed an audit checkpoint with key id `id`, if the ring still has it.
    pub fn audit_verifying_key(&self, id: &str) -> Option<[u8; 32]> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .map(|k| derive(&k.bytes, "bulwark audit checkpoint v1"))
    }

    /// Encrypts `plaintext` under the current key, bound to `aad` (e.g. the user id), and
    /// returns (key id, sealed text).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<(String, String), KeyError> {
        let key = self.current()?;
        let cipher = XChaCha20Poly1305::new(&derive(&key.bytes, "bulwark totp aead v1").into());
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| KeyError::Corrupt)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok((key.id.clone(), STANDARD.encode(out)))
    }

    /// Decrypts a sealed text made by [`KeyRing::seal`] under key `key_id` with the same `aad`.
    pub fn open(&self, key_id: &str, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| KeyError::UnknownKey(key_id.to_string()))?;
        let raw = STANDARD.decode(sealed).map_err(|_| KeyError::Corrupt)?;
        if raw.len() < 24 + 16 {
            return Err(KeyError::Corrupt);
        }
        let (nonce, ct) = raw.split_at(24);
        let cipher = XChaCha20Poly1305::new(&derive(&key.bytes, "bulwark totp aead v1").into());
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| KeyError::Corrupt)
    }
}

fn new_key() -> Key {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut id = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut id);
    Key {
        id: format!(
            "k{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        bytes,
    }
}

/// Reads the ring from `path`, creating a new one (mode 0600) if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<KeyRing, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => KeyRing::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ring = KeyRing::generate();
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    KeyError::Io(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            crate::app::write_private(path, ring.to_text().as_bytes())
                .map_err(|e| KeyError::Io(format!("cannot write {}: {e}", path.display())))?;
            Ok(ring)
        }
        Err(e) => Err(KeyError::Io(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Replaces the ring file atomically (write a private temp file, then rename).
pub fn replace_file(path: &Path, ring: &KeyRing) -> Result<(), KeyError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    crate::app::write_private(&tmp, ring.to_text().as_bytes())
        .map_err(|e| KeyError::Io(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| KeyError::Io(format!("cannot replace {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_bound_to_aad() {
        let ring = KeyRing::generate();
        let (id, sealed) = ring.seal(b"JBSWY3DPEHPK3PXP", b"user:1").unwrap();
        assert_eq!(id, ring.current_id());
        assert!(!sealed.contains("JBSWY3DP"));
        assert_eq!(
            ring.open(&id, &sealed, b"user:1").unwrap(),
            b"JBSWY3DPEHPK3PXP"
        );
        assert_eq!(
            ring.open(&id, &sealed, b"user:2"),
            Err(KeyError::Corrupt),
            "bound to its row"
        );
        let mut tampered = STANDARD.decode(&sealed).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            ring.open(&id, &STANDARD.encode(tampered), b"user:1"),
            Err(KeyError::Corrupt)
        );
        assert_eq!(
            ring.open(&id, "not base64!", b"user:1"),
            Err(KeyError::Corrupt)
        );
        assert!(matches!(
            ring.open("other", &sealed, b"user:1"),
            Err(KeyError::UnknownKey(_))
        ));
    }

    #[test]
    fn rotation_keeps_old_secrets_readable_and_code_hash_key_stable() {
        let ring = KeyRing::generate();
        let (old_id, sealed) = ring.seal(b"secret", b"a").unwrap();
        let rotated = ring.rotated();
        assert_ne!(rotated.current_id(), old_id);
        assert_eq!(rotated.open(&old_id, &sealed, b"a").unwrap(), b"secret");
        assert_eq!(rotated.code_hash_key(), ring.code_hash_key());
        assert_ne!(rotated.csrf_key(), ring.csrf_key());
        let reparsed = KeyRing::parse(&rotated.to_text()).unwrap();
        assert_eq!(reparsed.ids(), rotated.ids());
    }

    #[test]
    fn derived_keys_differ_by_purpose() {
        let ring = KeyRing::generate();
        assert_ne!(ring.csrf_key(), ring.code_hash_key());
    }

    #[test]
    fn bad_ring_text_is_refused_with_the_line() {
        assert_eq!(KeyRing::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(
            KeyRing::parse("k1:short").unwrap_err(),
            KeyError::BadLine(1)
        );
        let line = format!("k1:{}", STANDARD.encode([1u8; 32]));
        assert!(matches!(
            KeyRing::parse(&format!("{line}\n{line}\n")),
            Err(KeyError::DuplicateId(_))
        ));
        // The first release wrote one bare base64 line.
        assert_eq!(
            KeyRing::parse(&STANDARD.encode([2u8; 32]))
                .unwrap()
                .current_id(),
            "k0"
        );
    }

    #[test]
    fn debug_shows_ids_only() {
        let ring = KeyRing::generate();
        let shown = format!("{ring:?}");
        assert!(shown.contains(ring.current_id()));
        assert!(!shown.contains(&STANDARD.encode(ring.keys[0].bytes)));
    }
}
