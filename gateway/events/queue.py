"""The bounded queue between the places events happen and the sender: putting never blocks
and never waits (the token path calls it), and when it is full the oldest item is dropped
and counted. Safe to put from any thread (policy reloads run in worker threads); the sender
takes from it on the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

from gateway import metrics

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """At most `size` items; `put_nowait` on a full queue drops the oldest (`dropped`)."""

    def __init__(self, size: int, where: str = "queue") -> None:
        self.size = max(1, size)
        self.where = where  # the metric's label for what it drops
        self.dropped = 0
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._ready: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    def __len__(self) -> int:
        return len(self._items)

    def bind(self) -> None:
        """Take items on the running event loop from now on (the sender calls this)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._ready = asyncio.Event()
        if self._items:
            self._ready.set()

    def put_nowait(self, item: T) -> None:
        """Add `item` now; on a full queue the oldest item goes (and is counted)."""
        with self._lock:
            if len(self._items) >= self.size:
                self._items.popleft()
                self.dropped += 1
                metrics.count_dropped(self.where)
            self._items.append(item)
        ready = self._ready
        if ready is None or ready.is_set():
            return
        if threading.get_ident() == self._thread:
            ready.set()
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(ready.set)

    def take_all(self) -> list[T]:
        """Every item waiting now, oldest first (none: an empty list)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items

    async def get_batch(self) -> list[T]:
        """Wait until there is something, then take everything waiting, oldest first."""
        assert self._ready is not None, "bind() the queue on the event loop first"
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return items
                self._ready.clear()
            await self._ready.wait()

    async def get(self) -> T:
        """Wait until there is something, then take the oldest item."""
        assert self._ready is not None, "bind() the queue on the event loop first"
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                self._ready.clear()
            await self._ready.wait()
