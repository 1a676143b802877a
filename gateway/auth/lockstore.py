"""Lockout counts in SQLite, shared by the workers of one host (`--workers N` without Redis).

One small table in the data directory holds each key's `Record`. Every call is one
transaction (`BEGIN IMMEDIATE`: the workers take turns) that reads the records of one sign-in,
applies `lockout.reserve` or `lockout.settle` to them and writes them back, so N workers count
as one. Calls run in a worker thread of the store's own (SQLite blocks), never on the event
loop; times are wall-clock seconds, which every process of the host shares. If the file cannot
be used, sign-ins are not throttled and the error is logged: a broken counter must not lock
everyone out.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from gateway.auth.lockout import (
    PENDING_TTL,
    Epoch,
    Keys,
    Limits,
    Outcome,
    Record,
    Refusal,
    Scope,
    reserve,
    settle,
)

log = logging.getLogger("registry_gateway.lockout")
T = TypeVar("T")

OPEN_TRIES = 100  # tries to switch a new file to WAL while another worker does (0.02 s apart)
SWEEP_EVERY = 60.0  # seconds between deletions of rows that hold nothing any more
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS lockout "
    "(key TEXT PRIMARY KEY, record TEXT NOT NULL, touched REAL NOT NULL)"
)
# The epoch (see lockout.Epoch): one row, moved by every counted failure of any worker.
_EPOCH_SCHEMA = "CREATE TABLE IF NOT EXISTS epoch (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)"


def _load(text: str | None) -> Record:
    if text is None:
        return Record()
    try:
        data = json.loads(text)
        return Record(
            [float(t) for t in data["f"]],
            {str(k): float(v) for k, v in data["p"].items()},
            float(data["w"]),
            float(data["l"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return Record()  # a damaged row starts afresh rather than stopping sign-ins


def _dump(record: Record) -> str:
    data = {"f": record.failures, "p": record.pending, "w": record.wait_until}
    return json.dumps({**data, "l": record.locked_until}, separators=(",", ":"))


def _idle(record: Record, now: float) -> bool:
    return (
        not (record.failures or record.pending)
        and max(record.wait_until, record.locked_until) <= now
    )


class SqliteLockStore:
    """`LockStore` in an SQLite file that several processes share."""

    shared = True

    def __init__(self, path: Path, limits: Limits, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.limits = limits
        self._clock = clock
        self._connection: sqlite3.Connection | None = None
        self._thread = CapacityLimiter(1)  # one connection, used by one thread at a time
        self._swept = 0.0
        self._epoch = Epoch()

    def open(self) -> None:
        """Open (and create) the file now; sqlite3.Error or OSError if it cannot be used."""
        if self._connection is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self.path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        try:
            # Workers opening a new file at once: switching it to WAL takes a lock that
            # SQLite's busy timeout does not always wait for ("database is locked" at once).
            for attempt in range(OPEN_TRIES):
                try:
                    connection.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == OPEN_TRIES - 1:
                        raise
                    time.sleep(0.02)
            connection.execute("PRAGMA synchronous=OFF")  # counts, not records to keep
            connection.execute(_SCHEMA)
            connection.execute(_EPOCH_SCHEMA)
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _transaction(
        self,
        keys: Keys,
        step: Callable[[dict[Scope, Record], float], T],
        outcome: Outcome | None = None,
    ) -> T:
        self.open()
        connection = self._connection
        assert connection is not None
        connection.execute("BEGIN IMMEDIATE")
        try:
            now = self._clock()  # read with the lock held: every writer sees time go forward
            scoped = list(keys.scoped())
            records: dict[Scope, Record] = {}
            for scope, key in scoped:
                row = connection.execute(
                    "SELECT record FROM lockout WHERE key = ?", (key,)
                ).fetchone()
                records[scope] = _load(row[0] if row else None)
            result = step(records, now)
            if outcome == "failed":
                connection.execute(
                    "INSERT INTO epoch VALUES (0, 1) ON CONFLICT(id) DO UPDATE SET value = value + 1"
                )
            for scope, key in scoped:
                if _idle(records[scope], now):
                    connection.execute("DELETE FROM lockout WHERE key = ?", (key,))
                else:
                    connection.execute(
                        "INSERT OR REPLACE INTO lockout VALUES (?, ?, ?)",
                        (key, _dump(records[scope]), now),
                    )
            if now - self._swept >= SWEEP_EVERY:
                self._swept = now
                horizon = max(self.limits.window, self.limits.lockout, PENDING_TTL)
                connection.execute("DELETE FROM lockout WHERE touched < ?", (now - horizon,))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return result

    async def _run(
        self,
        keys: Keys,
        step: Callable[[dict[Scope, Record], float], T],
        outcome: Outcome | None = None,
    ) -> T:
        return await anyio.to_thread.run_sync(
            self._transaction, keys, step, outcome, limiter=self._thread
        )

    def epoch(self) -> Hashable:
        return self._epoch.current()

    async def refresh_epoch(self) -> None:
        try:
            value = await anyio.to_thread.run_sync(self._read_epoch, limiter=self._thread)
        except (sqlite3.Error, OSError) as exc:
            _unreachable(self.path, exc)
            return  # the epoch goes stale: no replays until the file answers again
        self._epoch.read(value)

    def _read_epoch(self) -> int:
        self.open()
        assert self._connection is not None
        row = self._connection.execute("SELECT value FROM epoch WHERE id = 0").fetchone()
        return int(row[0]) if row else 0

    async def reserve(self, keys: Keys, ticket: str) -> Refusal | None:
        try:
            return await self._run(keys, lambda r, now: reserve(self.limits, r, ticket, now))
        except (sqlite3.Error, OSError) as exc:
            _unreachable(self.path, exc)
            return None

    async def settle(self, keys: Keys, ticket: str, outcome: Outcome) -> list[Scope]:
        try:
            return await self._run(
                keys, lambda r, now: settle(self.limits, r, ticket, outcome, now), outcome
            )
        except (sqlite3.Error, OSError) as exc:
            _unreachable(self.path, exc)
            return []


def _unreachable(path: Path, exc: Exception) -> None:
    log.error(
        "lockout store unreachable: %s: %s: %s",
        path,
        type(exc).__name__,
        exc,
        extra={"event": "lockout_store_down"},
    )
