//! The audit log's hash chain.
//!
//! Every audit record carries the hash of the record before it (`prev_hash`) and its own hash,
//! `SHA-256(domain ‖ prev_hash ‖ id ‖ at ‖ actor ‖ subject ‖ event ‖ outcome ‖ detail ‖ ip ‖
//! user_agent)`, each field length-prefixed so that no two records encode alike. Changing a
//! field breaks that record's hash; deleting a record breaks the next record's `prev_hash`.
//!
//! Pruning old records (the retention setting) leaves a *checkpoint*: the id and hash of the
//! last pruned record, signed with a server key (HMAC-SHA-256). The chain then starts from the
//! checkpoint instead of the genesis hash, and nobody without the key can forge one.
//!
//! [`ChainVerifier`] walks records in id order and names the first broken link.

use crate::hex;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record ever written: 64 hex zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The fields of an audit record that its hash covers.
#[derive(Debug, Clone, Copy)]
pub struct LinkFields<'a> {
    pub id: i64,
    pub at: i64,
    pub actor: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub event: &'a str,
    pub outcome: &'a str,
    pub detail: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// The hash (lower-case hex) of a record whose predecessor's hash is `prev_hash`.
pub fn link_hash(prev_hash: &str, f: &LinkFields<'_>) -> String {
    let mut h = Sha256::new();
    h.update(b"bulwark audit v1\0");
    put_str(&mut h, prev_hash);
    h.update(f.id.to_be_bytes());
    h.update(f.at.to_be_bytes());
    for field in [f.actor, f.subject] {
        put_opt(&mut h, field);
    }
    put_str(&mut h, f.event);
    put_str(&mut h, f.outcome);
    for field in [f.detail, f.ip, f.user_agent] {
        put_opt(&mut h, field);
    }
    hex(&h.finalize())
}

fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

fn put_opt(h: &mut Sha256, s: Option<&str>) {
    match s {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            put_str(h, s);
        }
    }
}

/// What a checkpoint vouches for: every record up to `last_id` was pruned at `at` and the
/// last of them hashed to `last_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFields<'a> {
    pub at: i64,
    pub last_id: i64,
    pub last_hash: &'a str,
}

/// The signature (lower-case hex HMAC-SHA-256) of a checkpoint under `key`.
pub fn sign_checkpoint(key: &[u8; 32], c: &CheckpointFields<'_>) -> String {
    hex(&checkpoint_mac(key, c).finalize().into_bytes())
}

/// Whether `signature` is the signature of `c` under `key` (constant-time).
pub fn checkpoint_signature_ok(key: &[u8; 32], c: &CheckpointFields<'_>, signature: &str) -> bool {
    let Some(bytes) = unhex(signature) else {
        return false;
    };
    checkpoint_mac(key, c).verify_slice(&bytes).is_ok()
}

fn checkpoint_mac(key: &[u8; 32], c: &CheckpointFields<'_>) -> Hmac<Sha256> {
    // A 32-byte key is always a valid HMAC key; the fallback is unreachable.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(b"bulwark audit checkpoint v1\0");
    mac.update(&c.at.to_be_bytes());
    mac.update(&c.last_id.to_be_bytes());
    mac.update(&(c.last_hash.len() as u64).to_be_bytes());
    mac.update(c.last_hash.as_bytes());
    mac
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// The first broken link of a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// The record's own hash does not match its contents: it was altered.
    #[error("record {id} was altered: its contents do not match its hash")]
    Altered { id: i64 },
    /// The record does not follow the one before it: records between were deleted (or the
    /// first records were deleted without a checkpoint).
    #[error("the chain is broken before record {id}: {what}")]
    Missing { id: i64, what: String },
    /// The record has no hash (written outside Bulwark).
    #[error("record {id} carries no hash")]
    Unsealed { id: i64 },
}

/// Walks records in increasing id order; the first [`ChainBreak`] stops the walk.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    expected_prev: String,
    after: Option<i64>,
    checked: u64,
}

impl ChainVerifier {
    /// A walk from the first record ever written.
    pub fn from_genesis() -> Self {
        ChainVerifier {
            expected_prev: GENESIS.to_string(),
            after: None,
            checked: 0,
        }
    }

    /// A walk from a (verified) checkpoint: the next record must follow `last_hash`.
    pub fn from_checkpoint(last_id: i64, last_hash: &str) -> Self {
        ChainVerifier {
            expected_prev: last_hash.to_string(),
            after: Some(last_id),
            checked: 0,
        }
    }

    /// Checks the next record, given its fields and its stored `prev_hash` and `hash`.
    pub fn push(
        &mut self,
        fields: &LinkFields<'_>,
        prev_hash: Option<&str>,
        hash: Option<&str>,
    ) -> Result<(), ChainBreak> {
        let id = fields.id;
        let (Some(prev_hash), Some(hash)) = (prev_hash, hash) else {
            return Err(ChainBreak::Unsealed { id });
        };
        if let Some(after) = self.after {
            if id <= after {
                return Err(ChainBreak::Missing {
                    id,
                    what: format!("it comes after record {after} out of order"),
                });
            }
        }
        if prev_hash != self.expected_prev {
            let what = match self.after {
                None => "the first records of the log are gone".to_string(),
                Some(after) if self.checked == 0 => {
                    format!("records after the checkpoint at {after} are gone")
                }
                Some(after) => format!("records between {after} and {id} are gone"),
            };
            return Err(ChainBreak::Missing { id, what });
        }
        if link_hash(prev_hash, fields) != hash {
            return Err(ChainBreak::Altered { id });
        }
        self.expected_prev = hash.to_string();
        self.after = Some(id);
        self.checked += 1;
        Ok(())
    }

    /// Records checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The id and hash of the last record checked (the head, once the walk is done).
    pub fn head(&self) -> Option<(i64, &str)> {
        self.after.map(|id| (id, self.expected_prev.as_str()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]
    use super::*;

    fn fields(id: i64, event: &str) -> LinkFields<'_> {
        LinkFields {
            id,
            at: 1_800_000_000 + id,
            actor: Some("alice"),
            subject: Some("alice"),
            event,
            outcome: "success",
            detail: None,
            ip: Some("192.0.2.7"),
            user_agent: None,
        }
    }

    fn chain(n: i64) -> Vec<(i64, String, String)> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|id| {
                let hash = link_hash(&prev, &fields(id, "login"));
                let row = (id, prev.clone(), hash.clone());
                prev = hash;
                row
            })
            .collect()
    }

    fn verify(rows: &[(i64, String, String)], mut v: ChainVerifier) -> Result<u64, ChainBreak> {
        for (id, prev, hash) in rows {
            v.push(&fields(*id, "login"), Some(prev), Some(hash))?;
        }
        Ok(v.checked())
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let rows = chain(5);
        let mut v = ChainVerifier::from_genesis();
        for (id, prev, hash) in &rows {
            v.push(&fields(*id, "login"), Some(prev), Some(hash))
                .unwrap();
        }
        assert_eq!(v.checked(), 5);
        assert_eq!(v.head(), Some((5, rows[4].2.as_str())));
        assert_eq!(rows[0].1, GENESIS);
        assert_eq!(rows[0].2.len(), 64);
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let base = fields(3, "login");
        let h = link_hash(GENESIS, &base);
        let variants = [
            LinkFields { id: 4, ..base },
            LinkFields { at: 0, ..base },
            LinkFields {
                actor: None,
                ..base
            },
            LinkFields {
                subject: Some("bob"),
                ..base
            },
            LinkFields {
                event: "logout",
                ..base
            },
            LinkFields {
                outcome: "failure",
                ..base
            },
            LinkFields {
                detail: Some(""),
                ..base
            },
            LinkFields { ip: None, ..base },
            LinkFields {
                user_agent: Some("x"),
                ..base
            },
        ];
        for v in variants {
            assert_ne!(link_hash(GENESIS, &v), h, "{v:?}");
        }
        assert_ne!(link_hash(&"1".repeat(64), &base), h);
        // Field boundaries are unambiguous: moving a character between fields changes the hash.
        let a = LinkFields {
            actor: Some("ab"),
            subject: Some("c"),
            ..base
        };
        let b = LinkFields {
            actor: Some("a"),
            subject: Some("bc"),
            ..base
        };
        assert_ne!(link_hash(GENESIS, &a), link_hash(GENESIS, &b));
    }

    #[test]
    fn an_altered_record_is_named() {
        let rows = chain(4);
        let mut v = ChainVerifier::from_genesis();
        v.push(&fields(1, "login"), Some(&rows[0].1), Some(&rows[0].2))
            .unwrap();
        v.push(&fields(2, "login"), Some(&rows[1].1), Some(&rows[1].2))
            .unwrap();
        assert_eq!(
            v.push(&fields(3, "logout"), Some(&rows[2].1), Some(&rows[2].2)),
            Err(ChainBreak::Altered { id: 3 })
        );
    }

    #[test]
    fn a_deleted_record_breaks_the_next_link() {
        let mut rows = chain(4);
        rows.remove(1);
        let err = verify(&rows, ChainVerifier::from_genesis()).unwrap_err();
        assert!(matches!(err, ChainBreak::Missing { id: 3, .. }), "{err:?}");
        assert!(err.to_string().contains("between 1 and 3"), "{err}");
    }

    #[test]
    fn reordered_records_are_caught() {
        // Two records swapped in place (each keeps its stored hashes)...
        let mut rows = chain(4);
        rows.swap(1, 2);
        let err = verify(&rows, ChainVerifier::from_genesis()).unwrap_err();
        assert!(matches!(err, ChainBreak::Missing { id: 3, .. }), "{err:?}");
        // ...or their contents swapped between ids (the id is part of the hash).
        let rows = chain(4);
        let mut v = ChainVerifier::from_genesis();
        v.push(&fields(1, "login"), Some(&rows[0].1), Some(&rows[0].2))
            .unwrap();
        let moved = LinkFields {
            at: fields(3, "login").at,
            ..fields(2, "login")
        };
        assert_eq!(
            v.push(&moved, Some(&rows[1].1), Some(&rows[1].2)),
            Err(ChainBreak::Altered { id: 2 })
        );
    }

    #[test]
    fn deleting_the_first_records_is_caught_without_a_checkpoint() {
        let rows = chain(4);
        let err = verify(&rows[2..], ChainVerifier::from_genesis()).unwrap_err();
        assert!(matches!(err, ChainBreak::Missing { id: 3, .. }), "{err:?}");
    }

    #[test]
    fn a_checkpoint_lets_the_chain_start_later() {
        let rows = chain(6);
        let v = ChainVerifier::from_checkpoint(3, &rows[2].2);
        assert_eq!(verify(&rows[3..], v).unwrap(), 3);
        // ...but not skip records after it.
        let v = ChainVerifier::from_checkpoint(3, &rows[2].2);
        let err = verify(&rows[4..], v).unwrap_err();
        assert!(err.to_string().contains("after the checkpoint"), "{err}");
    }

    #[test]
    fn a_record_without_hash_is_unsealed() {
        let mut v = ChainVerifier::from_genesis();
        assert_eq!(
            v.push(&fields(1, "login"), None, None),
            Err(ChainBreak::Unsealed { id: 1 })
        );
    }

    #[test]
    fn checkpoint_signatures_need_the_key_and_cover_every_field() {
        let key = [7u8; 32];
        let c = CheckpointFields {
            at: 1_800_000_000,
            last_id: 41,
            last_hash: GENESIS,
        };
        let sig = sign_checkpoint(&key, &c);
        assert!(checkpoint_signature_ok(&key, &c, &sig));
        assert!(!checkpoint_signature_ok(&[8u8; 32], &c, &sig));
        assert!(!checkpoint_signature_ok(&key, &c, "zz"));
        assert!(!checkpoint_signature_ok(&key, &c, ""));
        for other in [
            CheckpointFields { at: 0, ..c.clone() },
            CheckpointFields {
                last_id: 42,
                ..c.clone()
            },
            CheckpointFields {
                last_hash: "ab",
                ..c.clone()
            },
        ] {
            assert!(!checkpoint_signature_ok(&key, &other, &sig), "{other:?}");
        }
    }
}
