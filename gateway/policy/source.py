"""The live policy: load, validate, test, then swap in whole; the last good one stays on failure."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from gateway.policy.engine import Engine
from gateway.policy.load import PolicyError, Problem, content_revision, load_texts, policy_files
from gateway.policy.tests import case_files, read_cases, run_cases

log = logging.getLogger("registry_gateway.policy")


def git_revision(directory: Path) -> str | None:
    """The commit of a directory inside a git work tree, `-dirty` when it has changes there."""
    try:
        import git
    except ImportError:  # pragma: no cover - GitPython is a dependency
        return None
    try:
        repo = git.Repo(directory, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    try:
        commit = repo.head.commit.hexsha
    except ValueError:  # a repository without commits
        return None
    finally:
        repo.close()
    top = repo.working_tree_dir
    if top is None:  # a bare repository has no work tree to be dirty
        return commit[:12]
    relative = str(Path(directory).resolve().relative_to(Path(top).resolve()))
    dirty = repo.is_dirty(untracked_files=True, path=None if relative == "." else relative)
    return commit[:12] + ("-dirty" if dirty else "")


def validate(
    texts: dict[str, str], tests: dict[str, str], revision: str
) -> tuple[Engine, tuple[Problem, ...]]:
    """A whole policy from texts: loaded, compiled, and passing its own tests; PolicyError if not."""
    result = load_texts(texts, revision=revision)
    engine = Engine(result.policy)
    cases, problems = read_cases(tests)
    problems.extend(run_cases(engine, cases))
    if problems:
        raise PolicyError(problems)
    return engine, result.warnings


@dataclass(frozen=True, slots=True)
class Status:
    """What `/healthz` reports about the policy."""

    revision: str | None
    loaded_at: float | None
    last_error: str | None
    last_attempt: float | None
    reloads: int
    failures: int

    @property
    def state(self) -> str:
        if self.revision is None:
            return "unavailable"
        return "degraded" if self.last_error else "ok"


class PolicySource:
    """Holds the engine that decides requests; `reload()` replaces it only with a valid policy.

    Readers take `source.engine` once per request: an Engine is immutable, so a request is
    decided by exactly one revision even while a reload swaps in the next. `building` wraps
    each load and compile (the app pauses the cyclic garbage collector there: a process-wide
    decision this library does not make).
    """

    def __init__(
        self,
        directory: Path,
        *,
        building: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.directory = Path(directory)
        self.building = building
        self.engine: Engine | None = None
        self._lock = threading.Lock()
        self._loaded_at: float | None = None
        self._last_error: str | None = None
        self._last_attempt: float | None = None
        self._reloads = 0
        self._failures = 0
        # Called after every attempt with (revision in force, whether this attempt succeeded).
        self.listeners: list[Callable[[str | None, bool], None]] = []

    def status(self) -> Status:
        return Status(
            self.engine.revision if self.engine else None,
            self._loaded_at,
            self._last_error,
            self._last_attempt,
            self._reloads,
            self._failures,
        )

    def read(self) -> tuple[dict[str, str], dict[str, str], str]:
        """The policy's files, its tests and its revision, as on disk now."""
        texts = policy_files(self.directory)
        tests = case_files(self.directory)
        revision = git_revision(self.directory) or content_revision(
            {**texts, **tests}, base=self.directory
        )
        return texts, tests, revision

    def reload(self) -> bool:
        """Load the policy now; on failure keep the last good one and record why."""
        with self._lock:
            self._last_attempt = time.time()
            started = time.perf_counter()
            try:
                texts, tests, revision = self.read()
                with self.building():
                    engine, warnings = validate(texts, tests, revision)
            except PolicyError as exc:
                self._failures += 1
                self._last_error = str(exc)
                kept = self.engine.revision if self.engine else "none"
                log.error(
                    "policy rejected; keeping revision %s",
                    kept,
                    extra={"event": "policy_rejected", "error": self._last_error, "kept": kept},
                )
                self._notify(False)
                return False
            except OSError as exc:
                self._failures += 1
                self._last_error = f"{self.directory}: {exc}"
                log.error("policy unreadable: %s", exc, extra={"event": "policy_rejected"})
                self._notify(False)
                return False
            for warning in warnings:
                log.warning("%s", warning, extra={"event": "policy_warning"})
            previous = self.engine.revision if self.engine else None
            self.engine = engine
            self._loaded_at = time.time()
            self._last_error = None
            self._reloads += 1
            log.info(
                "policy revision %s loaded in %.0f ms",
                engine.revision,
                (time.perf_counter() - started) * 1000,
                extra={"event": "policy_loaded", "revision": engine.revision, "previous": previous},
            )
        self._notify(True)
        return True

    def _notify(self, ok: bool) -> None:
        revision = self.engine.revision if self.engine else None
        for listener in self.listeners:
            listener(revision, ok)

    def loaded_at_iso(self) -> str | None:
        if self._loaded_at is None:
            return None
        return dt.datetime.fromtimestamp(self._loaded_at, dt.UTC).isoformat(timespec="seconds")
