"""Whatever is wrong with a policy change, it is a rejected change, reported at its file:
never an exception that ends the reload task, and never a file read from outside the
directory (issue 13)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.policy import load
from gateway.policy.source import PolicySource

EXAMPLE = Path(__file__).resolve().parents[1] / "policies"


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "policies"))


def list_subject(policy: Path) -> str:
    (policy / "tests" / "odd.yaml").write_text(
        "- as: [user:alice]\n  scope: repository:a/b:pull\n  granted: [pull]\n"
    )
    return "tests/odd.yaml:1:7: error: as must be one value"


def list_action(policy: Path) -> str:
    (policy / "tests" / "odd.yaml").write_text(
        "- as: user:alice\n  scope: repository:a/b:pull\n  granted: [[pull]]\n"
    )
    return "tests/odd.yaml:3:13: error: each granted action must be one value"


def not_utf8(policy: Path) -> str:
    (policy / "extra.yaml").write_bytes(b"users:\n  z\xff: {}\n")
    return "extra.yaml:1:1: error: not UTF-8 text"


def file_link(policy: Path) -> str:
    outside = policy.parent / "outside.yaml"
    outside.write_text("grants:\n  - to: [authenticated]\n    on: ['**']\n    allow: [push]\n")
    (policy / "zz-extra.yaml").symlink_to(outside)
    return "zz-extra.yaml:1:1: error: a symbolic link"


def directory_link(policy: Path) -> str:
    outside = policy.parent / "elsewhere"
    outside.mkdir()
    (outside / "grants.yaml").write_text("grants: []\n")
    (policy / "more").symlink_to(outside)
    return "more:1:1: error: a symbolic link"


def too_large(policy: Path) -> str:
    (policy / "huge.yaml").write_text("# " + "x" * (load.MAX_FILE_BYTES + 10) + "\n")
    return "huge.yaml:1:1: error: too large"


BREAKAGES: list[Callable[[Path], str]] = [
    list_subject,
    list_action,
    not_utf8,
    file_link,
    directory_link,
    too_large,
]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda b: b.__name__)
def test_a_broken_change_is_rejected_at_its_file_and_the_next_good_one_loads(
    policy: Path, breakage: Callable[[Path], str]
) -> None:
    source = PolicySource(policy)
    assert source.reload()
    good = source.status().revision
    expected = breakage(policy)
    assert source.reload() is False  # rejected, not raised
    status = source.status()
    assert status.revision == good and status.state == "degraded"
    assert expected in (status.last_error or "").replace(f"{policy}/", "")
    # The fix (here: undoing the breakage) is taken at the next reload.
    for leftover in ("tests/odd.yaml", "extra.yaml", "zz-extra.yaml", "more", "huge.yaml"):
        path = policy / leftover
        if path.is_symlink() or path.is_file():
            path.unlink()
    assert source.reload()
    assert source.status().state == "ok"


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda b: b.__name__)
def test_check_reports_it_at_its_file_without_a_traceback(
    policy: Path, breakage: Callable[[Path], str], capsys: pytest.CaptureFixture[str]
) -> None:
    expected = breakage(policy)
    assert main(["check", str(policy)]) == 1
    out = capsys.readouterr()
    assert expected in (out.out + out.err).replace(f"{policy}/", "")
    assert "Traceback" not in out.out + out.err


def test_nothing_outside_the_directory_is_read(policy: Path) -> None:
    secret = policy.parent / "secret.yaml"
    secret.write_text("users:\n  mallory-was-here: {}\n")
    (policy / "people-extra.yaml").symlink_to(secret)
    source = PolicySource(policy)
    assert source.reload() is False
    assert "mallory-was-here" not in (source.status().last_error or "")
