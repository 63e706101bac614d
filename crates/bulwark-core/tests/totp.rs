//! TOTP and recovery codes through the public API: RFC vectors, drift, replay, base32, URIs.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] fns fail the test on bad fixtures"
)]

use bulwark_core::recovery;
use bulwark_core::totp::{
    self, base32, otpauth_uri, time_step, verify, Algorithm, TotpCode, TotpError, TotpParams,
    TotpSecret,
};

/// RFC 6238 Appendix B seeds: "1234567890" repeated to the hash's output size.
fn rfc_seed(algorithm: Algorithm) -> TotpSecret {
    let len = match algorithm {
        Algorithm::Sha1 => 20,
        Algorithm::Sha256 => 32,
        Algorithm::Sha512 => 64,
    };
    let bytes: Vec<u8> = b"1234567890".iter().copied().cycle().take(len).collect();
    TotpSecret::from_bytes(bytes).unwrap()
}

fn params(algorithm: Algorithm, digits: u32) -> TotpParams {
    TotpParams {
        algorithm,
        digits,
        ..TotpParams::default()
    }
}

fn code(s: &str) -> TotpCode {
    TotpCode::parse(s, u32::try_from(s.len()).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------
// RFC vectors
// ---------------------------------------------------------------------------------------

#[test]
fn rfc6238_appendix_b_vectors() {
    // (time, SHA1, SHA256, SHA512), 8 digits, 30 s steps.
    let table: [(i64, &str, &str, &str); 6] = [
        (59, "94287082", "46119246", "90693936"),
        (1111111109, "07081804", "68084774", "25091201"),
        (1111111111, "14050471", "67062674", "99943326"),
        (1234567890, "89005924", "91819424", "93441116"),
        (2000000000, "69279037", "90698825", "38618901"),
        (20000000000, "65353130", "77737706", "47863826"),
    ];
    for (now, sha1, sha256, sha512) in table {
        for (algorithm, expected) in [
            (Algorithm::Sha1, sha1),
            (Algorithm::Sha256, sha256),
            (Algorithm::Sha512, sha512),
        ] {
            let p = params(algorithm, 8);
            let secret = rfc_seed(algorithm);
            let step = time_step(now, p.period);
            assert_eq!(
                totp::generate(&secret, &p, step),
                expected,
                "{algorithm:?} at {now}"
            );
            assert_eq!(verify(&secret, &p, &code(expected), now, None), Some(step));
        }
    }
}

#[test]
fn rfc6238_steps_match_the_table() {
    // The RFC lists T in hex; 20000000000 needs more than 32 bits.
    assert_eq!(time_step(59, 30), 0x1);
    assert_eq!(time_step(1111111109, 30), 0x23523EC);
    assert_eq!(time_step(20000000000, 30), 0x27BC86AA);
}

#[test]
fn rfc4226_appendix_d_hotp_vectors() {
    let expected = [
        "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871",
        "520489",
    ];
    let secret = rfc_seed(Algorithm::Sha1);
    let p = TotpParams::default();
    for (counter, want) in expected.iter().enumerate() {
        assert_eq!(totp::generate(&secret, &p, counter as u64), *want);
    }
}

// ---------------------------------------------------------------------------------------
// Drift and replay
// ---------------------------------------------------------------------------------------

const NOW: i64 = 1_700_000_015;

#[test]
fn codes_one_step_either_side_verify_but_two_do_not() {
    let secret = rfc_seed(Algorithm::Sha1);
    let p = TotpParams::default();
    let step = time_step(NOW, p.period);
    for (offset, accepted) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
        let s = step.checked_add_signed(offset).unwrap();
        let c = code(&totp::generate(&secret, &p, s));
        let expected = accepted.then_some(s);
        assert_eq!(
            verify(&secret, &p, &c, NOW, None),
            expected,
            "offset {offset}"
        );
    }
}

#[test]
fn skew_zero_accepts_only_the_current_step() {
    let secret = rfc_seed(Algorithm::Sha1);
    let p = TotpParams {
        skew: 0,
        ..TotpParams::default()
    };
    let step = time_step(NOW, p.period);
    let now_code = code(&totp::generate(&secret, &p, step));
    let prev_code = code(&totp::generate(&secret, &p, step - 1));
    assert_eq!(verify(&secret, &p, &now_code, NOW, None), Some(step));
    assert_eq!(verify(&secret, &p, &prev_code, NOW, None), None);
}

#[test]
fn reused_totp_code_is_rejected() {
    let secret = TotpSecret::generate();
    let p = TotpParams::default();
    let step = time_step(NOW, p.period);
    let c = code(&totp::generate(&secret, &p, step));
    let used = verify(&secret, &p, &c, NOW, None).unwrap();
    assert_eq!(used, step);
    // Same code, same step, even later within its window: refused.
    assert_eq!(verify(&secret, &p, &c, NOW, Some(used)), None);
    assert_eq!(verify(&secret, &p, &c, NOW + 30, Some(used)), None);
    // The previous step's code is older than the one used: refused too.
    let older = code(&totp::generate(&secret, &p, step - 1));
    assert_eq!(verify(&secret, &p, &older, NOW, Some(used)), None);
    // The next step's code is new: accepted.
    let later = code(&totp::generate(&secret, &p, step + 1));
    assert_eq!(
        verify(&secret, &p, &later, NOW + 30, Some(used)),
        Some(step + 1)
    );
}

#[test]
fn wrong_code_is_rejected() {
    let secret = rfc_seed(Algorithm::Sha1);
    let p = TotpParams::default();
    let step = time_step(NOW, p.period);
    let right = totp::generate(&secret, &p, step);
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
    assert_eq!(verify(&secret, &p, &code(&wrong), NOW, None), None);
    // An 8-digit code never matches 6-digit params.
    assert_eq!(verify(&secret, &p, &code("12345678"), NOW, None), None);
}

#[test]
fn when_two_steps_share_a_code_the_newest_fresh_one_wins() {
    // For the RFC SHA-1 seed, steps 910737 and 910738 both give 911617 (found by search).
    let secret = rfc_seed(Algorithm::Sha1);
    let p = TotpParams::default();
    let (s, c) = (910_737u64, code("911617"));
    assert_eq!(totp::generate(&secret, &p, s), "911617");
    assert_eq!(totp::generate(&secret, &p, s + 1), "911617");
    let now = (s as i64 + 1) * 30; // window s..=s+2
    assert_eq!(verify(&secret, &p, &c, now, None), Some(s + 1));
    assert_eq!(verify(&secret, &p, &c, now, Some(s - 1)), Some(s + 1));
    assert_eq!(verify(&secret, &p, &c, now, Some(s)), Some(s + 1));
    assert_eq!(verify(&secret, &p, &c, now, Some(s + 1)), None);
}

// ---------------------------------------------------------------------------------------
// Base32
// ---------------------------------------------------------------------------------------

#[test]
fn base32_rfc4648_vectors() {
    let vectors: [(&str, &str); 7] = [
        ("", ""),
        ("f", "MY======"),
        ("fo", "MZXQ===="),
        ("foo", "MZXW6==="),
        ("foob", "MZXW6YQ="),
        ("fooba", "MZXW6YTB"),
        ("foobar", "MZXW6YTBOI======"),
    ];
    for (plain, padded) in vectors {
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(base32::encode(plain.as_bytes()), unpadded);
        assert_eq!(
            base32::decode(padded).unwrap(),
            plain.as_bytes(),
            "{padded}"
        );
        assert_eq!(base32::decode(unpadded).unwrap(), plain.as_bytes());
        assert_eq!(
            base32::decode(&unpadded.to_lowercase()).unwrap(),
            plain.as_bytes()
        );
    }
}

#[test]
fn base32_round_trips_every_length() {
    for len in 0..=70usize {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        assert_eq!(base32::decode(&base32::encode(&bytes)).unwrap(), bytes);
    }
}

#[test]
fn secret_base32_round_trips_with_grouping_and_case() {
    let secret = TotpSecret::generate();
    let plain = secret.to_base32();
    assert_eq!(plain.expose().len(), 32);
    assert!(!plain.expose().contains('='));
    let grouped = secret.to_base32_grouped();
    let groups: Vec<&str> = grouped.expose().split(' ').collect();
    assert_eq!(groups.len(), 8);
    assert!(groups.iter().all(|g| g.len() == 4));
    for form in [
        plain.expose().to_owned(),
        grouped.expose().to_owned(),
        grouped.expose().to_lowercase(),
    ] {
        let back = TotpSecret::from_base32(&form).unwrap();
        assert_eq!(back.as_bytes(), secret.as_bytes());
    }
}

#[test]
fn known_secret_encodes_as_published() {
    // The RFC seed as Google's and most libraries' docs print it.
    let secret = rfc_seed(Algorithm::Sha1);
    assert_eq!(
        secret.to_base32().expose(),
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    );
    assert_eq!(
        secret.to_base32_grouped().expose(),
        "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ"
    );
}

#[test]
fn short_long_and_malformed_secrets_are_refused() {
    assert_eq!(
        TotpSecret::from_bytes(vec![0; 15]).unwrap_err(),
        TotpError::SecretTooShort
    );
    assert!(TotpSecret::from_bytes(vec![0; 16]).is_ok());
    assert_eq!(
        TotpSecret::from_bytes(vec![0; 129]).unwrap_err(),
        TotpError::SecretTooLong
    );
    assert_eq!(
        TotpSecret::from_base32("MZXW6YTBOI").unwrap_err(),
        TotpError::SecretTooShort
    );
    assert_eq!(
        TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ1").unwrap_err(),
        TotpError::Base32
    );
    assert_eq!(
        TotpSecret::from_base32(&"A".repeat(100_000)).unwrap_err(),
        TotpError::SecretTooLong
    );
}

#[test]
fn generated_secrets_are_160_bits_and_differ() {
    let a = TotpSecret::generate();
    let b = TotpSecret::generate();
    assert_eq!(a.as_bytes().len(), 20);
    assert_eq!(b.as_bytes().len(), 20);
    assert_ne!(a.as_bytes(), b.as_bytes());
}

// ---------------------------------------------------------------------------------------
// otpauth URI
// ---------------------------------------------------------------------------------------

#[test]
fn otpauth_uri_has_the_form_apps_read() {
    let secret = rfc_seed(Algorithm::Sha1);
    let uri = otpauth_uri(&secret, &TotpParams::default(), "Bulwark", "alice");
    assert_eq!(
        uri.expose(),
        "otpauth://totp/Bulwark:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
         &issuer=Bulwark&algorithm=SHA1&digits=6&period=30"
    );
    let p = TotpParams {
        algorithm: Algorithm::Sha512,
        digits: 8,
        period: 60,
        skew: 1,
    };
    let uri = otpauth_uri(&secret, &p, "Bulwark", "alice");
    assert!(uri
        .expose()
        .ends_with("&issuer=Bulwark&algorithm=SHA512&digits=8&period=60"));
}

#[test]
fn otpauth_uri_encodes_spaces_colons_and_at_signs() {
    let secret = rfc_seed(Algorithm::Sha1);
    let uri = otpauth_uri(
        &secret,
        &TotpParams::default(),
        "ACME Co: Paris",
        "alice.o'neil+2fa@example.com",
    );
    assert_eq!(
        uri.expose(),
        "otpauth://totp/ACME%20Co%3A%20Paris:alice.o%27neil%2B2fa%40example.com\
         ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=ACME%20Co%3A%20Paris\
         &algorithm=SHA1&digits=6&period=30"
    );
    let uri = otpauth_uri(&secret, &TotpParams::default(), "Société & Cie", "bob");
    assert!(uri
        .expose()
        .starts_with("otpauth://totp/Soci%C3%A9t%C3%A9%20%26%20Cie:bob?"));
    assert!(uri
        .expose()
        .contains("&issuer=Soci%C3%A9t%C3%A9%20%26%20Cie&"));
}

// ---------------------------------------------------------------------------------------
// Code input
// ---------------------------------------------------------------------------------------

#[test]
fn code_input_accepts_spaces_and_dashes() {
    assert_eq!(TotpCode::parse("123456", 6).unwrap().expose(), "123456");
    assert_eq!(TotpCode::parse("123 456", 6).unwrap().expose(), "123456");
    assert_eq!(TotpCode::parse("123-456", 6).unwrap().expose(), "123456");
    assert_eq!(
        TotpCode::parse(" 1234 5678 ", 8).unwrap().expose(),
        "12345678"
    );
}

#[test]
fn code_input_refuses_letters_and_wrong_length() {
    let err = TotpError::CodeFormat { digits: 6 };
    for bad in [
        "", "12345", "1234567", "12345a", "abcdef", "12345６", "123.456", "+12345",
    ] {
        assert_eq!(TotpCode::parse(bad, 6).unwrap_err(), err, "{bad:?}");
    }
    assert!(TotpCode::parse("123456", 8).is_err());
    assert!(TotpCode::parse(&"1".repeat(10_000), 6).is_err());
}

// ---------------------------------------------------------------------------------------
// Secrets are never printed
// ---------------------------------------------------------------------------------------

#[test]
fn debug_never_shows_secrets_or_codes() {
    let secret = rfc_seed(Algorithm::Sha1);
    let shown = format!("{secret:?} {:?}", secret.to_base32());
    assert!(!shown.contains("GEZD"));
    assert!(!shown.contains("1234"));
    assert!(!shown.contains("49, 50"), "raw bytes leaked: {shown}");

    let c = TotpCode::parse("987654", 6).unwrap();
    assert!(!format!("{c:?}").contains("987654"));

    let uri = otpauth_uri(&secret, &TotpParams::default(), "Bulwark", "alice");
    assert!(!format!("{uri:?}").contains("GEZD"));

    for code in recovery::generate_set() {
        let shown = format!("{code:?}");
        assert!(!shown.contains(code.display()));
        assert!(!shown.contains(&code.normalized()));
    }
}

#[test]
fn recovery_codes_normalize_and_hash_through_the_public_api() {
    let set = recovery::generate_set();
    assert_eq!(set.len(), recovery::CODES_PER_SET);
    let key = b"server-key";
    for code in &set {
        let typed = code.display().to_uppercase().replace('-', " ");
        let normalized = recovery::normalize(&typed).unwrap();
        assert_eq!(
            recovery::hash_code(key, &normalized),
            recovery::hash_code(key, &code.normalized())
        );
    }
}
