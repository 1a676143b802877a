"""A rejected policy's log line says what is wrong and where (`file:line:column`), not only
that a revision was kept; as JSON, each problem is a field of the record, and the count of
problems logged is bounded however many there are."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from gateway.logs import JsonFormatter, TextFormatter
from gateway.policy.source import MAX_LOGGED_PROBLEMS, PolicySource

EXAMPLE = Path(__file__).resolve().parents[1] / "policies"


def rejected_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, teams: str
) -> logging.LogRecord:
    """Load the example policy, then reload it with `teams` added: the rejection's record."""
    policy = Path(shutil.copytree(EXAMPLE, tmp_path / "policies"))
    source = PolicySource(policy)
    assert source.reload()
    (policy / "more-teams.yaml").write_text(teams)
    with caplog.at_level(logging.ERROR, logger="registry_gateway.policy"):
        assert not source.reload()
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "policy_rejected"]
    return record


def test_the_log_line_names_each_problem_and_where(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = rejected_record(
        tmp_path, caplog, "teams:\n  ops:\n    owners: [mallory]\n    viewers: [robot:nobody]\n"
    )
    file = tmp_path / "policies" / "more-teams.yaml"
    text = TextFormatter().format(record)
    assert "\n" not in text
    assert "policy rejected; keeping revision sha256:" in text
    assert (
        f": 2 problem(s): {file}:3:14: team member 'mallory' is no known user or robot; "
        f"{file}:4:15: team member 'robot:nobody' is no known robot"
    ) in text

    data = json.loads(JsonFormatter().format(record))
    assert data["problem_count"] == 2
    assert [p["location"] for p in data["problems"]] == [
        f"{file}:3:14",
        f"{file}:4:15",
    ]
    assert all(p["severity"] == "error" and p["message"] for p in data["problems"])
    assert data["kept"] == record.kept  # type: ignore[attr-defined]


def test_the_problems_logged_are_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    owners = ", ".join(f"ghost{i}" for i in range(500))
    record = rejected_record(tmp_path, caplog, f"teams:\n  ops:\n    owners: [{owners}]\n")
    data = json.loads(JsonFormatter().format(record))
    assert data["problem_count"] == 500
    assert len(data["problems"]) == MAX_LOGGED_PROBLEMS
    text = TextFormatter().format(record)
    assert text.endswith(f"; and {500 - MAX_LOGGED_PROBLEMS} more")
    assert len(text) < 5000
