#!/usr/bin/env python3
"""Checks the `bulwark` binary's password hashes against passlib, the library Odoo uses.

    python scripts/passlib_check.py PATH/TO/bulwark

For a few passwords (ASCII, Unicode, one character, 1024 bytes) it runs
`bulwark password hash --scheme pbkdf2-sha512` and `--scheme argon2id` with the password on
standard input, then checks that passlib (`passlib.hash.pbkdf2_sha512`, and
`passlib.hash.argon2` backed by argon2-cffi) accepts the hash for that password and refuses it
for a wrong one. The binary runs without a configuration file, in an empty data directory, so
its defaults apply (PBKDF2 600,000 rounds; Argon2id m=19456 KiB, t=2, p=1).

Prints one line per check and ends with `N passed, N failed`; exits 1 if any check failed.
Needs passlib and argon2-cffi (scripts/test installs them in .venv-test).
"""

import os
import subprocess
import sys
import tempfile
import time

from passlib.hash import argon2, pbkdf2_sha512

# Each PBKDF2 hash costs the binary two derivations (its dummy hash, then the real one) and
# passlib two more (right and wrong password): keep this list short.
PASSWORDS = [
    ("ascii", "correct horse battery staple"),
    ("unicode", "mötörhead Ünïcødé 密码 🔐"),
    ("one character", "x"),
    ("1024 bytes", ("Tr0ub4dor&3 horse:battery$staple \\ " * 40)[:1024]),
]

SCHEMES = [
    # scheme, passlib handler, prefix the binary's defaults must produce
    ("pbkdf2-sha512", pbkdf2_sha512, "$pbkdf2-sha512$600000$"),
    ("argon2id", argon2, "$argon2id$v=19$m=19456,t=2,p=1$"),
]

TIMEOUT_SECS = 300


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"ok    {what}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL  {what}{': ' + detail if detail else ''}", flush=True)
        return ok


def run_hash(binary, data_dir, scheme, stdin_text):
    """Runs `bulwark password hash`; returns (exit code, stdout, stderr, seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULWARK_")}
    env["BULWARK_LOG"] = "warn"
    started = time.monotonic()
    proc = subprocess.run(
        [binary, "--data-dir", data_dir, "password", "hash", "--scheme", scheme],
        input=stdin_text,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=data_dir,
        env=env,
        timeout=TIMEOUT_SECS,
    )
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started


def verify(handler, password, hash_string):
    """passlib's answer, or the exception it raised (a malformed hash)."""
    try:
        return handler.verify(password, hash_string), ""
    except Exception as e:  # noqa: BLE001 - any passlib error is a failed check
        return None, f"{type(e).__name__}: {e}"


def wrong(password):
    """The password with its last character changed."""
    return password[:-1] + ("!" if password[-1] != "!" else "?")


def main():
    if len(sys.argv) != 2:
        print("usage: passlib_check.py PATH/TO/bulwark", file=sys.stderr)
        return 2
    binary = os.path.abspath(sys.argv[1])
    if not os.access(binary, os.X_OK):
        print(f"error: {binary} is not an executable", file=sys.stderr)
        return 2

    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="bulwark-passlib-") as data_dir:
        for scheme, handler, prefix in SCHEMES:
            for label, password in PASSWORDS:
                name = f"{scheme} / {label}"
                code, out, err, secs = run_hash(binary, data_dir, scheme, password + "\n")
                lines = out.splitlines()
                made = checks.check(
                    code == 0 and len(lines) == 1,
                    f"{name}: hashed ({secs:.2f} s)",
                    f"exit {code}, stdout {out!r}, stderr {err.strip()!r}",
                )
                if not made:
                    continue
                hash_string = lines[0].strip()
                checks.check(
                    hash_string.startswith(prefix),
                    f"{name}: default parameters ({prefix})",
                    f"got {hash_string[:40]}...",
                )
                answer, problem = verify(handler, password, hash_string)
                checks.check(answer is True, f"{name}: passlib accepts the password", problem)
                answer, problem = verify(handler, wrong(password), hash_string)
                checks.check(
                    answer is False, f"{name}: passlib refuses a wrong password", problem
                )

        # Salts are random: the same password never gives the same hash twice.
        first = run_hash(binary, data_dir, "argon2id", "same password twice\n")
        second = run_hash(binary, data_dir, "argon2id", "same password twice\n")
        checks.check(
            first[0] == 0 and second[0] == 0 and first[1].strip() != second[1].strip(),
            "argon2id: two hashes of one password differ (random salt)",
            f"exits {first[0]}, {second[0]}",
        )

        # Refusals: an empty password and an unknown scheme give an error and no hash.
        code, out, err, _ = run_hash(binary, data_dir, "argon2id", "\n")
        checks.check(
            code != 0 and out == "" and "empty" in err,
            "empty password is refused",
            f"exit {code}, stdout {out!r}, stderr {err.strip()!r}",
        )
        code, out, err, _ = run_hash(binary, data_dir, "md5", "password\n")
        checks.check(
            code != 0 and out == "" and "scheme" in err,
            "unknown scheme is refused",
            f"exit {code}, stdout {out!r}, stderr {err.strip()!r}",
        )

        # The hash command needs no database: it must leave the data directory empty.
        left = sorted(os.listdir(data_dir))
        checks.check(left == [], "hashing writes nothing to the data directory", f"found {left}")

    print(f"{checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
