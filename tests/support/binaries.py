"""Find the real programs the harness drives; a missing one fails the suite, never skips it."""

from __future__ import annotations

import shutil

import pytest


def require(name: str, package: str) -> str:
    """Return the path of the program `name`, or fail the test saying which package provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not installed: run `apt-get install -y {package}` (or `make test` as root)",
            pytrace=False,
        )
    return path
