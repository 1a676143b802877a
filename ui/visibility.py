"""What each viewer may see of the catalog, cached so that pages stay fast.

Whether a subject may pull a repository depends only on the policy, so the answers are kept
per (subject, engine) and survive index changes: a push only costs a decision for names
not seen before. The visible view itself is rebuilt when the index generation moves on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.catalog.attachments import is_attachment
from gateway.catalog.index import CatalogIndex, Repository
from gateway.policy.engine import Engine
from gateway.policy.model import Subject
from gateway.policy.patterns import namespace_of


@dataclass(frozen=True, slots=True)
class Summary:
    """A repository as lists show it."""

    name: str
    namespace: str
    tags: int  # tags people pull: signatures and other attachments are not counted
    size: int
    updated: str | None
    last_push: str | None
    tag_text: str  # every tag, lower-cased and joined by newlines: one `in` test for search

    def data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "tags": self.tags,
            "size": self.size,
            "updated": self.updated,
            "last_push": self.last_push,
        }


class Summaries:
    """Summaries by repository, recomputed only for repositories the index replaced."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[Repository, Summary]] = {}

    def get(self, repo: Repository) -> Summary:
        cached = self._items.get(repo.name)
        if cached is not None and cached[0] is repo:
            return cached[1]
        tags = [tag for tag in repo.tags if not is_attachment(tag)]
        summary = Summary(
            repo.name,
            repo.namespace,
            len(tags),
            repo.size,
            repo.updated,
            repo.last_push,
            "\n".join(tags).lower(),
        )
        self._items[repo.name] = (repo, summary)
        return summary

    def forget_missing(self, repositories: Mapping[str, Repository]) -> None:
        for name in [n for n in self._items if n not in repositories]:
            del self._items[name]


@dataclass(slots=True)
class VisibleCatalog:
    """The repositories one viewer may pull, from one generation of the index."""

    generation: int
    repositories: Mapping[str, Repository]  # the whole index snapshot: look up through get()
    names: list[str]  # visible, sorted
    by_namespace: dict[str, list[str]]
    _visible: frozenset[str] = frozenset()
    memo: dict[str, Any] = field(default_factory=dict)  # per-view derived data (rows, counts)

    def get(self, name: str) -> Repository | None:
        """The repository if this viewer may see it; None for missing and hidden alike."""
        return self.repositories.get(name) if name in self._visible else None

    def __len__(self) -> int:
        return len(self.names)


class VisibilityCache:
    """Per-viewer visible catalogs, least recently used first out."""

    def __init__(self, viewers: int = 128) -> None:
        self.viewers = viewers
        self._pull: OrderedDict[tuple[Subject, Engine], dict[str, bool]] = OrderedDict()
        self._views: OrderedDict[tuple[Subject, Engine], VisibleCatalog] = OrderedDict()

    def view(
        self, engine: Engine, subject: Subject, catalog: CatalogIndex | None
    ) -> VisibleCatalog:
        # The engine object stands for its revision as loaded (a "-dirty" revision string can
        # name two different policies; two engines never share decisions).
        key = (subject, engine)
        generation = catalog.generation if catalog is not None else -1
        cached = self._views.get(key)
        if cached is not None and cached.generation == generation:
            self._views.move_to_end(key)
            return cached
        repositories = catalog.repositories if catalog is not None else {}
        memo = self._pull.get(key)
        if memo is None:
            memo = self._pull[key] = {}
        self._pull.move_to_end(key)
        for name in repositories:
            if name not in memo:
                memo[name] = engine.may_pull(subject, name)  # no reasons built
        names = sorted(name for name in repositories if memo[name])
        by_namespace: dict[str, list[str]] = {}
        for name in names:
            by_namespace.setdefault(namespace_of(name), []).append(name)
        view = VisibleCatalog(generation, repositories, names, by_namespace, frozenset(names))
        self._views[key] = view
        self._views.move_to_end(key)
        for store in (self._views, self._pull):
            while len(store) > self.viewers:
                store.popitem(last=False)
        return view
