"""The sign-in commands as a user runs them (`python -m gateway`): robots, tokens, password
hashes."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import bcrypt

from gateway.auth.credentials import sha256_hex
from gateway.policy.load import load_texts


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=input,
    )


def test_robot_create_prints_the_secret_once_and_an_entry_that_loads() -> None:
    proc = cli("robot", "create", "builder", "--expires", "2099-12-31", "--description", "CI")
    assert proc.returncode == 0, proc.stderr
    secret, _, entry = proc.stdout.partition("\n\n")
    assert secret.startswith("rgw_robot_") and len(secret) > 50
    assert "shown this once" in proc.stderr and secret not in proc.stderr
    robot = load_texts({"r.yaml": entry}).policy.robots["builder"]
    assert robot.token_sha256 == sha256_hex(secret)
    assert robot.expires == dt.date(2099, 12, 31) and robot.description == "CI"
    assert cli("robot", "create", "Bad Name").returncode == 2


def test_token_create_prints_a_users_token_entry() -> None:
    proc = cli("token", "create", "--user", "bob", "--name", "laptop", "--actions", "pull,push")
    assert proc.returncode == 0, proc.stderr
    secret, _, entry = proc.stdout.partition("\n\n")
    assert secret.startswith("rgw_pat_")
    (token,) = load_texts({"t.yaml": entry}).policy.users["bob"].tokens
    assert token.name == "laptop" and token.token_sha256 == sha256_hex(secret)
    assert token.actions == frozenset({"pull", "push"}) and token.expires is None
    assert cli("token", "create", "--user", "bob", "--actions", "fly").returncode == 2
    assert cli("token", "create", "--user", "bob", "--expires", "2001-01-01").returncode == 2


def test_hash_password_reads_stdin() -> None:
    proc = cli("hash-password", "--cost", "10", input="correct horse battery\n")
    assert proc.returncode == 0, proc.stderr
    stored = proc.stdout.strip()
    assert stored.startswith("$2b$10$")
    assert bcrypt.checkpw(b"correct horse battery", stored.encode())
    argon = cli("hash-password", "--algorithm", "argon2id", input="correct horse battery\n")
    assert argon.stdout.startswith("$argon2id$v=19$")
    assert cli("hash-password", input="short\n").returncode == 1
