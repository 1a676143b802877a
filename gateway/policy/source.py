"""The live policy: load, validate, test, then swap in whole; the last good one stays on failure."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import git
from git.db import GitDB  # gitdb's reader, re-exported: objects read in-process, no git command
from git.objects.fun import tree_entries_from_data

from gateway.policy.engine import Engine
from gateway.policy.load import (
    ParseCache,
    PolicyError,
    Problem,
    content_digest,
    content_revision,
    load_texts,
    policy_files,
)
from gateway.policy.tests import case_files, read_cases, run_cases

log = logging.getLogger("registry_gateway.policy")


def git_revision(directory: Path, files: Mapping[str, str]) -> str | None:
    """The revision of policy files read from `directory` in a git work tree; None outside one.

    `files` are the policy's files and its tests as read, by display name under `directory`.
    The commit's first 12 hex digits when they are exactly what the checked-out commit holds
    there; else `<commit>-dirty-<content digest>`, so that every uncommitted state has its own
    revision and nothing keyed on it (the token reuse caches) outlives an edit. Read without a
    git command: HEAD from the ref files, the commit's tree from the object database.
    """
    try:
        repo = git.Repo(directory, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    try:
        try:
            commit = git.SymbolicReference.dereference_recursive(repo, "HEAD")
        except ValueError:  # a repository without commits
            return None
        top = repo.working_tree_dir
        if top is None:  # a bare repository: the files are not its work tree
            return None
        try:
            relative = Path(directory).resolve().relative_to(Path(top).resolve()).as_posix()
        except ValueError:
            return None
        committed = _committed_blobs(Path(repo.common_dir) / "objects", commit, relative)
    finally:
        repo.close()
    base = Path(directory)
    on_disk = {Path(name).relative_to(base).as_posix(): _blob_id(t) for name, t in files.items()}
    if committed == on_disk:
        return commit[:12]
    return f"{commit[:12]}-dirty-{content_digest(files, base=base)}"


def policy_revision(directory: Path, files: Mapping[str, str]) -> str:
    """The one revision string of a policy state, used by the server, `check`, `explain` and
    `diff` alike: `git_revision`, or outside git `sha256:` and the content digest."""
    return git_revision(directory, files) or content_revision(files, base=Path(directory))


def read_policy(directory: Path) -> tuple[dict[str, str], dict[str, str], str]:
    """A policy directory's files, its tests and its revision, as on disk now."""
    texts = policy_files(directory)
    tests = case_files(directory)
    return texts, tests, policy_revision(directory, {**texts, **tests})


def _blob_id(text: str) -> bytes:
    """The git object id of a file holding `text` (UTF-8)."""
    data = text.encode("utf-8")
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).digest()


def _committed_blobs(objects: Path, commit: str, directory: str) -> dict[str, bytes] | None:
    """The object ids of the policy and test files below `directory` in `commit`, by path
    relative to `directory` (chosen as `policy_files` and `case_files` choose them); None when
    the repository cannot be read this way (the files then count as uncommitted)."""
    try:
        db = GitDB(str(objects))
        data = _read(db, bytes.fromhex(commit), b"commit")
        head = data.split(b"\n", 1)[0]
        if not head.startswith(b"tree "):
            return None
        tree = bytes.fromhex(head[5:].decode("ascii"))
        for part in [] if directory == "." else directory.split("/"):
            found = [
                sha
                for sha, mode, name in tree_entries_from_data(_read(db, tree, b"tree"))
                if name == part and mode == _TREE
            ]
            if not found:
                return {}
            tree = found[0]
        blobs: dict[str, bytes] = {}
        _walk(db, tree, (), blobs)
        return blobs
    except Exception:  # a corrupt, shallow, partial or SHA-256 repository: not provably clean
        return None


_TREE = 0o040000
_FILES = (0o100644, 0o100755)


def _read(db: GitDB, sha: bytes, kind: bytes) -> bytes:
    stream = db.stream(sha)
    if stream.type != kind:
        raise ValueError(f"{sha.hex()} is a {stream.type!r}, not a {kind!r}")
    data: bytes = stream.read()
    return data


def _walk(db: GitDB, tree: bytes, prefix: tuple[str, ...], blobs: dict[str, bytes]) -> None:
    for sha, mode, name in tree_entries_from_data(_read(db, tree, b"tree")):
        parts = (*prefix, name)
        in_tests = parts[0] == "tests"
        if mode == _TREE:
            if in_tests or not name.startswith("."):
                _walk(db, sha, parts, blobs)
        elif mode in _FILES and PurePosixPath(name).suffix in (".yaml", ".yml"):
            hidden = any(p.startswith(".") for p in parts)
            if (in_tests and len(parts) > 1) or not (in_tests or hidden):
                blobs["/".join(parts)] = sha


# A rejection's log line carries this many problems at most, each message cut to this length:
# a policy with ten thousand mistakes must not write megabytes per reload attempt.
MAX_LOGGED_PROBLEMS = 10
MAX_LOGGED_MESSAGE = 300


def logged_problems(problems: Sequence[Problem]) -> list[dict[str, str]]:
    """The first problems of a rejection as log fields: `file:line:column`, severity, message."""
    out = []
    for problem in problems[:MAX_LOGGED_PROBLEMS]:
        message = problem.message
        if len(message) > MAX_LOGGED_MESSAGE:
            message = message[: MAX_LOGGED_MESSAGE - 1] + "\u2026"
        out.append(
            {"location": str(problem.location), "severity": problem.severity, "message": message}
        )
    return out


def validate(
    texts: dict[str, str],
    tests: dict[str, str],
    revision: str,
    *,
    cache: ParseCache | None = None,
    previous: Engine | None = None,
) -> tuple[Engine, tuple[Problem, ...]]:
    """A whole policy from texts: loaded, compiled, and passing its own tests; PolicyError if not.
    `cache` and `previous` (the engine in force) spare reading and compiling unchanged files."""
    result = load_texts(texts, revision=revision, cache=cache)
    engine = Engine(result.policy, previous)
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
        # The files read by earlier reloads, by name and content hash: a reload reads again
        # only the files that changed (and forgets the ones that are gone).
        self.parsed = ParseCache()
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
        return read_policy(self.directory)

    def reload(self) -> bool:
        """Load the policy now; on failure keep the last good one and record why."""
        with self._lock:
            self._last_attempt = time.time()
            started = time.perf_counter()
            try:
                texts, tests, revision = self.read()
                with self.building():
                    engine, warnings = validate(
                        texts, tests, revision, cache=self.parsed, previous=self.engine
                    )
            except PolicyError as exc:
                self._failures += 1
                self._last_error = str(exc)
                kept = self.engine.revision if self.engine else "none"
                problems = [p for p in exc.problems if p.severity == "error"] or exc.problems
                logged = logged_problems(problems)
                more = len(problems) - len(logged)
                log.error(
                    "policy rejected; keeping revision %s: %d problem(s): %s%s",
                    kept,
                    len(problems),
                    "; ".join(f"{p['location']}: {p['message']}" for p in logged),
                    f"; and {more} more" if more else "",
                    extra={
                        "event": "policy_rejected",
                        "kept": kept,
                        "problem_count": len(problems),
                        "problems": logged,
                    },
                )
                self._notify(False)
                return False
            except OSError as exc:
                self._failures += 1
                self._last_error = f"{self.directory}: {exc}"
                log.error("policy unreadable: %s", exc, extra={"event": "policy_rejected"})
                self._notify(False)
                return False
            except Exception as exc:  # a bug of ours on odd input: still a rejected change
                self._failures += 1
                self._last_error = f"{self.directory}: cannot load: {type(exc).__name__}: {exc}"
                log.exception(
                    "policy rejected (unexpected error); keeping revision %s",
                    self.engine.revision if self.engine else "none",
                    extra={"event": "policy_rejected", "error": self._last_error},
                )
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
