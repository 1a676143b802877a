"""What is attached to an image: signatures, attestations, SBOMs and referrers, which cosign
and OCI clients store under tags named after the image's digest.

cosign tags them `sha256-<hex>.sig`, `.att` and `.sbom`; the OCI 1.1 referrers tag schema (for
registries without the referrers API, such as Distribution 2.8) keeps an image index of them
under `sha256-<hex>`. Such tags are not images anyone pulls by name: lists of tags leave them
out, and an image's page lists what is attached to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.catalog.model import Manifest

ATTACHED = re.compile(r"sha256-([0-9a-f]{64})(?:\.(sig|att|sbom))?")
KINDS = {"sig": "signature", "att": "attestation", "sbom": "SBOM", "": "referrers"}
SUFFIXES = ("sig", "att", "sbom", "")


@dataclass(frozen=True, slots=True)
class Attachment:
    kind: str  # signature | attestation | SBOM | referrers
    tag: str
    subject: str  # the digest it is attached to
    manifest: Manifest


def attached_to(tag: str) -> tuple[str, str] | None:
    """(digest, kind) for a tag of the schemes above, else None."""
    if not tag.startswith("sha256-"):  # most tags: no regular expression
        return None
    found = ATTACHED.fullmatch(tag)
    if found is None:
        return None
    return f"sha256:{found[1]}", KINDS[found[2] or ""]


def is_attachment(tag: str) -> bool:
    return attached_to(tag) is not None


def tag_for(digest: str, suffix: str) -> str | None:
    """The tag under which something of kind `suffix` is attached to `digest`."""
    algorithm, _, encoded = digest.partition(":")
    if algorithm != "sha256":
        return None
    return f"sha256-{encoded}.{suffix}" if suffix else f"sha256-{encoded}"


def attachments(tags: Mapping[str, Manifest], digests: Iterable[str]) -> list[Attachment]:
    """What the repository's `tags` attach to any of `digests` (an image and its platforms)."""
    found = []
    for digest in dict.fromkeys(digests):
        for suffix in SUFFIXES:
            tag = tag_for(digest, suffix)
            manifest = tags.get(tag) if tag else None
            if tag and manifest is not None:
                found.append(Attachment(KINDS[suffix], tag, digest, manifest))
    return found
