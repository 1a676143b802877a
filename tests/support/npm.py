"""npm packages the tests use (axe-core in the browser, a Node program such as an OIDC
provider), each at a pinned version, installed once into `.cache/npm/` of the checkout.

`npm_package("axe-core", "4.10.2")` returns the package's directory; its parent is a
`node_modules` directory to put on `NODE_PATH`. The first caller installs it (a few seconds,
from the npm registry) under a file lock, so parallel tests and sessions wait for one install
instead of racing; later callers find it done. A missing `node` or `npm`, or a failed install,
fails the test with the command to run: nothing is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .binaries import require

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "npm"
DONE = ".installed"  # written last: a directory without it is a broken install, redone
# An exact version only: a range would install whatever is newest on the day.
EXACT = re.compile(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?")
NAME = re.compile(r"(?:@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*")
TIMEOUT = 300.0


def npm_package(name: str, version: str, *, scripts: bool = False) -> Path:
    """The directory of npm package `name` at exactly `version`, installed on first use.

    Install scripts do not run unless `scripts` is true (none of ours needs them)."""
    if not NAME.fullmatch(name) or not EXACT.fullmatch(version):
        raise ValueError(f"want an npm package name and an exact version, got {name}@{version}")
    require("node", "nodejs")
    npm = require("npm", "npm")
    home = CACHE / f"{name.replace('/', '+')}@{version}"
    package = home / "node_modules" / name
    if (home / DONE).exists():
        return package
    CACHE.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE / ".lock"):
        if (home / DONE).exists():  # another test installed it while this one waited
            return package
        _install(npm, name, version, home, scripts)
    return package


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install(npm: str, name: str, version: str, home: Path, scripts: bool) -> None:
    """Install into a fresh directory, check it, then move it into place whole."""
    work = Path(tempfile.mkdtemp(prefix=".install-", dir=CACHE))
    command = [
        npm,
        "install",
        "--no-audit",
        "--no-fund",
        "--no-save",
        "--no-package-lock",
        "--no-update-notifier",
        *([] if scripts else ["--ignore-scripts"]),
        "--prefix",
        str(work),
        f"{name}@{version}",
    ]
    # npm's own cache stays in the checkout's cache too; nothing is written to $HOME.
    env = {**os.environ, "npm_config_cache": str(CACHE / ".npm-cache")}
    shown = f"npm install --prefix {home} {name}@{version}"
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
        if done.returncode != 0:
            pytest.fail(
                f"npm could not install {name}@{version} (exit {done.returncode}):\n"
                f"{done.stderr[-2000:]}\nrun `{shown}` to see why",
                pytrace=False,
            )
        installed = json.loads((work / "node_modules" / name / "package.json").read_text())
        if installed.get("version") != version:
            pytest.fail(
                f"npm installed {name}@{installed.get('version')}, not {version}", pytrace=False
            )
        (work / DONE).write_text(f"{name}@{version}\n")
        shutil.rmtree(home, ignore_errors=True)  # a broken install from before, if any
        work.rename(home)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"npm took over {TIMEOUT:.0f} s to install {name}@{version}: is the npm registry "
            f"reachable? run `{shown}`",
            pytrace=False,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
