"""The command line as a user runs it: output lines and exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )


def test_check_passes_on_the_example_policy() -> None:
    proc = run("check", "policies")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("check: ok: 0 errors, 0 warnings; tests: 18 passed, 0 failed")


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


def test_explain_prints_rules_with_locations(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["explain", "--policies", "policies", "user:bob", "repository:platform/prod/api:pull,push"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert (
        "push    denied   restricted to robot:release, user:alice on platform/prod/** (policies/access.yaml:12)"
        in out
    )
    assert out.rstrip().endswith("granted: pull")


def test_explain_json_is_for_tools(capsys: pytest.CaptureFixture[str]) -> None:
    main(["explain", "--format", "json", "user:carol", "repository:platform/api:pull,push"])
    data = json.loads(capsys.readouterr().out)
    assert data["subject"] == "user:carol"
    assert data["resources"][0]["granted"] == ["pull"]
    assert data["resources"][0]["actions"][1]["reasons"][0]["rule"] == "no rule grants this"


def test_explain_rejects_a_bad_subject(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "bob", "repository:x/y:pull"]) == 2
    assert "expected user:NAME, robot:NAME or anonymous" in capsys.readouterr().err


def test_help_explains_each_command() -> None:
    proc = run("check", "--help")
    assert "file:line:column" in proc.stdout and proc.returncode == 0
