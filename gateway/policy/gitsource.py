"""A policy that lives in a git remote: clone once, then fetch and follow one branch.

The checkout is reset to the remote branch's head on every sync, so the gateway follows
fast-forwards and force-pushes alike and never merges anything of its own. Credentials come
from the settings (environment or config file) and reach git through its environment, never
through a command line or a URL that could be logged.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import shlex
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import git

log = logging.getLogger("registry_gateway.policy.git")


class GitSyncError(RuntimeError):
    """The remote could not be reached or read; the message carries no credentials."""


def redact(url: str) -> str:
    """A URL without any user name or password in it."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


@dataclass(frozen=True, slots=True)
class SyncResult:
    head: str
    previous: str | None
    forced: bool  # the new head does not descend from the previous one

    @property
    def changed(self) -> bool:
        return self.head != self.previous


class GitRemote:
    """One branch of a remote repository, checked out under the data dir."""

    def __init__(
        self,
        url: str,
        branch: str,
        checkout: Path,
        *,
        token: str | None = None,
        ssh_key: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = url
        self.branch = branch
        self.checkout = Path(checkout)
        self.timeout = timeout
        self.env = self._environment(token, ssh_key)
        self.last_error: str | None = None
        self.last_fetch: float | None = None
        self.head: str | None = None  # the commit checked out after the last good sync
        self._lock = threading.Lock()
        # Every process of a host (the workers of one `serve`) shares the checkout: one git
        # command at a time among them, or a second one fails on .git/index.lock.
        self._host_lock = self.checkout.parent / f".{self.checkout.name}.lock"

    def _environment(self, token: str | None, ssh_key: Path | None) -> dict[str, str]:
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
        if token:
            basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
            env.update(
                GIT_CONFIG_COUNT="1",
                GIT_CONFIG_KEY_0="http.extraHeader",
                GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
            )
        if ssh_key:
            env["GIT_SSH_COMMAND"] = (
                f"ssh -i {shlex.quote(str(ssh_key))} -o IdentitiesOnly=yes -o BatchMode=yes"
            )
        return env

    @property
    def directory(self) -> Path:
        return self.checkout

    def _repo(self) -> git.Repo:
        if (self.checkout / ".git").is_dir():
            repo = git.Repo(self.checkout)
        else:
            self.checkout.mkdir(parents=True, exist_ok=True)
            repo = git.Repo.init(self.checkout)
        with repo.git.custom_environment(**self.env):
            if "origin" not in [r.name for r in repo.remotes]:
                repo.create_remote("origin", self.url)
            elif repo.remotes.origin.url != self.url:
                repo.remotes.origin.set_url(self.url)
        return repo

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The checkout to this thread alone in this process, and to this process alone on
        this host: nothing else fetches, checks out or reads it meanwhile."""
        with self._lock:
            self._host_lock.parent.mkdir(parents=True, exist_ok=True)
            with self._host_lock.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
                yield

    def sync(self) -> SyncResult:
        """Fetch the branch and check out its head; GitSyncError when the remote fails.

        Another process of this host may have checked out the newest head already: then
        `changed` is false, and `head` still says what the checkout holds now."""
        with self.exclusive():
            return self.sync_held()

    def sync_held(self) -> SyncResult:
        """`sync`, for a caller that holds `exclusive()` (to read the checkout it made)."""
        started = time.monotonic()
        try:
            repo = self._repo()
        except git.GitError as exc:
            raise self._failed(f"cannot prepare {self.checkout}: {exc}") from None
        try:
            head = repo.head.commit if repo.head.is_valid() else None
            previous = head.hexsha if head is not None else None
            with repo.git.custom_environment(**self.env):
                repo.git.fetch(
                    "--prune",
                    "--force",
                    "origin",
                    f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}",
                    kill_after_timeout=self.timeout,
                )
            target = repo.commit(f"refs/remotes/origin/{self.branch}")
            forced = head is not None and not repo.is_ancestor(head, target)
            if target.hexsha != previous:
                repo.git.checkout("--force", "-B", self.branch, target.hexsha)
                repo.git.clean("-fdx")
        except (git.GitError, ValueError) as exc:
            raise self._failed(_short_git_error(exc, self.url, self.branch)) from None
        finally:
            repo.close()
        self.last_error = None
        self.last_fetch = time.time()
        self.head = target.hexsha
        result = SyncResult(target.hexsha, previous, forced)
        if result.changed:
            level = logging.WARNING if forced else logging.INFO
            log.log(
                level,
                "policy branch %s moved to %s%s in %.0f ms",
                self.branch,
                target.hexsha[:12],
                " (history rewritten)" if forced else "",
                (time.monotonic() - started) * 1000,
                extra={"event": "git_synced", "head": target.hexsha, "forced": forced},
            )
        return result

    def _failed(self, message: str) -> GitSyncError:
        self.last_error = message
        self.last_fetch = time.time()
        log.error("policy remote unavailable: %s", message, extra={"event": "git_sync_failed"})
        return GitSyncError(message)

    def describe(self) -> dict[str, object]:
        return {
            "kind": "git",
            "url": redact(self.url),
            "branch": self.branch,
            "last_fetch": self.last_fetch,
            "head": self.head,
            "error": self.last_error,
        }


def _short_git_error(exc: Exception, url: str, branch: str) -> str:
    """A one-line reason, with the remote's address redacted."""
    text = getattr(exc, "stderr", None) or str(exc)
    text = " ".join(str(text).split()).replace(url, redact(url))
    for marker in ("stderr: '", "fatal: "):
        if marker in text:
            text = text.split(marker, 1)[1]
    text = text.strip("' ")
    return f"fetching {redact(url)} branch {branch}: {text[:300]}"
