"""The command line as a user runs it, a process (`python -m gateway`): output lines and exit
status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )


def test_check_passes_on_the_example_policy() -> None:
    proc = run("check", "policies")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("check: ok: 0 errors, 0 warnings; tests: 20 passed, 0 failed")


def test_check_fails_with_located_errors_and_failed_tests(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "p.yaml").write_text("users:\n  bob: {}\nnamespaces:\n  ns: {visibility: public}\n")
    (tmp_path / "tests" / "t.yaml").write_text(
        "- as: user:bob\n  scope: repository:ns/x:pull,push\n  granted: [pull, push]\n"
    )
    proc = run("check", str(tmp_path))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{tmp_path}/tests/t.yaml:1:3: error: test failed: user:bob on")
    assert "expected ['pull', 'push'] but got ['pull']" in lines[0]
    assert lines[-1].startswith("check: FAILED: 1 error, 0 warnings; tests: 0 passed, 1 failed")


def test_check_on_a_missing_directory_says_so(tmp_path: Path) -> None:
    proc = run("check", str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert "no such policy directory" in proc.stdout


def test_help_explains_each_command() -> None:
    proc = run("check", "--help")
    assert "file:line:column" in proc.stdout and proc.returncode == 0
