"""tests/support/npm.py: a missing node or npm fails the test that needs it (with the package
to install), never skips it; versions are exact."""

from __future__ import annotations

import shutil

import pytest

from tests.support import npm


@pytest.mark.parametrize("missing", ["node", "npm"])
def test_a_missing_program_fails_with_the_command_to_run(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    found = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == missing else found(name))
    package = {"node": "nodejs", "npm": "npm"}[missing]
    with pytest.raises(pytest.fail.Exception, match=f"apt-get install -y {package}"):
        npm.npm_package("axe-core", "4.10.2")


@pytest.mark.parametrize("version", ["^4.10.2", "4", "latest", "4.10.x", ""])
def test_a_version_must_be_exact(version: str) -> None:
    with pytest.raises(ValueError, match="exact version"):
        npm.npm_package("axe-core", version)


def test_a_package_name_is_checked() -> None:
    with pytest.raises(ValueError):
        npm.npm_package("../../etc", "1.0.0")
