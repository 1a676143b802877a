"""A dictionary with a size limit that drops its oldest entry first: the caches' one helper."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most `size` entries; putting one makes it the newest, and the oldest goes beyond
    `size`. An OrderedDict, because it drops its oldest entry in O(1): a plain dict's first
    key is found by skipping every slot deleted since its last resize (on a full cache of
    10,000, that scan cost more than the rest of a put).

    Entries should hold strings, numbers and tuples of them where they can: a full garbage
    collection then walks a few objects per entry, not a graph (10,000 entries of dicts and
    lists made 50 ms pauses on the token path).
    """

    __slots__ = ("_items", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        items = self._items
        items[key] = value
        items.move_to_end(key)
        if len(items) > self.size:
            items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
