"""The catalog index: what the registry holds, in memory, refreshed and updated by notifications.

Manifests are stored once per digest and shared by every tag and repository that points at
them (images built from one base share most of their data), so the index stays small.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.catalog.registry import (
    INDEX_TYPES,
    RegistryClient,
    RegistryError,
    is_digest,
    is_tag,
)
from gateway.policy.patterns import is_repository_name, namespace_of

log = logging.getLogger("registry_gateway.catalog")


@dataclass(frozen=True, slots=True)
class Layer:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True, slots=True)
class Step:
    """One entry of an image config's `history`: the instruction that made a layer, or an
    empty step (`ENV`, `CMD`...) that made none."""

    created_by: str
    empty_layer: bool
    created: str | None


@dataclass(frozen=True, slots=True)
class Platform:
    """One image of a manifest (the only one, or one entry of an index)."""

    os: str
    architecture: str
    variant: str
    digest: str
    size: int  # compressed: config plus layers
    created: str | None
    layers: tuple[Layer, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    env_names: tuple[str, ...]  # names only: values may be secrets
    history: tuple[Step, ...] = ()  # oldest first, as in the config
    # What an artifact is (OCI `artifactType`, or a config media type that is not an image
    # config's); "" for an image.
    artifact_type: str = ""

    @property
    def name(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str
    media_type: str
    platforms: tuple[Platform, ...]
    size: int  # all distinct blobs it refers to
    created: str | None  # the newest of its images
    artifact_type: str = ""  # as Platform.artifact_type, for the manifest itself

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def kind(self) -> str:
        oci = "oci" in self.media_type
        if self.is_index:
            return "OCI index" if oci else "Docker manifest list"
        return "OCI image" if oci else "Docker v2 image"


@dataclass(slots=True)
class Repository:
    name: str
    tags: dict[str, Manifest] = field(default_factory=dict)
    last_push: str | None = None  # from notifications when known

    @property
    def namespace(self) -> str:
        return namespace_of(self.name)

    @property
    def size(self) -> int:
        seen: dict[str, int] = {}
        for manifest in self.tags.values():
            for platform in manifest.platforms:
                for layer in platform.layers:
                    seen[layer.digest] = layer.size
        return sum(seen.values())

    @property
    def updated(self) -> str | None:
        stamps = [m.created for m in self.tags.values() if m.created]
        if self.last_push:
            stamps.append(self.last_push)
        return max(stamps) if stamps else None


@dataclass(frozen=True, slots=True)
class _ImageConfig:
    """The parts of an image config the catalog shows; shared by every image built from it."""

    os: str
    architecture: str
    variant: str
    created: str | None
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    env_names: tuple[str, ...]  # names only: values may be secrets
    history: tuple[Step, ...]

    @classmethod
    def read(cls, config: dict[str, Any]) -> _ImageConfig:
        inner = config.get("config") or {}
        if not isinstance(inner, dict):
            inner = {}
        return cls(
            os=str(config.get("os", "")),
            architecture=str(config.get("architecture", "")),
            variant=str(config.get("variant", "")),
            created=utc_seconds(config.get("created")),
            entrypoint=tuple(str(a) for a in inner.get("Entrypoint") or ()),
            cmd=tuple(str(a) for a in inner.get("Cmd") or ()),
            labels=tuple(sorted((str(k), str(v)) for k, v in (inner.get("Labels") or {}).items())),
            env_names=tuple(sorted({str(e).partition("=")[0] for e in inner.get("Env") or []})),
            history=read_history(config.get("history")),
        )


_NO_CONFIG = _ImageConfig("", "", "", None, (), (), (), (), ())
MAX_STEPS = 1000  # history entries kept of one image (Docker's own limit on layers is 127)
MAX_STEP_TEXT = 2000  # characters of one `created_by` kept; a longer one ends with "…"
IMAGE_CONFIG_TYPES = frozenset(
    {
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
        "",
    }
)


def read_history(value: Any) -> tuple[Step, ...]:
    """An image config's `history`, as far as it is well-formed (anything else is skipped)."""
    if not isinstance(value, list):
        return ()
    steps = []
    for entry in value[:MAX_STEPS]:
        if not isinstance(entry, dict):
            continue
        text = entry.get("created_by")
        text = without_values(text) if isinstance(text, str) else ""
        if len(text) > MAX_STEP_TEXT:
            text = text[: MAX_STEP_TEXT - 1] + "\u2026"
        # Images built from one base repeat its steps: one string for all of them.
        created = utc_seconds(entry.get("created"))
        steps.append(
            Step(
                sys.intern(text),
                entry.get("empty_layer") is True,
                sys.intern(created) if created else None,
            )
        )
    return tuple(steps)


_SETS = re.compile(r"((?:/bin/sh -c #\(nop\)\s+)?(?:ENV|ARG)\s+)(.*)", re.DOTALL)
_BUILD_ARGS = re.compile(r"((?:RUN )?\|)(\d{1,3}) (.*)", re.DOTALL)
_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)=")


def without_values(text: str) -> str:
    """A history step with the values of its variables hidden, as the environment's are:
    `ENV TOKEN=abc` -> `ENV TOKEN=…`, and the build arguments before a `RUN`
    (`|1 TOKEN=abc /bin/sh -c make` -> `|1 TOKEN=… /bin/sh -c make`)."""
    text = text.strip()
    sets = _SETS.fullmatch(text)
    if sets is not None:
        names = _NAME.findall(sets[2])
        if names:
            return sets[1] + " ".join(f"{name}=\u2026" for name in names)
        words = sets[2].split(None, 1)  # the older `ENV NAME value` form
        return sets[1] + (words[0] if words else "") + (" \u2026" if len(words) > 1 else "")
    args = _BUILD_ARGS.fullmatch(text)
    if args is not None:
        count = int(args[2])
        parts = args[3].split(" ", count)
        hidden = [part.partition("=")[0] + "=\u2026" for part in parts[:count]]
        return f"{args[1]}{count} " + " ".join(hidden + parts[count:])
    return text


def artifact_type(body: dict[str, Any], descriptor: dict[str, Any] | None = None) -> str:
    """What an OCI artifact is: `artifactType` (of its descriptor in an index, or of the
    manifest), else a config media type that is not an image config's; "" for an image."""
    for source in (descriptor or {}, body):
        value = source.get("artifactType")
        if isinstance(value, str) and value:
            return sys.intern(value[:255])
    config = body.get("config")
    kind = config.get("mediaType") if isinstance(config, dict) else None
    if isinstance(kind, str) and kind not in IMAGE_CONFIG_TYPES:
        return sys.intern(kind[:255])
    return ""


@dataclass(frozen=True, slots=True)
class IndexStatus:
    built: bool
    last_refresh: float | None
    refresh_seconds: float | None
    last_error: str | None
    repositories: int
    tags: int


class CatalogIndex:
    """Repositories and tags known from the registry; readers never see a half-built index."""

    def __init__(self, client: RegistryClient, *, concurrency: int = 16) -> None:
        self.client = client
        self.repositories: dict[str, Repository] = {}
        self._manifests: dict[str, Manifest] = {}  # by digest, shared
        self._configs: dict[str, _ImageConfig] = {}  # by config digest, shared
        self._layer_lists: dict[tuple[Layer, ...], tuple[Layer, ...]] = {}
        self.concurrency = concurrency
        self._semaphore = asyncio.Semaphore(concurrency)
        self.generation = 0  # bumped on every change, for caches keyed on the index
        self.last_refresh: float | None = None
        self.refresh_seconds: float | None = None
        self.last_error: str | None = None
        self.built = False
        # Tags that notifications said were pushed, by repository: tag -> manifest digest.
        self._pushed: dict[str, dict[str, str]] = {}
        self._push_times: dict[str, str] = {}  # the newest push notified, by repository

    def status(self) -> IndexStatus:
        tags = sum(len(r.tags) for r in self.repositories.values())
        return IndexStatus(
            self.built,
            self.last_refresh,
            self.refresh_seconds,
            self.last_error,
            len(self.repositories),
            tags,
        )

    # -- building ----------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Rebuild the whole index from the registry; keep the old one if the registry fails."""
        started = time.perf_counter()
        try:
            names = await self.client.repositories()
            fresh = await self._load_all(names)
        except RegistryError as exc:
            self.last_error = str(exc)
            log.warning(
                "catalog refresh failed: %s", exc, extra={"event": "catalog_refresh_failed"}
            )
            return False
        pushed = {name: repo.last_push for name, repo in self.repositories.items()}
        repositories = {}
        for repo in fresh:
            if repo.tags:
                repo.last_push = pushed.get(repo.name)
                repositories[repo.name] = repo
        used = {m.digest for r in repositories.values() for m in r.tags.values()}
        self._manifests = {d: m for d, m in self._manifests.items() if d in used}
        # Platforms keep what they need; new images start sharing afresh.
        self._configs, self._layer_lists = {}, {}
        self.repositories = repositories
        self.generation += 1
        self.built = True
        self.last_error = None
        self.last_refresh = time.time()
        self.refresh_seconds = time.perf_counter() - started
        log.info(
            "catalog: %d repositories, %d tags in %.1f s",
            len(repositories),
            sum(len(r.tags) for r in repositories.values()),
            self.refresh_seconds,
            extra={"event": "catalog_refreshed"},
        )
        return True

    async def _load_all(self, names: list[str]) -> list[Repository]:
        """Every repository, a few at a time: a task per tag of every repository at once
        would hold far more memory than the index itself."""
        found: list[Repository | None] = [None] * len(names)
        todo = iter(enumerate(names))

        async def worker() -> None:
            for i, name in todo:  # one iterator shared by the workers
                found[i] = await self._load_repository(name)

        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return [repo for repo in found if repo is not None]

    async def update_repository(self, name: str, *, pushed_at: str | None = None) -> None:
        """Re-read one repository now (a notification said it changed).

        The registry sends a manifest's push event before it links the tag, so the tag list
        may not show it yet: tags the events named are read by their digest instead.
        """
        expected = self._pushed.pop(name, {})
        pushed_at = pushed_at or self._push_times.pop(name, None)
        try:
            repo = await self._load_repository(name)
            for tag, digest in expected.items():
                found = repo.tags.get(tag)
                if found is None or found.digest != digest:
                    manifest = await self._load_tag(name, digest)
                    if manifest is not None:
                        repo.tags[tag] = manifest
        except RegistryError as exc:
            log.warning("catalog update of %s failed: %s", name, exc)
            return
        previous = self.repositories.get(name)
        repo.last_push = pushed_at or (previous.last_push if previous else None)
        repositories = dict(self.repositories)
        if repo.tags:
            repositories[name] = repo
        else:
            repositories.pop(name, None)
        self.repositories = repositories
        self.generation += 1

    async def _load_repository(self, name: str) -> Repository:
        async with self._semaphore:
            tags = await self.client.tags(name)
        manifests = await asyncio.gather(*(self._load_tag(name, tag) for tag in tags))
        repo = Repository(name)
        for tag, manifest in zip(tags, manifests, strict=True):
            if manifest is not None:
                repo.tags[tag] = manifest
        return repo

    async def _load_tag(self, repository: str, tag: str) -> Manifest | None:
        async with self._semaphore:
            found = await self.client.manifest(repository, tag)
        if found is None:
            return None
        digest, media_type, body = found
        cached = self._manifests.get(digest)
        if cached is not None:
            return cached
        if media_type in INDEX_TYPES:
            platforms = []
            for entry in body.get("manifests") or []:
                child = await self._load_child(repository, entry)
                if child is not None:
                    platforms.append(child)
        else:
            platforms = [await self._platform(repository, digest, body, {})]
        sizes: dict[str, int] = {}
        for platform in platforms:
            for layer in platform.layers:
                sizes[layer.digest] = layer.size
        created = max((p.created for p in platforms if p.created), default=None)
        manifest = Manifest(
            sys.intern(digest),
            sys.intern(media_type),
            tuple(platforms),
            sum(sizes.values()),
            created,
            "" if media_type in INDEX_TYPES else artifact_type(body),
        )
        self._manifests[digest] = manifest
        return manifest

    async def _load_child(self, repository: str, entry: dict[str, Any]) -> Platform | None:
        digest = entry.get("digest") if isinstance(entry, dict) else None
        if not is_digest(digest):
            return None
        async with self._semaphore:
            found = await self.client.manifest(repository, digest)
        if found is None:
            return None
        return await self._platform(
            repository, digest, found[2], entry.get("platform") or {}, entry
        )

    async def _platform(
        self,
        repository: str,
        digest: str,
        body: dict[str, Any],
        platform: dict[str, Any],
        descriptor: dict[str, Any] | None = None,
    ) -> Platform:
        config_ref = body.get("config") or {}
        # An artifact's config can be anything (a large binary too): only image configs are read.
        image = config_ref.get("mediaType", "") in IMAGE_CONFIG_TYPES
        config = await self._config(repository, config_ref.get("digest", "") if image else "")
        layers = self._shared(
            tuple(
                Layer(
                    sys.intern(layer.get("digest", "")),
                    int(layer.get("size", 0)),
                    sys.intern(layer.get("mediaType", "")),
                )
                for layer in body.get("layers") or []
            )
        )
        return Platform(
            os=sys.intern(platform.get("os") or config.os),
            architecture=sys.intern(platform.get("architecture") or config.architecture),
            variant=sys.intern(platform.get("variant") or config.variant),
            digest=sys.intern(digest),
            size=int(config_ref.get("size", 0)) + sum(layer.size for layer in layers),
            created=config.created,
            layers=layers,
            entrypoint=config.entrypoint,
            cmd=config.cmd,
            labels=config.labels,
            env_names=config.env_names,
            history=config.history,
            artifact_type=artifact_type(body, descriptor),
        )

    def _shared(self, layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
        """One tuple for equal layer lists: images built from one base share them."""
        return self._layer_lists.setdefault(layers, layers)

    async def _config(self, repository: str, digest: Any) -> _ImageConfig:
        """What the index keeps of an image config (not the config itself), read once."""
        if not is_digest(digest):
            return _NO_CONFIG
        found = self._configs.get(digest)
        if found is None:
            async with self._semaphore:
                data = await self.client.blob_json(repository, digest) or {}
            found = self._configs[digest] = _ImageConfig.read(data)
        return found

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


def utc_seconds(value: Any) -> str | None:
    """An RFC 3339 time (image config `created`, notification `timestamp`) as seconds in UTC;
    a time without a zone is taken as UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError):  # not a time; a year-1 time east of UTC
        return None
