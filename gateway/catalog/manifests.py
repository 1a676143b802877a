"""Reading manifests and image configs from the registry into the index's records.

One `ManifestReader` serves one read of the registry (a refresh, or one repository that a
notification named). It asks the registry for each manifest digest and each image config at
most once, even when many tags ask at the same moment; a digest the index already holds is
never read again (a manifest is content-addressed: what a digest names cannot change). Images
built from one base share their config's records and equal layer lists.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.catalog.model import Layer, Manifest, Platform, Step, utc_seconds
from gateway.catalog.progress import Progress
from gateway.catalog.registry import INDEX_TYPES, ManifestUnreadable, RegistryClient, is_digest

log = logging.getLogger("registry_gateway.catalog")

T = TypeVar("T")
MAX_PLATFORMS = 256  # entries of one image index read (multi-platform images have a few)


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
        """What `config` says; nothing of a config that is not shaped like one."""
        inner = config.get("config") or {}
        if not isinstance(inner, dict):
            inner = {}
        try:
            return cls._read(config, inner)
        except (AttributeError, TypeError, ValueError):  # `Labels` a list, `Env` a number...
            return _NO_CONFIG

    @classmethod
    def _read(cls, config: dict[str, Any], inner: dict[str, Any]) -> _ImageConfig:
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


class ManifestReader:
    """Reads what one pass over the registry needs; `found` holds the manifests it read."""

    def __init__(
        self,
        client: RegistryClient,
        known: Mapping[str, Manifest],
        gate: asyncio.Semaphore,
        progress: Progress,
    ) -> None:
        self.client = client
        self.known = known  # the index's manifests by digest: read, never changed here
        self.gate = gate  # bounds the requests in flight, shared by every reader
        self.progress = progress
        self.found: dict[str, Manifest] = {}
        self._configs: dict[str, _ImageConfig] = {}
        self._layer_lists: dict[tuple[Layer, ...], tuple[Layer, ...]] = {}
        self._children: dict[str, Platform] | None = None
        self._pending: dict[str, asyncio.Task[Any]] = {}

    def held(self, digest: str) -> Manifest | None:
        """The manifest `digest` if the index or this pass holds it already."""
        return self.found.get(digest) or self.known.get(digest)

    async def close(self) -> None:
        """Cancel reads nobody waits for any more (the pass failed part way)."""
        pending = [task for task in self._pending.values() if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _once(self, key: str, read: Callable[[], Awaitable[T]]) -> T:
        """`read()`, run once for `key` however many ask while it runs."""
        task = self._pending.get(key)
        if task is None:
            task = self._pending[key] = asyncio.ensure_future(read())
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        result: T = await asyncio.shield(task)
        return result

    # -- one tag --------------------------------------------------------------------------

    async def by_tag(self, repository: str, tag: str) -> Manifest | None:
        """Read the tag's manifest (which says its digest too); None when the tag is gone."""
        async with self.gate:
            self.progress.manifests += 1
            found = await self._manifest(repository, tag)
        if found is None:
            return None
        digest, media_type, body = found
        return self.held(digest) or await self._once(
            digest, lambda: self._build(repository, digest, media_type, body)
        )

    async def by_head(self, repository: str, tag: str) -> Manifest | None:
        """Ask the tag's digest with HEAD; read the manifest only if it is new to the index."""
        async with self.gate:
            self.progress.heads += 1
            digest = await self.client.digest(repository, tag)
        if digest is None:
            return None
        if not digest:  # the registry did not say
            return await self.by_tag(repository, tag)
        return await self.by_digest(repository, digest)

    async def by_digest(self, repository: str, digest: str) -> Manifest | None:
        """The manifest `digest`: held already, or read once."""
        return self.held(digest) or await self._once(digest, lambda: self._read(repository, digest))

    async def _read(self, repository: str, digest: str) -> Manifest | None:
        async with self.gate:
            self.progress.manifests += 1
            found = await self._manifest(repository, digest)
        if found is None:
            return None
        return await self._build(repository, digest, found[1], found[2])

    async def _manifest(
        self, repository: str, reference: str
    ) -> tuple[str, str, dict[str, Any]] | None:
        """The manifest, or None when it is gone or unreadable: an unreadable one is logged
        and its tag left out (tried again at the next full re-read), not the whole pass."""
        try:
            return await self.client.manifest(repository, reference)
        except ManifestUnreadable as exc:
            self.progress.unreadable += 1
            log.warning(
                "catalog leaves out %s:%s: %s",
                repository,
                reference,
                exc,
                extra={"event": "catalog_manifest_unreadable"},
            )
            return None

    # -- what a manifest holds ------------------------------------------------------------

    async def _build(
        self, repository: str, digest: str, media_type: str, body: dict[str, Any]
    ) -> Manifest:
        if media_type in INDEX_TYPES:
            entries = _list(body.get("manifests"))
            children = await asyncio.gather(
                *(self._child(repository, entry) for entry in entries[:MAX_PLATFORMS])
            )
            platforms = [child for child in children if child is not None]
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
        self.found[digest] = manifest
        return manifest

    def _known_child(self, digest: str, platform: dict[str, Any]) -> Platform | None:
        """A platform of an index the index holds, if it is the same image for the same
        platform (an image index re-built with one platform changed shares the others)."""
        if self._children is None:
            self._children = {
                child.digest: child
                for held in (self.known, self.found)
                for manifest in held.values()
                if manifest.is_index
                for child in manifest.platforms
            }
        child = self._children.get(digest)
        if child is None:
            return None
        wanted = (platform.get("os"), platform.get("architecture"), platform.get("variant"))
        have = (child.os, child.architecture, child.variant)
        if any(w and w != h for w, h in zip(wanted, have, strict=True)):
            return None
        return child

    async def _child(self, repository: str, entry: Any) -> Platform | None:
        digest = entry.get("digest") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not is_digest(digest):
            return None
        platform = entry.get("platform") or {}
        if not isinstance(platform, dict):
            platform = {}
        child = self._known_child(digest, platform)
        if child is not None:
            return child
        async with self.gate:
            self.progress.manifests += 1
            found = await self._manifest(repository, digest)
        if found is None:  # gone or unreadable: the index shows the platforms it could read
            return None
        return await self._platform(repository, digest, found[2], platform, entry)

    async def _platform(
        self,
        repository: str,
        digest: str,
        body: dict[str, Any],
        platform: dict[str, Any],
        descriptor: dict[str, Any] | None = None,
    ) -> Platform:
        config_ref = body.get("config") or {}
        if not isinstance(config_ref, dict):
            config_ref = {}
        # An artifact's config can be anything (a large binary too): only image configs are read.
        image = config_ref.get("mediaType", "") in IMAGE_CONFIG_TYPES
        config = await self._config(repository, config_ref.get("digest", "") if image else "")
        layers = self._shared(
            tuple(
                Layer(
                    sys.intern(_text(layer.get("digest"))),
                    _size(layer.get("size")),
                    sys.intern(_text(layer.get("mediaType"))),
                )
                for layer in _list(body.get("layers"))
                if isinstance(layer, dict)
            )
        )
        return Platform(
            os=sys.intern(_text(platform.get("os")) or config.os),
            architecture=sys.intern(_text(platform.get("architecture")) or config.architecture),
            variant=sys.intern(_text(platform.get("variant")) or config.variant),
            digest=sys.intern(digest),
            size=_size(config_ref.get("size")) + sum(layer.size for layer in layers),
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
            found = await self._once(
                f"config {digest}", lambda: self._read_config(repository, digest)
            )
        return found

    async def _read_config(self, repository: str, digest: str) -> _ImageConfig:
        async with self.gate:
            self.progress.configs += 1
            data = await self.client.blob_json(repository, digest) or {}
        found = self._configs[digest] = _ImageConfig.read(data)
        return found


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _size(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
