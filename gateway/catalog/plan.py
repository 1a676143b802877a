"""What to read of one repository: the refresh planner.

A manifest is content-addressed, so what the index holds for a digest never goes stale; what
changes is which digest a tag points at. The planner compares the tag list the registry gives
now with the tags the index holds and decides, per tag, the cheapest way to know its digest:

- a repository new to the index: every tag's manifest is read (GET), which says its digest too;
- a repository the index holds, its tag list unchanged: nothing more (the common case: one
  request per tag-list page, and a refresh that finds nothing new costs no other request);
- tags it holds that are still listed: kept as they are;
- new tags: their digest is asked with HEAD (no body), and the manifest is read only when the
  index does not hold that digest yet;
- tags a notification named with their digest: that digest, no HEAD (the registry sends the
  event before it lists the tag, so such a tag is taken even while not listed yet);
- a full re-read (every `catalog_full_refresh`): every listed tag's digest is asked again with
  HEAD, which finds tags that moved to another digest without a notification.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.catalog.model import Manifest


@dataclass(frozen=True, slots=True)
class RepositoryPlan:
    """How to read one repository."""

    unchanged: bool  # nothing to read or drop: the index's repository stands as it is
    keep: dict[str, Manifest] = field(default_factory=dict)  # tags kept without a request
    pushed: dict[str, str] = field(default_factory=dict)  # tag -> digest a notification gave
    head: tuple[str, ...] = ()  # tags whose digest is asked with HEAD
    get: tuple[str, ...] = ()  # tags whose manifest is read at once


def plan(
    listed: Sequence[str],
    known: Mapping[str, Manifest] | None,
    *,
    unreadable: frozenset[str] = frozenset(),
    pushed: Mapping[str, str] | None = None,
    full: bool = False,
) -> RepositoryPlan:
    """The plan for a repository whose tag list is `listed`.

    `known` is what the index holds of it (None: a repository new to the index); `unreadable`
    are tags it listed before whose manifest could not be found then (tried again only on a
    full re-read); `pushed` maps tags to the digests that
    notifications gave; `full` asks every tag's digest again.
    """
    pushed = dict(pushed or {})
    tags = [tag for tag in dict.fromkeys(listed) if tag not in pushed]
    if known is None:
        return RepositoryPlan(unchanged=False, pushed=pushed, get=tuple(tags))
    if full:
        return RepositoryPlan(unchanged=False, pushed=pushed, head=tuple(tags))
    keep = {tag: known[tag] for tag in tags if tag in known}
    new = tuple(tag for tag in tags if tag not in known and tag not in unreadable)
    still_unreadable = sum(1 for tag in tags if tag in unreadable)
    unchanged = (
        not pushed and not new and len(keep) == len(known) and still_unreadable == len(unreadable)
    )
    return RepositoryPlan(unchanged=unchanged, keep=keep, pushed=pushed, head=new)
