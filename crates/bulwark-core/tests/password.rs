//! Password hashing (Argon2id, passlib/Odoo PBKDF2) and password policy, through the public API.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] fns fail the test on bad fixtures"
)]

use bulwark_core::password::hash::{
    Argon2Params, HashError, HashMemory, PasswordHash, PasswordHasher, Scheme, Verification,
};
use bulwark_core::password::policy::{PasswordPolicy, PolicyConfigError, PolicyViolation, Preset};
use bulwark_core::password::Password;
use std::sync::OnceLock;

fn pw(s: &str) -> Password {
    Password::parse(s.to_owned()).unwrap()
}

// ---------------------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------------------

const FIXTURES: &str = include_str!("fixtures/passlib_pbkdf2_sha512.txt");

/// (password, hash, rounds) from the passlib fixture file.
fn passlib_vectors() -> Vec<(&'static str, &'static str, u32)> {
    FIXTURES
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (password, hash) = l.split_once('\t').unwrap();
            let rounds = hash.split('$').nth(2).unwrap().parse().unwrap();
            (password, hash, rounds)
        })
        .collect()
}

fn cheap_params() -> Argon2Params {
    Argon2Params {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    }
}

fn argon2_hasher() -> PasswordHasher {
    PasswordHasher::new(Argon2Params::default(), Scheme::Argon2id, 600_000).unwrap()
}

/// Shared: `new` hashes a 600k-round dummy, and PBKDF2 is slow in debug builds.
fn pbkdf2_hasher() -> &'static PasswordHasher {
    static HASHER: OnceLock<PasswordHasher> = OnceLock::new();
    HASHER.get_or_init(|| {
        PasswordHasher::new(Argon2Params::default(), Scheme::Pbkdf2Sha512, 600_000).unwrap()
    })
}

#[test]
fn defaults_are_owasp_argon2id() {
    assert_eq!(
        Argon2Params::default(),
        Argon2Params {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1
        }
    );
    assert_eq!(Scheme::default(), Scheme::Argon2id);
}

#[test]
fn passlib_fixtures_verify_and_old_rounds_need_rehash() {
    let vectors = passlib_vectors();
    assert_eq!(vectors.len(), 6);
    assert!(vectors.iter().any(|(_, _, r)| *r == 600_000));
    assert!(vectors.iter().any(|(_, _, r)| *r < 600_000));
    assert!(vectors.iter().any(|(p, _, _)| !p.is_ascii()));
    assert!(vectors.iter().any(|(p, _, _)| p.chars().count() == 1));

    let hasher = pbkdf2_hasher();
    for (password, hash, rounds) in vectors {
        let stored = PasswordHash::parse(hash).unwrap();
        assert_eq!(stored.scheme(), Scheme::Pbkdf2Sha512);
        assert_eq!(stored.as_str(), hash);
        assert_eq!(
            hasher.verify(&pw(password), &stored),
            Verification::Valid {
                needs_rehash: rounds != 600_000
            },
            "passlib vector with {rounds} rounds"
        );
    }
}

#[test]
fn passlib_fixture_with_wrong_password_is_invalid() {
    let hasher = argon2_hasher();
    for (password, hash, rounds) in passlib_vectors() {
        if rounds == 600_000 {
            continue; // slow, and the low-round vectors exercise the same code
        }
        let stored = PasswordHash::parse(hash).unwrap();
        let wrong = format!("{password}!");
        assert_eq!(hasher.verify(&pw(&wrong), &stored), Verification::Invalid);
        let upper = password.to_uppercase();
        if upper != password {
            assert_eq!(hasher.verify(&pw(&upper), &stored), Verification::Invalid);
        }
    }
}

#[test]
fn odoo_hash_needs_rehash_when_scheme_is_argon2id() {
    let hasher = argon2_hasher();
    let (password, hash, _) = passlib_vectors()
        .into_iter()
        .find(|(_, _, r)| *r < 600_000)
        .unwrap();
    let stored = PasswordHash::parse(hash).unwrap();
    assert_eq!(
        hasher.verify(&pw(password), &stored),
        Verification::Valid { needs_rehash: true }
    );
}

#[test]
fn argon2id_round_trip() {
    let hasher = argon2_hasher();
    let password = pw("correct horse battery staple");
    let hash = hasher.hash(&password).unwrap();
    assert!(hash.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    assert_eq!(hash.scheme(), Scheme::Argon2id);
    assert_eq!(PasswordHash::parse(hash.as_str()).unwrap(), hash);
    assert_eq!(
        hasher.verify(&password, &hash),
        Verification::Valid {
            needs_rehash: false
        }
    );
    assert!(hasher.verify(&password, &hash).is_valid());
    assert_eq!(
        hasher.verify(&pw("correct horse battery stapler"), &hash),
        Verification::Invalid
    );
    // Fresh salt every time.
    assert_ne!(hasher.hash(&password).unwrap(), hash);
}

#[test]
fn argon2id_with_other_params_needs_rehash() {
    let current = argon2_hasher();
    let cheap = PasswordHasher::new(cheap_params(), Scheme::Argon2id, 600_000).unwrap();
    let password = pw("correct horse battery staple");

    let old = cheap.hash(&password).unwrap();
    assert!(old.as_str().starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
    assert_eq!(
        current.verify(&password, &old),
        Verification::Valid { needs_rehash: true }
    );
    // Stronger stored params than configured also differ: the configuration wins.
    let strong = current.hash(&password).unwrap();
    assert_eq!(
        cheap.verify(&password, &strong),
        Verification::Valid { needs_rehash: true }
    );
    for params in [
        Argon2Params {
            iterations: 3,
            ..Argon2Params::default()
        },
        Argon2Params {
            parallelism: 2,
            ..Argon2Params::default()
        },
    ] {
        let other = PasswordHasher::new(params, Scheme::Argon2id, 600_000).unwrap();
        let hash = other.hash(&password).unwrap();
        assert_eq!(
            current.verify(&password, &hash),
            Verification::Valid { needs_rehash: true },
            "{params:?}"
        );
    }
}

#[test]
fn reused_hash_memory_gives_the_same_answers() {
    use argon2::password_hash::{PasswordHash as Phc, PasswordVerifier as _};
    let current = argon2_hasher();
    let cheap = PasswordHasher::new(cheap_params(), Scheme::Argon2id, 600_000).unwrap();
    let wide = PasswordHasher::new(
        Argon2Params {
            parallelism: 2,
            ..cheap_params()
        },
        Scheme::Argon2id,
        600_000,
    )
    .unwrap();
    let password = pw("correct horse battery staple");
    let wrong = pw("correct horse battery stapler");
    let mut memory = HashMemory::default();
    let strong = current.hash_in(&mut memory, &password).unwrap();
    let small = cheap.hash_in(&mut memory, &password).unwrap();
    let lanes = wide.hash(&password).unwrap();
    // Hashes written through reused memory are ordinary Argon2id: the reference verifier
    // of the argon2 crate (fresh memory, its own PHC parsing) accepts them.
    for hash in [&strong, &small, &lanes] {
        let phc = Phc::new(hash.as_str()).unwrap();
        argon2::Argon2::default()
            .verify_password(password.expose().as_bytes(), &phc)
            .unwrap();
    }
    // One memory, used in turn for large, small and two-lane hashes, right and wrong
    // passwords: every answer is the one fresh memory gives.
    for _ in 0..2 {
        for hash in [&small, &strong, &lanes] {
            for candidate in [&password, &wrong] {
                assert_eq!(
                    current.verify_in(&mut memory, candidate, hash),
                    current.verify(candidate, hash),
                    "{hash:?}"
                );
            }
            assert!(current.verify_in(&mut memory, &password, hash).is_valid());
            assert!(!current.verify_in(&mut memory, &wrong, hash).is_valid());
        }
    }
    // A stored hash costlier than the configuration still verifies (in temporary memory).
    assert!(cheap.verify_in(&mut memory, &password, &strong).is_valid());
}

#[test]
fn argon2_hash_needs_rehash_when_scheme_is_pbkdf2() {
    let cheap = PasswordHasher::new(cheap_params(), Scheme::Argon2id, 600_000).unwrap();
    let pbkdf2 = PasswordHasher::new(cheap_params(), Scheme::Pbkdf2Sha512, 600_000).unwrap();
    let password = pw("correct horse battery staple");
    let hash = cheap.hash(&password).unwrap();
    assert_eq!(
        pbkdf2.verify(&password, &hash),
        Verification::Valid { needs_rehash: true }
    );
}

#[test]
fn argon2_cffi_hashes_verify() {
    // Made with argon2-cffi 25.1.0 (see tests/fixtures/README.md).
    let current = "$argon2id$v=19$m=19456,t=2,p=1$7f5075MlFifTGn1zumk9dg$CWCMrXEdVT9P8e3fgxrxg4KAkcSxIrRS8VIbDMvA2RA";
    let cffi_default = "$argon2id$v=19$m=65536,t=3,p=4$nOeU0uvgX/ALLJYWLM/yMw$r6d7EN8pF+S4/tOXJcYYHIA8g1ljJtx+SL8niRyIdFU";
    let hasher = argon2_hasher();
    let password = pw("correct horse battery staple");
    assert_eq!(
        hasher.verify(&password, &PasswordHash::parse(current).unwrap()),
        Verification::Valid {
            needs_rehash: false
        }
    );
    assert_eq!(
        hasher.verify(&password, &PasswordHash::parse(cffi_default).unwrap()),
        Verification::Valid { needs_rehash: true }
    );
    assert_eq!(
        hasher.verify(&pw("wrong"), &PasswordHash::parse(current).unwrap()),
        Verification::Invalid
    );
}

#[test]
fn pbkdf2_output_is_in_passlib_format() {
    let hasher = pbkdf2_hasher();
    let password = pw("Odoo@2025Inc#Sec");
    let hash = hasher.hash(&password).unwrap();
    let parts: Vec<&str> = hash.as_str().split('$').collect();
    assert_eq!(parts.len(), 5, "{parts:?}");
    assert_eq!(parts[0], "");
    assert_eq!(parts[1], "pbkdf2-sha512");
    assert_eq!(parts[2], "600000");
    // ab64 without padding: 16-byte salt is 22 chars, 64-byte digest is 86 chars.
    assert_eq!(parts[3].len(), 22);
    assert_eq!(parts[4].len(), 86);
    let ab64 = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '/')
    };
    assert!(ab64(parts[3]) && ab64(parts[4]));
    assert_eq!(hash.scheme(), Scheme::Pbkdf2Sha512);
    assert_eq!(PasswordHash::parse(hash.as_str()).unwrap(), hash);
    assert_eq!(
        hasher.verify(&password, &hash),
        Verification::Valid {
            needs_rehash: false
        }
    );
}

#[test]
fn malformed_hashes_are_parse_errors() {
    let good_pbkdf2 = passlib_vectors()[3].1;
    let salt_hash = good_pbkdf2.splitn(4, '$').nth(3).unwrap(); // "SALT$HASH"
    let (salt, hash) = salt_hash.split_once('$').unwrap();
    assert!(
        hash.contains('.'),
        "the '+' case below needs a '.' in the digest"
    );
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty"),
        ("hunter2".into(), "plain text"),
        ("$2b$12$abcdefghijklmnopqrstuu".into(), "bcrypt"),
        (
            "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
            "argon2i",
        ),
        ("$argon2id$".into(), "argon2id prefix only"),
        ("$argon2id$v=19$m=19456,t=2,p=1".into(), "no salt or hash"),
        (
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ".into(),
            "no hash",
        ),
        (
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA".into(),
            "4-byte salt",
        ),
        (
            "$argon2id$v=19$m=4294967295,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
            "4 TiB memory",
        ),
        (
            "$argon2id$v=19$m=19456,t=0,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
            "t=0",
        ),
        (
            "$argon2id$v=99$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
            "version 99",
        ),
        (
            "$argon2id$v=19$m=19456,t=2,p=1,x=3$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
            "unknown param",
        ),
        (
            "$argon2id$v=19$m=19456,t=2,p=1$c2Fs!HNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
            "bad salt chars",
        ),
        ("$pbkdf2-sha512$".into(), "pbkdf2 prefix only"),
        ("$pbkdf2-sha512$29000".into(), "rounds only"),
        (format!("$pbkdf2-sha512$29000${salt}"), "no hash"),
        (
            format!("$pbkdf2-sha512$abc${salt_hash}"),
            "rounds not a number",
        ),
        (
            format!("$pbkdf2-sha512$+29000${salt_hash}"),
            "signed rounds",
        ),
        (
            format!("$pbkdf2-sha512$029000${salt_hash}"),
            "zero-padded rounds",
        ),
        (format!("$pbkdf2-sha512$0${salt_hash}"), "zero rounds"),
        (
            format!("$pbkdf2-sha512$99999999999${salt_hash}"),
            "rounds overflow u32",
        ),
        (
            format!("$pbkdf2-sha512$29000${salt_hash}$extra"),
            "extra field",
        ),
        (format!("$pbkdf2-sha512$29000$c2FsdA${hash}"), "4-byte salt"),
        (
            format!("$pbkdf2-sha512$29000${salt}$aGFzaGhhc2hoYXNoaGFzaA"),
            "short digest",
        ),
        (format!("$pbkdf2-sha512$29000${salt}={hash}"), "padding"),
        (
            format!("$pbkdf2-sha512$29000${salt}${}", hash.replace('.', "+")),
            "'+' instead of '.'",
        ),
        (
            format!("$pbkdf2-sha512$29000${salt}${hash}\n"),
            "trailing newline",
        ),
        (
            format!(" $pbkdf2-sha512$29000${salt_hash}"),
            "leading space",
        ),
        (format!("$pbkdf2-sha256$29000${salt_hash}"), "pbkdf2-sha256"),
        (
            format!("$pbkdf2-sha512$29000${salt}${}", &hash[..85]),
            "truncated digest",
        ),
    ];
    for (input, why) in &cases {
        let err = PasswordHash::parse(input).expect_err(why);
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(
        PasswordHash::parse("$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"),
        Err(HashError::UnsupportedScheme)
    );
}

#[test]
fn every_prefix_of_a_hash_parses_without_panicking() {
    let hasher = PasswordHasher::new(cheap_params(), Scheme::Argon2id, 600_000).unwrap();
    let argon2 = hasher.hash(&pw("x")).unwrap();
    let pbkdf2 = passlib_vectors()[3].1;
    for s in [argon2.as_str(), pbkdf2] {
        for end in 0..s.len() {
            let _ = PasswordHash::parse(&s[..end]);
        }
    }
    for end in 0..pbkdf2.len() {
        assert!(PasswordHash::parse(&pbkdf2[..end]).is_err(), "prefix {end}");
    }
}

#[test]
fn debug_never_shows_the_hash() {
    let hasher = PasswordHasher::new(cheap_params(), Scheme::Argon2id, 600_000).unwrap();
    let hash = hasher.hash(&pw("hunter2-secret")).unwrap();
    let salt_and_digest = hash.as_str().rsplitn(3, '$').take(2).collect::<Vec<_>>();
    let debug = format!("{hash:?}");
    assert_eq!(debug, "PasswordHash(<redacted>)");
    for part in salt_and_digest {
        assert!(!format!("{hasher:?}").contains(part));
        assert!(!debug.contains(part));
    }
    let stored = PasswordHash::parse(passlib_vectors()[3].1).unwrap();
    assert_eq!(format!("{stored:?}"), "PasswordHash(<redacted>)");
}

#[test]
fn errors_never_echo_the_input() {
    let secret = "$pbkdf2-sha512$29000$hunter2hunter2$hunter2hunter2";
    let err = PasswordHash::parse(secret).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = PasswordHash::parse("hunter2").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn hasher_settings_are_validated() {
    let err = PasswordHasher::new(Argon2Params::default(), Scheme::Argon2id, 599_999).unwrap_err();
    assert_eq!(err, HashError::Pbkdf2RoundsTooLow(599_999));
    assert_eq!(
        err.to_string(),
        "pbkdf2_rounds must be at least 600000, got 599999"
    );

    let bad = |params: Argon2Params| match PasswordHasher::new(params, Scheme::Argon2id, 600_000)
        .unwrap_err()
    {
        HashError::InvalidArgon2Params { field, message } => (field, message),
        other => panic!("unexpected {other:?}"),
    };
    let d = Argon2Params::default();
    let (field, message) = bad(Argon2Params {
        parallelism: 0,
        ..d
    });
    assert_eq!(field, "parallelism");
    assert!(message.contains("got 0"), "{message}");
    assert_eq!(bad(Argon2Params { iterations: 0, ..d }).0, "iterations");
    assert_eq!(bad(Argon2Params { memory_kib: 7, ..d }).0, "memory_kib");
    // 8 KiB per lane.
    assert_eq!(
        bad(Argon2Params {
            memory_kib: 31,
            parallelism: 4,
            iterations: 1
        })
        .0,
        "memory_kib"
    );
    assert_eq!(
        bad(Argon2Params {
            memory_kib: u32::MAX,
            ..d
        })
        .0,
        "memory_kib"
    );
    let err = PasswordHasher::new(
        Argon2Params { iterations: 0, ..d },
        Scheme::Argon2id,
        600_000,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "argon2 parameter `iterations` is invalid: must be at least 1, got 0"
    );
}

#[test]
fn dummy_verify_runs_for_both_schemes() {
    let argon2 = PasswordHasher::new(cheap_params(), Scheme::Argon2id, 600_000).unwrap();
    argon2.dummy_verify(&pw("anything"));
    pbkdf2_hasher().dummy_verify(&pw("anything"));
}

// ---------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------

/// A policy with every rule off, to test one rule at a time.
fn bare() -> PasswordPolicy {
    PasswordPolicy {
        min_length: 1,
        max_length: 128,
        min_lower: 0,
        min_upper: 0,
        min_digit: 0,
        min_special: 0,
        min_score: 0,
        blocklist: false,
        history: 0,
        expiry_days: 0,
        min_age_hours: 0,
    }
}

fn codes(policy: &PasswordPolicy, password: &str, context: &[&str]) -> Vec<&'static str> {
    policy
        .check(&pw(password), context)
        .iter()
        .map(PolicyViolation::code)
        .collect()
}

#[test]
fn presets_have_the_documented_values() {
    let nist = PasswordPolicy::preset(Preset::Nist);
    assert_eq!(
        nist,
        PasswordPolicy {
            min_length: 12,
            max_length: 128,
            min_lower: 0,
            min_upper: 0,
            min_digit: 0,
            min_special: 0,
            min_score: 3,
            blocklist: true,
            history: 12,
            expiry_days: 0,
            min_age_hours: 0,
        }
    );
    let strict = PasswordPolicy::preset(Preset::Strict);
    assert_eq!(
        strict,
        PasswordPolicy {
            min_lower: 1,
            min_upper: 1,
            min_digit: 1,
            min_special: 1,
            expiry_days: 90,
            min_age_hours: 24,
            ..nist.clone()
        }
    );
    assert_eq!(PasswordPolicy::default(), nist);
    nist.validate().unwrap();
    strict.validate().unwrap();
}

#[test]
fn strict_rejects_the_seed_examples_listing_every_rule() {
    let strict = PasswordPolicy::preset(Preset::Strict);
    let cases: [(&str, &[&str]); 3] = [
        (
            "password123",
            &[
                "too_short",
                "too_few_upper",
                "too_few_special",
                "blocklisted",
                "too_weak",
            ],
        ),
        (
            "MyPassword",
            &[
                "too_short",
                "too_few_digits",
                "too_few_special",
                "blocklisted",
                "too_weak",
            ],
        ),
        (
            "Test1",
            &["too_short", "too_few_special", "blocklisted", "too_weak"],
        ),
    ];
    for (password, expected) in cases {
        assert_eq!(codes(&strict, password, &[]), expected, "{password}");
    }
    assert_eq!(
        strict.check(&pw("password123"), &[]).last(),
        Some(&PolicyViolation::TooWeak { score: 0, min: 3 })
    );
    assert_eq!(
        strict.check(&pw("MyPassword"), &[]).last(),
        Some(&PolicyViolation::TooWeak { score: 1, min: 3 })
    );
    assert_eq!(
        strict.check(&pw("Test1"), &[]).last(),
        Some(&PolicyViolation::TooWeak { score: 1, min: 3 })
    );
}

#[test]
fn strict_accepts_the_seed_examples() {
    let strict = PasswordPolicy::preset(Preset::Strict);
    for password in ["Odoo@2025Inc#Sec", "MyComp@ny!Pass99", "Xk9$mP#Lq2Yz!"] {
        assert_eq!(strict.check(&pw(password), &[]), vec![], "{password}");
        assert_eq!(
            strict.check(&pw(password), &["jdoe", "jane.doe@example.com", "Jane Doe"]),
            vec![],
            "{password}"
        );
    }
    assert_eq!("Xk9$mP#Lq2Yz!".chars().count(), 13);
}

#[test]
fn length_is_counted_in_characters() {
    let policy = PasswordPolicy {
        min_length: 6,
        max_length: 8,
        ..bare()
    };
    assert_eq!(
        policy.check(&pw("ééééé"), &[]),
        vec![PolicyViolation::TooShort { min: 6 }]
    ); // 10 bytes, 5 chars
    assert_eq!(codes(&policy, "éééééé", &[]), Vec::<&str>::new());
    assert_eq!(codes(&policy, "éééééééé", &[]), Vec::<&str>::new());
    assert_eq!(
        policy.check(&pw("ééééééééé"), &[]),
        vec![PolicyViolation::TooLong { max: 8 }]
    );
}

#[test]
fn over_long_passwords_fail_length_only_without_scoring() {
    let nist = PasswordPolicy::preset(Preset::Nist);
    assert_eq!(
        nist.check(&pw(&"a".repeat(129)), &[]),
        vec![PolicyViolation::TooLong { max: 128 }]
    );
    // At the limit, the same weak password is scored.
    assert_eq!(codes(&nist, &"a".repeat(128), &[]), ["too_weak"]);
}

#[test]
fn class_minima_are_real_counts() {
    type Case = (
        &'static str,
        fn(usize) -> PasswordPolicy,
        usize,
        &'static [&'static str],
    );
    let lower: fn(usize) -> PasswordPolicy = |n| PasswordPolicy {
        min_lower: n,
        ..bare()
    };
    let upper: fn(usize) -> PasswordPolicy = |n| PasswordPolicy {
        min_upper: n,
        ..bare()
    };
    let digit: fn(usize) -> PasswordPolicy = |n| PasswordPolicy {
        min_digit: n,
        ..bare()
    };
    let special: fn(usize) -> PasswordPolicy = |n| PasswordPolicy {
        min_special: n,
        ..bare()
    };
    let cases: &[Case] = &[
        ("abc1", digit, 1, &[]),
        ("abc1", digit, 2, &["too_few_digits"]),
        ("ab12", digit, 2, &[]),
        ("ab١٢", digit, 2, &[]), // Arabic-Indic digits are digits
        ("ABc", lower, 1, &[]),
        ("ABc", lower, 2, &["too_few_lower"]),
        ("äöÜ", lower, 2, &[]),
        ("aBc", upper, 2, &["too_few_upper"]),
        ("ÄÖü", upper, 2, &[]),
        ("a!b", special, 2, &["too_few_special"]),
        ("a!b c", special, 2, &[]), // a space is special
        ("€🔐", special, 2, &[]),
        ("密码", special, 1, &["too_few_special"]), // caseless letters are letters, not special
        ("密码", lower, 1, &["too_few_lower"]),
        ("密码", upper, 1, &["too_few_upper"]),
    ];
    for (password, policy, n, expected) in cases {
        assert_eq!(
            codes(&policy(*n), password, &[]),
            *expected,
            "{password} with minimum {n}"
        );
    }
    let strict_counts = PasswordPolicy {
        min_lower: 2,
        min_upper: 3,
        min_digit: 4,
        min_special: 5,
        ..bare()
    };
    assert_eq!(
        strict_counts.check(&pw("aaBB111!!!!"), &[]),
        vec![
            PolicyViolation::TooFewUpper { min: 3 },
            PolicyViolation::TooFewDigits { min: 4 },
            PolicyViolation::TooFewSpecial { min: 5 },
        ]
    );
}

#[test]
fn score_uses_the_users_login_email_and_name() {
    let policy = PasswordPolicy {
        min_score: 3,
        ..bare()
    };
    let password = "Brzeczyszczykiewicz2025";
    assert_eq!(policy.check(&pw(password), &[]), vec![]);
    let context = [
        "zbigniew.b",
        "zbigniew.brzeczyszczykiewicz@example.com",
        "Zbigniew Brzeczyszczykiewicz",
    ];
    let violations = policy.check(&pw(password), &context);
    assert!(
        matches!(violations.as_slice(), [PolicyViolation::TooWeak { score, min: 3 }] if *score < 3),
        "{violations:?}"
    );
}

#[test]
fn password_equal_to_a_context_word_is_personal_info() {
    let policy = bare();
    let context = ["JDoe-Admin", "Jane.Doe@Example.com", "Jane Doe"];
    assert_eq!(codes(&policy, "jdoe-admin", &context), ["personal_info"]);
    assert_eq!(
        codes(&policy, "JANE.DOE@EXAMPLE.COM", &context),
        ["personal_info"]
    );
    assert_eq!(codes(&policy, "jane doe", &context), ["personal_info"]);
    assert_eq!(codes(&policy, "jdoe-admin2", &context), Vec::<&str>::new());
    assert_eq!(codes(&policy, "anything", &["", "  "]), Vec::<&str>::new());
}

#[test]
fn blocklist_matches_whole_password_case_insensitively() {
    let on = PasswordPolicy {
        blocklist: true,
        ..bare()
    };
    for password in [
        "password",
        "password123",
        "PASSWORD123",
        "Password123",
        "qwerty",
        "letmein",
    ] {
        assert_eq!(codes(&on, password, &[]), ["blocklisted"], "{password}");
    }
    for password in [
        "password123!x",
        "correct horse battery staple",
        "Odoo@2025Inc#Sec",
    ] {
        assert_eq!(codes(&on, password, &[]), Vec::<&str>::new(), "{password}");
    }
    assert_eq!(codes(&bare(), "password123", &[]), Vec::<&str>::new());
}

#[test]
fn blocklist_file_is_sorted_lowercase_and_unique() {
    let list = include_str!("../src/password/blocklist.txt");
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines.len() >= 9_000, "{}", lines.len());
    assert!(lines.contains(&"password") && lines.contains(&"password123"));
    assert!(lines.windows(2).all(|w| w[0] < w[1]));
    assert!(lines
        .iter()
        .all(|l| !l.is_empty() && *l == l.to_lowercase()));
}

#[test]
fn strictest_takes_the_stricter_value_of_each_field() {
    let a = PasswordPolicy {
        min_length: 12,
        max_length: 128,
        min_lower: 1,
        min_upper: 0,
        min_digit: 2,
        min_special: 0,
        min_score: 2,
        blocklist: false,
        history: 5,
        expiry_days: 0,
        min_age_hours: 24,
    };
    let b = PasswordPolicy {
        min_length: 14,
        max_length: 64,
        min_lower: 0,
        min_upper: 1,
        min_digit: 1,
        min_special: 3,
        min_score: 4,
        blocklist: true,
        history: 12,
        expiry_days: 90,
        min_age_hours: 1,
    };
    let expected = PasswordPolicy {
        min_length: 14,
        max_length: 64,
        min_lower: 1,
        min_upper: 1,
        min_digit: 2,
        min_special: 3,
        min_score: 4,
        blocklist: true,
        history: 12,
        expiry_days: 90, // 0 means "never", the least strict
        min_age_hours: 24,
    };
    assert_eq!(a.strictest(&b), expected);
    assert_eq!(b.strictest(&a), expected);

    let expiry = |a: u32, b: u32| {
        PasswordPolicy {
            expiry_days: a,
            ..bare()
        }
        .strictest(&PasswordPolicy {
            expiry_days: b,
            ..bare()
        })
        .expiry_days
    };
    assert_eq!(expiry(0, 0), 0);
    assert_eq!(expiry(0, 30), 30);
    assert_eq!(expiry(90, 30), 30);
    assert_eq!(expiry(30, 90), 30);

    let nist = PasswordPolicy::preset(Preset::Nist);
    let strict = PasswordPolicy::preset(Preset::Strict);
    assert_eq!(nist.strictest(&strict), strict);
}

#[test]
fn validate_names_the_bad_field() {
    let nist = PasswordPolicy::preset(Preset::Nist);
    let cases: [(PasswordPolicy, &str); 7] = [
        (
            PasswordPolicy {
                min_length: 0,
                ..nist.clone()
            },
            "min_length",
        ),
        (
            PasswordPolicy {
                max_length: 1025,
                ..nist.clone()
            },
            "max_length",
        ),
        (
            PasswordPolicy {
                min_length: 20,
                max_length: 16,
                ..nist.clone()
            },
            "max_length",
        ),
        (
            PasswordPolicy {
                min_score: 5,
                ..nist.clone()
            },
            "min_score",
        ),
        (
            PasswordPolicy {
                min_lower: 40,
                min_upper: 40,
                min_digit: 40,
                min_special: 9,
                ..nist.clone()
            },
            "min_lower",
        ),
        (
            PasswordPolicy {
                min_lower: usize::MAX,
                min_upper: usize::MAX,
                ..nist.clone()
            },
            "min_lower",
        ),
        (
            PasswordPolicy {
                expiry_days: 1,
                min_age_hours: 24,
                ..nist.clone()
            },
            "min_age_hours",
        ),
    ];
    for (policy, field) in cases {
        let err = policy.validate().unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err
            .to_string()
            .starts_with(&format!("password policy `{field}`: ")));
    }
    assert_eq!(
        PasswordPolicy {
            min_length: 0,
            ..nist.clone()
        }
        .validate(),
        Err(PolicyConfigError {
            field: "min_length",
            message: "must be at least 1".into()
        })
    );
    assert_eq!(
        PasswordPolicy {
            min_score: 5,
            ..nist.clone()
        }
        .validate()
        .unwrap_err()
        .to_string(),
        "password policy `min_score`: must be between 0 and 4 (zxcvbn), got 5"
    );
    PasswordPolicy {
        max_length: 1024,
        ..nist.clone()
    }
    .validate()
    .unwrap();
    PasswordPolicy {
        min_length: 1,
        max_length: 1,
        ..bare()
    }
    .validate()
    .unwrap();
    PasswordPolicy {
        expiry_days: 2,
        min_age_hours: 24,
        ..nist
    }
    .validate()
    .unwrap();
}

#[test]
fn expiry_math_with_fixed_times() {
    const CHANGED: i64 = 1_700_000_000;
    const DAY: i64 = 86_400;
    let strict = PasswordPolicy::preset(Preset::Strict);
    assert_eq!(strict.expires_at(CHANGED), Some(CHANGED + 90 * DAY));
    assert!(!strict.is_expired(CHANGED, CHANGED));
    assert!(!strict.is_expired(CHANGED, CHANGED + 90 * DAY - 1));
    assert!(strict.is_expired(CHANGED, CHANGED + 90 * DAY));
    assert!(strict.is_expired(CHANGED, CHANGED + 400 * DAY));

    let nist = PasswordPolicy::preset(Preset::Nist);
    assert_eq!(nist.expires_at(CHANGED), None);
    assert!(!nist.is_expired(CHANGED, CHANGED + 10_000 * DAY));
    assert!(!nist.is_expired(i64::MIN, i64::MAX));
    assert_eq!(strict.expires_at(i64::MAX), Some(i64::MAX));
}

#[test]
fn minimum_age_math_with_fixed_times() {
    const CHANGED: i64 = 1_700_000_000;
    const HOUR: i64 = 3_600;
    let strict = PasswordPolicy::preset(Preset::Strict);
    assert_eq!(strict.too_soon_to_change(CHANGED, CHANGED), Some(24 * HOUR));
    assert_eq!(
        strict.too_soon_to_change(CHANGED, CHANGED + HOUR),
        Some(23 * HOUR)
    );
    assert_eq!(
        strict.too_soon_to_change(CHANGED, CHANGED + 24 * HOUR - 1),
        Some(1)
    );
    assert_eq!(
        strict.too_soon_to_change(CHANGED, CHANGED + 24 * HOUR),
        None
    );
    // A clock that went backwards still leaves the full minimum age, not more.
    assert_eq!(
        strict.too_soon_to_change(CHANGED, CHANGED - 10),
        Some(24 * HOUR)
    );

    let nist = PasswordPolicy::preset(Preset::Nist);
    assert_eq!(nist.too_soon_to_change(CHANGED, CHANGED), None);
    assert_eq!(nist.too_soon_to_change(CHANGED, CHANGED - 10), None);
    assert_eq!(
        strict.too_soon_to_change(i64::MAX, i64::MIN),
        Some(24 * HOUR)
    );
    assert_eq!(strict.too_soon_to_change(i64::MIN, i64::MAX), None);
}

#[test]
fn every_failed_rule_is_explained_in_plain_words() {
    let policy = PasswordPolicy {
        min_length: 12,
        max_length: 128,
        min_lower: 2,
        min_upper: 1,
        min_digit: 2,
        min_special: 1,
        min_score: 3,
        blocklist: true,
        history: 12,
        expiry_days: 0,
        min_age_hours: 0,
    };
    let messages: Vec<String> = policy
        .check(&pw("jdoe"), &["jdoe"])
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        messages,
        [
            "Use at least 12 characters.",
            "Use at least 1 uppercase letter.",
            "Use at least 2 digits.",
            "Use at least 1 special character (a symbol, punctuation mark or space).",
            "This password is your login, email or name; choose something else.",
            "This password is too easy to guess (strength 0 of 4, 3 needed). Add more words or characters.",
        ]
    );
}

#[test]
fn display_and_code_of_every_violation() {
    let table: [(PolicyViolation, &str, &str); 16] = [
        (PolicyViolation::TooShort { min: 12 }, "too_short", "Use at least 12 characters."),
        (PolicyViolation::TooShort { min: 1 }, "too_short", "Use at least 1 character."),
        (PolicyViolation::TooLong { max: 128 }, "too_long", "Use at most 128 characters."),
        (PolicyViolation::TooFewLower { min: 2 }, "too_few_lower", "Use at least 2 lowercase letters."),
        (PolicyViolation::TooFewUpper { min: 1 }, "too_few_upper", "Use at least 1 uppercase letter."),
        (PolicyViolation::TooFewDigits { min: 2 }, "too_few_digits", "Use at least 2 digits."),
        (PolicyViolation::TooFewDigits { min: 1 }, "too_few_digits", "Use at least 1 digit."),
        (
            PolicyViolation::TooFewSpecial { min: 2 },
            "too_few_special",
            "Use at least 2 special characters (a symbol, punctuation mark or space).",
        ),
        (
            PolicyViolation::TooWeak { score: 1, min: 3 },
            "too_weak",
            "This password is too easy to guess (strength 1 of 4, 3 needed). Add more words or characters.",
        ),
        (
            PolicyViolation::Blocklisted,
            "blocklisted",
            "This password appears in lists of common or breached passwords.",
        ),
        (
            PolicyViolation::PersonalInfo,
            "personal_info",
            "This password is your login, email or name; choose something else.",
        ),
        (
            PolicyViolation::Reused { history: 12 },
            "reused",
            "You used this password recently; pick one you have not used in your last 12 passwords.",
        ),
        (
            PolicyViolation::Reused { history: 1 },
            "reused",
            "You used this password recently; pick one different from your previous password.",
        ),
        (
            PolicyViolation::TooSoon { seconds: 23 * 3600 + 1 },
            "too_soon",
            "You changed your password recently; you can change it again in 24 hours.",
        ),
        (
            PolicyViolation::TooSoon { seconds: 3600 },
            "too_soon",
            "You changed your password recently; you can change it again in 1 hour.",
        ),
        (
            PolicyViolation::TooSoon { seconds: 61 },
            "too_soon",
            "You changed your password recently; you can change it again in 2 minutes.",
        ),
    ];
    for (violation, code, text) in table {
        assert_eq!(violation.code(), code);
        assert_eq!(violation.to_string(), text);
    }
    assert_eq!(
        PolicyViolation::TooSoon { seconds: 1 }.to_string(),
        "You changed your password recently; you can change it again in 1 minute."
    );
}
