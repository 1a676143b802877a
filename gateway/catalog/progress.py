"""How far a read of the registry has come: counted as it goes, logged every few seconds while
it lasts, and shown on the Status page (`IndexStatus.progress`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

LOG_EVERY = 5.0  # seconds between progress lines while the registry is read


@dataclass(slots=True)
class Progress:
    """Counts of one read of the registry: a first read, a refresh, or a full re-read."""

    kind: str  # "first read" | "refresh" | "full re-read" | "update of REPOSITORY"
    started: float = field(default_factory=time.monotonic)
    repositories: int | None = None  # how many the registry lists, once it has said
    repositories_done: int = 0
    tags: int = 0  # listed by the repositories done or being read
    tag_lists: int = 0  # requests: tag-list pages
    heads: int = 0  # requests: a tag's digest asked with HEAD
    manifests: int = 0  # requests: manifests read (GET)
    configs: int = 0  # requests: image configs read (GET)
    unreadable: int = 0  # manifests that were not JSON objects: their tags are left out

    @property
    def requests(self) -> int:
        """Requests sent so far (not counting the repository list's pages)."""
        return self.tag_lists + self.heads + self.manifests + self.configs

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Requests a second since the read began."""
        return self.requests / max(self.elapsed, 1e-6)

    def summary(self) -> str:
        """One line for people: the log and the Status page."""
        total = "?" if self.repositories is None else f"{self.repositories:,}"
        return (
            f"{self.kind}: {self.repositories_done:,} of {total} repositories, "
            f"{self.tags:,} tags; {self.manifests:,} manifests and {self.configs:,} configs read, "
            f"{self.heads:,} digests checked; {self.rate:,.0f} requests/s for {self.elapsed:,.0f} s"
        )

    def as_dict(self) -> dict[str, Any]:
        """The counts as JSON fields (the log line's, the Status page's JSON twin)."""
        return {
            "kind": self.kind,
            "repositories_total": self.repositories,
            "repositories_done": self.repositories_done,
            "tags": self.tags,
            "tag_lists": self.tag_lists,
            "heads": self.heads,
            "manifests": self.manifests,
            "configs": self.configs,
            "unreadable": self.unreadable,
            "requests_per_second": round(self.rate, 1),
            "seconds": round(self.elapsed, 1),
            "summary": self.summary(),
        }
