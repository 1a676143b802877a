"""Two tiers by directory: tests under tests/realworld/ start real processes (the registry, its
clients, slapd, nginx, redis, git, the gateway itself) and are marked `realworld` here; every
other test starts none, and fails if it does (`make test-fast` runs those alone)."""

from __future__ import annotations

import _posixsubprocess
import os
import subprocess
from collections.abc import Callable, Generator
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import settings

# GitPython runs `git version` once, when it is first imported: do that here, before any
# test's guard, so that a fast test importing policy code that uses git does not fail only
# when it happens to run first (tests/test_cli.py on its own did).
import git  # noqa: F401  # isort: skip

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.redis",
    "tests.support.uistack",
    "tests.support.browser",
]

REALWORLD = Path(__file__).resolve().parent / "realworld"

# `make test-fast` sets PROPERTY_EXAMPLES: property tests without settings of their own then
# generate that many examples instead of hypothesis's 100 (make test keeps the default).
if os.environ.get("PROPERTY_EXAMPLES"):
    settings.register_profile("fast-tier", max_examples=int(os.environ["PROPERTY_EXAMPLES"]))
    settings.load_profile("fast-tier")

# Every way a process is started: subprocess (and through it asyncio, GitPython and shutil's
# helpers), multiprocessing (fork_exec, fork) and the os module's own.
SPAWNERS: tuple[tuple[object, str], ...] = (
    (subprocess.Popen, "_execute_child"),
    (_posixsubprocess, "fork_exec"),
    (os, "fork"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
)


class ProcessStarted(Exception):
    """A test outside tests/realworld/ tried to start a process (not an OSError: not swallowed
    by code that handles a missing program)."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests under tests/realworld/ `realworld`, and run the fast tier first."""
    for item in items:
        if REALWORLD in item.path.parents:
            item.add_marker(pytest.mark.realworld)
    items.sort(key=lambda item: item.get_closest_marker("realworld") is not None)


def _refuser(name: str, started: list[str]) -> Callable[..., NoReturn]:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        # Popen._execute_child(self, args, ...): the command is the second argument.
        shown = args[1] if args and isinstance(args[0], subprocess.Popen) else args[:1]
        started.append(f"{name}({shown!r})")
        raise ProcessStarted(f"{name}({shown!r}): move this test to tests/realworld/")

    return refuse


def _without_processes(item: pytest.Item) -> Generator[None, object, object]:
    """Run one phase of a fast test with every way to start a process refused; a refusal fails
    the phase even if the code under test caught the exception."""
    if item.get_closest_marker("realworld"):
        return (yield)
    started: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        for owner, name in SPAWNERS:
            patch.setattr(owner, name, _refuser(name, started))
        result = yield
    if started:
        pytest.fail(
            f"{item.nodeid} started a process outside tests/realworld/: {', '.join(started)}",
            pytrace=False,
        )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _without_processes(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _without_processes(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _without_processes(item))
