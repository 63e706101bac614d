//! TOTP vectors for cross-checking bulwark-core against other implementations
//! (`scripts/totp_check.py` runs this against pyotp and oathtool).
//!
//! ```text
//! totp_vectors N           print N lines `secret_base32 algorithm digits unix_time code`
//! totp_vectors --verify    read such lines on stdin, print `ok` or `mismatch` for each
//! ```
//!
//! Generated vectors come from a fixed seed, so every run prints the same lines. They cover
//! SHA1/SHA256/SHA512, 6 and 8 digits, secrets of 16 to 128 bytes (past the SHA-1/SHA-256
//! block size, where HMAC hashes the key first) and times from 0 to past 2038.
//! `--verify` uses no skew: a code must match exactly the step of its time, so an off-by-one
//! in the step arithmetic cannot hide behind the ±1 window.

use bulwark_core::totp::{self, Algorithm, TotpCode, TotpParams, TotpSecret};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{self, BufRead, BufWriter, Write};
use std::process::ExitCode;

const SEED: u64 = 0x6275_6c77_6172_6b00;
const PERIOD: u64 = 30;
const ALGORITHMS: [Algorithm; 3] = [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512];
/// Times where step arithmetic goes wrong first: the epoch, step edges, 32-bit limits.
const EDGE_TIMES: [i64; 8] = [
    0,
    29,
    30,
    59,
    1_111_111_109,
    2_147_483_647,
    4_294_967_296,
    20_000_000_000,
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag] if flag == "--verify" => verify_stdin(),
        [n] => match n.parse::<usize>() {
            Ok(n) => print_vectors(n),
            Err(_) => return usage(),
        },
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: totp_vectors N | totp_vectors --verify < lines");
    ExitCode::from(2)
}

fn print_vectors(n: usize) -> io::Result<()> {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut out = BufWriter::new(io::stdout().lock());
    for i in 0..n {
        let algorithm = ALGORITHMS[i % 3];
        let digits = if (i / 3) % 2 == 0 { 6 } else { 8 };
        let secret_len = match rng.gen_range(0..5) {
            0 => 16,
            1 | 2 => 20,
            3 => 64,
            _ => rng.gen_range(16..=totp::MAX_SECRET_BYTES),
        };
        let mut bytes = vec![0u8; secret_len];
        rng.fill(&mut bytes[..]);
        let Ok(secret) = TotpSecret::from_bytes(bytes) else {
            return Err(io::Error::other("generated secret out of range"));
        };
        let now = match EDGE_TIMES.get(i / 6) {
            // The first 48 lines give each edge time to every algorithm and digit count.
            Some(&t) => t,
            None => rng.gen_range(0..=20_000_000_000i64),
        };
        let params = params(algorithm, digits, 0);
        let code = totp::generate(&secret, &params, totp::time_step(now, PERIOD));
        writeln!(
            out,
            "{} {} {digits} {now} {code}",
            secret.to_base32().expose(),
            algorithm.otpauth_name()
        )?;
    }
    out.flush()
}

fn verify_stdin() -> io::Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    for line in io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match check_line(&line) {
            Ok(true) => writeln!(out, "ok")?,
            Ok(false) => writeln!(out, "mismatch")?,
            Err(why) => writeln!(out, "invalid: {why}")?,
        }
    }
    out.flush()
}

/// Whether the line's code verifies at exactly its time's step.
fn check_line(line: &str) -> Result<bool, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [secret, algorithm, digits, now, code] = fields.as_slice() else {
        return Err(format!("expected 5 fields, got {}", fields.len()));
    };
    let secret = TotpSecret::from_base32(secret).map_err(|e| e.to_string())?;
    let algorithm = match *algorithm {
        "SHA1" => Algorithm::Sha1,
        "SHA256" => Algorithm::Sha256,
        "SHA512" => Algorithm::Sha512,
        other => return Err(format!("unknown algorithm {other}")),
    };
    let digits: u32 = digits.parse().map_err(|_| "bad digits".to_owned())?;
    let now: i64 = now.parse().map_err(|_| "bad time".to_owned())?;
    let code = TotpCode::parse(code, digits).map_err(|e| e.to_string())?;
    let params = params(algorithm, digits, 0);
    let step = totp::time_step(now, PERIOD);
    Ok(totp::verify(&secret, &params, &code, now, None) == Some(step))
}

fn params(algorithm: Algorithm, digits: u32, skew: u64) -> TotpParams {
    TotpParams {
        algorithm,
        digits,
        period: PERIOD,
        skew,
    }
}
