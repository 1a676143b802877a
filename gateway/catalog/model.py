"""What the catalog index holds: repositories, their tags, and the manifests those point at.

Records are immutable except `Repository`, which the index builds whole and then publishes:
a published repository is never changed, so a page reads one consistent state.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from gateway.catalog.registry import INDEX_TYPES
from gateway.policy.patterns import namespace_of


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
