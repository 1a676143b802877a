"""The catalog index: what the registry holds, in memory, refreshed and updated by notifications.

Manifests are stored once per digest and shared by every tag and repository that points at
them (images built from one base share most of their data), so the index stays small. A
manifest is content-addressed, so the index never reads a digest it holds again: a refresh
reads the repository list and each repository's tag list, and only the tags that changed
(gateway/catalog/plan.py decides how), so a refresh that finds nothing new costs one request
per page of those lists. The first read, and a full re-read every `full_refresh` seconds, read
every tag; docs/ui.md ("How the index stays current") has the costs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.catalog.manifests import ManifestReader
from gateway.catalog.model import Layer as Layer  # the UI imports the records from here
from gateway.catalog.model import Manifest as Manifest
from gateway.catalog.model import Platform as Platform
from gateway.catalog.model import Repository as Repository
from gateway.catalog.model import Step as Step
from gateway.catalog.model import utc_seconds
from gateway.catalog.plan import plan
from gateway.catalog.progress import LOG_EVERY, Progress
from gateway.catalog.registry import RegistryClient, RegistryError, is_digest, is_tag
from gateway.policy.patterns import is_repository_name

log = logging.getLogger("registry_gateway.catalog")
T = TypeVar("T")
CONCURRENCY = 8  # requests in flight (bench/catalog.py measured 4 to 32 against Distribution)
FULL_REFRESH = 3600.0  # seconds between full re-reads, which find tags moved unannounced


@dataclass(frozen=True, slots=True)
class IndexStatus:
    built: bool
    last_refresh: float | None
    refresh_seconds: float | None
    last_error: str | None
    repositories: int
    tags: int
    progress: dict[str, Any] | None = None  # while the registry is being read: Progress.as_dict
    last_full_refresh: float | None = None  # when the last read of every tag ended


async def _together(work: Iterable[Awaitable[T]]) -> list[T]:
    """Run `work` at once; the first failure cancels the rest and is raised as it is."""
    tasks = [asyncio.ensure_future(one) for one in work]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class CatalogIndex:
    """Repositories and tags known from the registry; readers never see a half-built index."""

    def __init__(
        self,
        client: RegistryClient,
        *,
        concurrency: int = CONCURRENCY,
        full_refresh: float = FULL_REFRESH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._clock = clock  # when a full re-read is due
        self.repositories: dict[str, Repository] = {}
        self._manifests: dict[str, Manifest] = {}  # by digest, shared
        # Tags listed whose manifest was gone when read, by repository: not asked again
        # until a full re-read (a tag left behind by a deleted manifest stays so).
        self._unreadable: dict[str, frozenset[str]] = {}
        self.concurrency = concurrency
        self._gate = asyncio.Semaphore(concurrency)
        self.full_refresh = full_refresh
        self._full_due = 0.0  # the clock's time after which a refresh reads every tag
        self.generation = 0  # bumped on every change, for caches keyed on the index
        self.last_refresh: float | None = None
        self.refresh_seconds: float | None = None
        self.last_full_refresh: float | None = None
        self.last_error: str | None = None
        self.built = False
        self.progress: Progress | None = None  # of the refresh under way
        # Tags that notifications said were pushed, by repository: tag -> manifest digest.
        self._pushed: dict[str, dict[str, str]] = {}
        self._push_times: dict[str, str] = {}  # the newest push notified, by repository
        # Updates by notification, numbered: a refresh keeps what one made while it ran.
        self._updates = 0
        self._updated: dict[str, int] = {}

    def status(self) -> IndexStatus:
        tags = sum(len(r.tags) for r in self.repositories.values())
        progress = self.progress
        return IndexStatus(
            self.built,
            self.last_refresh,
            self.refresh_seconds,
            self.last_error,
            len(self.repositories),
            tags,
            progress.as_dict() if progress is not None else None,
            self.last_full_refresh,
        )

    # -- reading the registry ----------------------------------------------------------

    async def refresh(self, *, full: bool | None = None) -> bool:
        """Bring the index up to date with the registry; keep what it holds if that fails.

        The first read reads every tag's manifest; later ones what changed, and every tag's
        digest (HEAD) when `full` or once `full_refresh` seconds have passed since the last
        full read. False when the registry could not be read.
        """
        if not self.built:
            kind = "first read"
        elif full or (full is None and self._clock() >= self._full_due):
            kind = "full re-read"
        else:
            kind = "refresh"
        started = time.perf_counter()
        mark = self._updates
        progress = self.progress = Progress(kind)
        reader = ManifestReader(self.client, self._manifests, self._gate, progress)
        reporter = asyncio.create_task(self._report(progress))
        try:
            names = await self.client.repositories()
            progress.repositories = len(names)
            read = await self._read_all(names, reader, full=kind == "full re-read")
        except RegistryError as exc:
            self.last_error = str(exc)
            log.warning(
                "catalog %s failed: %s", kind, exc, extra={"event": "catalog_refresh_failed"}
            )
            return False
        finally:
            reporter.cancel()
            await reader.close()
            self.progress = None
        self._publish(read, reader, mark)
        self.built = True
        self.last_error = None
        self.last_refresh = time.time()
        self.refresh_seconds = time.perf_counter() - started
        if kind != "refresh":
            self.last_full_refresh = self.last_refresh
            self._full_due = self._clock() + self.full_refresh
        log.info(
            "catalog %s: %d repositories, %d tags in %.1f s (%d tag lists, %d HEAD, "
            "%d manifests and %d configs read)",
            kind,
            len(self.repositories),
            sum(len(r.tags) for r in self.repositories.values()),
            self.refresh_seconds,
            progress.tag_lists,
            progress.heads,
            progress.manifests,
            progress.configs,
            extra={"event": "catalog_refreshed", **progress.as_dict()},
        )
        return True

    async def _report(self, progress: Progress) -> None:
        """A progress line every LOG_EVERY seconds while a read lasts."""
        while True:
            await asyncio.sleep(LOG_EVERY)
            log.info(
                "catalog %s",
                progress.summary(),
                extra={"event": "catalog_progress", **progress.as_dict()},
            )

    async def _read_all(
        self, names: list[str], reader: ManifestReader, *, full: bool
    ) -> dict[str, tuple[Repository, frozenset[str]]]:
        """Every repository, `concurrency` at a time (each then reads its tags through the
        shared gate): a task per tag of every repository at once would hold far more memory
        than the index itself."""
        read: dict[str, tuple[Repository, frozenset[str]]] = {}
        todo = iter(names)

        async def worker() -> None:
            for name in todo:  # one iterator shared by the workers
                read[name] = await self._read_repository(name, reader, full=full)
                reader.progress.repositories_done += 1

        await _together(worker() for _ in range(self.concurrency))
        return read

    async def _read_repository(
        self,
        name: str,
        reader: ManifestReader,
        *,
        full: bool = False,
        pushed: dict[str, str] | None = None,
    ) -> tuple[Repository, frozenset[str]]:
        """The repository as the registry has it now, and its tags that could not be read.
        The very object the index holds when nothing changed."""
        async with self._gate:
            reader.progress.tag_lists += 1
            listed = list(dict.fromkeys(await self.client.tags(name)))
        reader.progress.tags += len(listed)
        previous = self.repositories.get(name)
        unreadable = self._unreadable.get(name, frozenset())
        todo = plan(
            listed,
            previous.tags if previous is not None else None,
            unreadable=unreadable,
            pushed=pushed,
            full=full,
        )
        if todo.unchanged and previous is not None:
            return previous, unreadable
        reads = [(tag, reader.by_tag(name, tag)) for tag in todo.get]
        reads += [(tag, reader.by_head(name, tag)) for tag in todo.head]
        reads += [(tag, reader.by_digest(name, digest)) for tag, digest in todo.pushed.items()]
        found = dict(todo.keep)
        for (tag, _), manifest in zip(reads, await _together(r for _, r in reads), strict=True):
            if manifest is not None:
                found[tag] = manifest
        # In the registry's order; tags a notification named and not listed yet at the end.
        tags = {tag: found[tag] for tag in listed if tag in found}
        tags.update((tag, manifest) for tag, manifest in found.items() if tag not in tags)
        still = frozenset(tag for tag in listed if tag not in tags)
        last_push = previous.last_push if previous is not None else None
        return Repository(name, tags, last_push), still

    def _publish(
        self,
        read: dict[str, tuple[Repository, frozenset[str]]],
        reader: ManifestReader,
        mark: int,
    ) -> None:
        """Replace the index with what a refresh read, in one assignment, keeping what
        notifications updated while it ran (those reads are newer than the refresh's)."""
        current = self.repositories
        newer = {name for name, number in self._updated.items() if number > mark}
        repositories: dict[str, Repository] = {}
        unreadable: dict[str, frozenset[str]] = {}
        for name, (repo, missing) in read.items():
            if name in newer:
                continue
            if repo.tags:
                repositories[name] = repo
            if missing:
                unreadable[name] = missing
        for name in newer:
            if name in current:
                repositories[name] = current[name]
            if name in self._unreadable:
                unreadable[name] = self._unreadable[name]
        self._updated = {name: self._updated[name] for name in newer}
        self._unreadable = unreadable
        changed = len(repositories) != len(current) or any(
            repo is not current.get(name) for name, repo in repositories.items()
        )
        if not changed:
            return
        used = {m.digest for r in repositories.values() for m in r.tags.values()}
        held = {**self._manifests, **reader.found}
        self._manifests = {digest: m for digest, m in held.items() if digest in used}
        self.repositories = repositories
        self.generation += 1

    async def update_repository(self, name: str, *, pushed_at: str | None = None) -> None:
        """Re-read one repository now (a notification said it changed).

        The registry sends a manifest's push event before it links the tag, so the tag list
        may not show it yet: tags the events named are taken with their digest, and only a
        digest the index does not hold is read.
        """
        expected = self._pushed.pop(name, {})
        pushed_at = pushed_at or self._push_times.pop(name, None)
        reader = ManifestReader(
            self.client, self._manifests, self._gate, Progress(f"update of {name}")
        )
        try:
            repo, missing = await self._read_repository(name, reader, pushed=expected)
        except RegistryError as exc:
            log.warning("catalog update of %s failed: %s", name, exc)
            return
        finally:
            await reader.close()
        previous = self.repositories.get(name)
        last_push = pushed_at or (previous.last_push if previous is not None else None)
        if previous is not None and repo is previous:
            if last_push == previous.last_push:
                return  # nothing changed (a delete of an untagged manifest, a repeated event)
            repo = Repository(name, previous.tags, last_push)
        repo.last_push = last_push  # not published yet: still ours to change
        self._manifests.update(reader.found)
        repositories = dict(self.repositories)
        if repo.tags:
            repositories[name] = repo
        else:
            repositories.pop(name, None)
        unreadable = dict(self._unreadable)
        if missing:
            unreadable[name] = missing
        else:
            unreadable.pop(name, None)
        self._unreadable = unreadable
        self._updates += 1
        self._updated[name] = self._updates
        self.repositories = repositories
        self.generation += 1

    # -- notifications -----------------------------------------------------------------

    def apply_events(self, events: Iterable[Any]) -> set[str]:
        """Repositories that registry events say changed (pushes of manifests, deletes).

        Events are taken as the registry sends them (or as `Event`s already read); one that
        is not a well-formed event is ignored (see `Event.read`).
        """
        changed = set()
        for raw in events:
            event = raw if isinstance(raw, Event) else Event.read(raw)
            if event is None or event.action not in ("push", "delete"):
                continue
            name, tag = event.repository, event.tag
            if event.action == "push" and "manifest" not in event.media_type and not tag:
                continue  # a blob upload: the manifest push that follows is what matters
            if event.action == "push":
                if tag and event.digest:
                    self._pushed.setdefault(name, {})[tag] = event.digest
                if event.timestamp and event.timestamp > self._push_times.get(name, ""):
                    self._push_times[name] = event.timestamp
            changed.add(name)
        return changed


class EnvelopeError(ValueError):
    """A notification body that is not a registry notification envelope."""


def read_envelope(body: bytes) -> list[Any]:
    """The events of a notification envelope (`{"events": [...]}` in JSON), as sent; each is
    read by `Event.read`. EnvelopeError when the body is not an envelope at all."""
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8 or JSON, a huge number, deep nesting
        raise EnvelopeError("the body is not JSON") from None
    events = envelope.get("events") if isinstance(envelope, dict) else None
    if not isinstance(events, list):
        raise EnvelopeError('expected a registry notification envelope: {"events": [...]}')
    return events


@dataclass(frozen=True, slots=True)
class Event:
    """One registry event, as far as the catalog reads it."""

    action: str  # push | pull | delete | mount | ...
    repository: str
    tag: str | None = None
    digest: str | None = None
    media_type: str = ""
    timestamp: str | None = None  # RFC 3339 in UTC, to the second

    @classmethod
    def read(cls, raw: Any) -> Event | None:
        """The event `raw` (a decoded JSON value) describes, or None when it is not a
        well-formed event: not an object, no action, a repository name outside the
        distribution grammar, or a tag, digest or media type of the wrong type or form
        (no URL is ever built from those)."""
        if not isinstance(raw, dict):
            return None
        action, target = raw.get("action"), raw.get("target")
        if not isinstance(action, str) or not isinstance(target, dict):
            return None
        name, tag, digest = target.get("repository"), target.get("tag"), target.get("digest")
        media_type = target.get("mediaType", "")
        if (
            not isinstance(name, str)
            or not is_repository_name(name)
            or not (tag is None or is_tag(tag))
            or not (digest is None or is_digest(digest))
            or not isinstance(media_type, str)
        ):
            return None
        return cls(action, name, tag, digest, media_type, utc_seconds(raw.get("timestamp")))
