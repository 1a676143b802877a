"""The command line called in-process (`main`): output lines and exit status. As a process, the
way a user runs it: tests/realworld/test_cli.py."""

from __future__ import annotations

import json

import pytest

from gateway.cli import main


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
    assert "expected user:NAME, robot:NAME, workload:NAME or anonymous" in capsys.readouterr().err
