#!/usr/bin/env python3
"""Cross-checks bulwark-core's TOTP codes against pyotp and oathtool (OATH Toolkit).

    python scripts/totp_check.py [PATH/TO/totp_vectors]

The Rust side is the `totp_vectors` example of bulwark-core (without a path it is run with
`cargo run -q -p bulwark-core --example totp_vectors`, from the repository root):

1. `totp_vectors 1000` prints `secret_base32 algorithm digits unix_time code` lines from a
   fixed seed (SHA1/SHA256/SHA512, 6 and 8 digits, 16- to 128-byte secrets, times from 0 to
   20,000,000,000). Each code must equal pyotp's `TOTP(...).at(t)` and oathtool's
   `--totp=ALG --digits=N --now=@T` output.
2. pyotp makes codes for 1000 random (secret, time) pairs of its own (fixed seed, so a failure
   can be replayed); `totp_vectors --verify` must answer `ok` for each, with no skew, so the
   exact time step must match. 100 of them get the code of a step two periods later instead,
   which must give `mismatch`: a verifier that accepts anything fails here.

Prints one line per failed check and ends with `N passed, N failed`; exits 1 if any check
failed (a missing oathtool counts as a failure, not a skip). Needs pyotp in the running
Python and Debian's `oathtool` on PATH; it installs nothing.
"""

import base64
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

# pyotp's `at(t)` goes through local-time datetimes; in a zone with DST that can shift a step
# by an hour. Pin UTC before anything reads the zone.
os.environ["TZ"] = "UTC"
time.tzset()

import pyotp  # noqa: E402 - after tzset on purpose

VECTORS = 1000
PYOTP_PAIRS = 1000
WRONG_CODES = 100
PERIOD = 30
SEED = 6238
DIGESTS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_SECS = 600


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what):
        """Counts a check; prints only failures (thousands of checks pass)."""
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL  {what}", flush=True)
        return ok


def rust_command(argv):
    if len(argv) > 1:
        return [os.path.abspath(argv[1])]
    return ["cargo", "run", "-q", "-p", "bulwark-core", "--example", "totp_vectors", "--"]


def run_rust(command, args, stdin_text=None):
    proc = subprocess.run(
        command + args,
        input=stdin_text,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=TIMEOUT_SECS,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command + args)} exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc.stdout.splitlines()


def parse_vector(line):
    secret, algorithm, digits, now, code = line.split()
    return secret, algorithm, int(digits), int(now), code


def pyotp_code(secret, algorithm, digits, now):
    return pyotp.TOTP(
        secret, digits=digits, digest=DIGESTS[algorithm], interval=PERIOD
    ).at(now)


def oathtool_code(secret, algorithm, digits, now):
    # The key goes on stdin ("-"), not the command line, where `ps` would show it.
    proc = subprocess.run(
        ["oathtool", f"--totp={algorithm}", "--base32", f"--digits={digits}", f"--now=@{now}", "-"],
        input=secret + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        return f"<oathtool exit {proc.returncode}: {proc.stderr.strip()}>"
    return proc.stdout.strip()


def label(index, algorithm, digits, now, secret):
    # The secrets are throwaway test values, but name a line by its place, not its secret.
    return f"vector {index} ({algorithm}, {digits} digits, t={now}, {len(secret)}-char secret)"


def check_generated(checks, command):
    """Bulwark's codes against pyotp and oathtool."""
    lines = run_rust(command, [str(VECTORS)])
    checks.check(len(lines) == VECTORS, f"totp_vectors printed {len(lines)} lines, not {VECTORS}")
    try:
        vectors = [parse_vector(line) for line in lines]
    except ValueError as e:
        checks.check(False, f"totp_vectors printed a malformed line: {e}")
        return

    kinds = {(alg, digits) for _, alg, digits, _, _ in vectors}
    wanted = {(alg, d) for alg in DIGESTS for d in (6, 8)}
    checks.check(kinds == wanted, f"vectors cover {sorted(kinds)}, expected {sorted(wanted)}")

    for i, (secret, alg, digits, now, code) in enumerate(vectors):
        expected = pyotp_code(secret, alg, digits, now)
        checks.check(
            code == expected,
            f"pyotp: {label(i, alg, digits, now, secret)}: bulwark {code}, pyotp {expected}",
        )

    if shutil.which("oathtool") is None:
        checks.check(False, "oathtool is not on PATH (Debian package `oathtool`)")
        return
    # One process per code: run them in parallel to keep all 1000 to a second or two.
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 2) * 2)) as pool:
        answers = list(pool.map(lambda v: oathtool_code(v[0], v[1], v[2], v[3]), vectors))
    for i, ((secret, alg, digits, now, code), expected) in enumerate(zip(vectors, answers)):
        checks.check(
            code == expected,
            f"oathtool: {label(i, alg, digits, now, secret)}: bulwark {code}, oathtool {expected}",
        )


def check_verify(checks, command):
    """pyotp's codes through Bulwark's verify, plus wrong codes that must be refused."""
    rng = random.Random(SEED)
    lines, expected = [], []
    for i in range(PYOTP_PAIRS):
        alg = ("SHA1", "SHA256", "SHA512")[i % 3]
        digits = (6, 8)[(i // 3) % 2]
        secret = base64.b32encode(rng.randbytes(rng.choice((16, 20, 20, 32, 64)))).decode()
        secret = secret.rstrip("=")
        now = rng.randrange(0, 20_000_000_001)
        code = pyotp_code(secret, alg, digits, now)
        want = "ok"
        if i < WRONG_CODES:
            later = pyotp_code(secret, alg, digits, now + 2 * PERIOD)
            if later == code:
                continue  # same digits two steps apart (odds 1 in 10^6): not a wrong code
            code, want = later, "mismatch"
        lines.append(f"{secret} {alg} {digits} {now} {code}")
        expected.append((i, alg, digits, now, secret, want))

    answers = run_rust(command, ["--verify"], "\n".join(lines) + "\n")
    checks.check(
        len(answers) == len(lines),
        f"totp_vectors --verify answered {len(answers)} lines for {len(lines)}",
    )
    for (i, alg, digits, now, secret, want), got in zip(expected, answers):
        what = "wrong code" if want == "mismatch" else "pyotp code"
        checks.check(
            got == want,
            f"verify: pair {i} {what} ({alg}, {digits} digits, t={now}, "
            f"{len(secret)}-char secret): expected {want}, got {got}",
        )


def main():
    if len(sys.argv) > 2:
        print("usage: totp_check.py [PATH/TO/totp_vectors]", file=sys.stderr)
        return 2
    command = rust_command(sys.argv)
    if len(sys.argv) == 2 and not os.access(command[0], os.X_OK):
        print(f"error: {command[0]} is not an executable", file=sys.stderr)
        return 2

    checks = Checks()
    for step in (check_generated, check_verify):
        try:
            step(checks, command)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
            checks.check(False, f"{step.__name__}: {e}")

    print(f"{checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
