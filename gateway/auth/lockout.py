"""Brute-force protection: failed sign-ins counted per user name and per client address.

A key (a user name or an address) that keeps failing must wait before its next try, twice as
long after each failure (exponential backoff), and is locked out for a while once it fails too
often within the window. Waiting keys are answered 429 with `Retry-After` before any password
is checked, so a locked key costs no slow hash and learns nothing.

Who is counted and checked (the reasons are in docs/authentication.md):

- Passwords (policy, htpasswd, LDAP): both the user name and the address are checked; a
  failure counts against both; a success clears the user name's count (never the address's).
- The same wrong credentials again count once (`Authenticator` remembers recent failures).
- Robot secrets and personal access tokens: only the address is checked and counted. A user
  name that an attacker has locked out therefore never stops that user's tokens, nor a robot
  of that name; guessing a 256-bit secret gets nowhere, and the address limit still stops
  anyone from trying many.

The counts live behind `FailureCounter`, kept in memory per process here; issue 7 will add a
shared store (Redis) for replicas with the same interface.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

BACKOFF_CAP = 60.0  # seconds: the longest wait between tries short of a lockout


@dataclass(frozen=True, slots=True)
class Rules:
    """How many failures a key may have, how fast, and what happens then."""

    failures: int  # this many failures within `window` lock the key (0: never)
    window: float  # seconds
    lockout: float  # seconds a locked key waits
    backoff: float  # first wait once backoff starts, doubled after each further failure (0: none)

    @property
    def free(self) -> int:
        """Failures allowed before any wait: a third of the limit (typos happen)."""
        return max(1, self.failures // 3) if self.failures else 3

    def wait_after(self, count: int) -> float:
        """The pause a key must make after its `count`-th failure in the window."""
        if self.backoff <= 0 or count < self.free:
            return 0.0
        cap = min(BACKOFF_CAP, self.lockout) if self.lockout > 0 else BACKOFF_CAP
        doublings: int = 2 ** (count - self.free)  # count >= free here: a whole power of 2
        return min(cap, self.backoff * doublings)


class FailureCounter(Protocol):
    """Failure counts by key. Implementations: in memory (here); Redis (issue 7)."""

    async def retry_after(self, key: str) -> tuple[float, bool]:
        """Seconds until `key` may try again (0: now), and whether it is locked out."""
        ...

    async def failed(self, key: str) -> tuple[float, bool]:
        """Count a failure: the seconds `key` must now wait, and whether it is now locked out."""
        ...

    async def reset(self, key: str) -> None:
        """Forget the failures of `key` (after a successful sign-in)."""
        ...


@dataclass(slots=True)
class _Record:
    failures: deque[float] = field(default_factory=deque)
    wait_until: float = 0.0
    locked_until: float = 0.0


class MemoryFailureCounter:
    """Sliding-window counts in this process, for at most `size` keys (least recent dropped)."""

    def __init__(
        self, rules: Rules, size: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rules = rules
        self.size = size
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def _prune(self, record: _Record, now: float) -> None:
        while record.failures and record.failures[0] <= now - self.rules.window:
            record.failures.popleft()

    async def retry_after(self, key: str) -> tuple[float, bool]:
        record = self._records.get(key)
        if record is None:
            return 0.0, False
        now = self._clock()
        if record.locked_until > now:
            return record.locked_until - now, True
        return max(0.0, record.wait_until - now), False

    async def failed(self, key: str) -> tuple[float, bool]:
        now = self._clock()
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record()
            while len(self._records) > self.size:
                self._records.popitem(last=False)
        self._records.move_to_end(key)
        self._prune(record, now)
        record.failures.append(now)
        count = len(record.failures)
        if self.rules.failures and count >= self.rules.failures:
            record.failures.clear()  # a fresh count once the lockout ends
            record.locked_until = now + self.rules.lockout
            record.wait_until = 0.0
            return self.rules.lockout, True
        record.wait_until = now + self.rules.wait_after(count)
        return max(0.0, record.wait_until - now), False

    async def reset(self, key: str) -> None:
        self._records.pop(key, None)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a sign-in is not even tried: which key waits, and for how long."""

    scope: str  # "user" | "address"
    retry_after: int  # whole seconds, at least 1
    locked: bool  # a lockout (True) or a backoff pause (False)


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


class Throttle:
    """Applies the rules above to user names and client addresses."""

    def __init__(self, users: FailureCounter, addresses: FailureCounter) -> None:
        self.users = users
        self.addresses = addresses

    @staticmethod
    def user_key(username: str) -> str:
        # Case-folded: an LDAP server finds "Alice" and "ALICE" alike, so must the counter.
        return "user:" + username.strip().casefold()[:256]

    @staticmethod
    def address_key(client: str | None) -> str:
        return "address:" + (client or "unknown")

    async def check(self, username: str, client: str | None, *, token: bool) -> Refusal | None:
        """A refusal if the address (or, for passwords, the user name) must wait."""
        wait, locked = await self.addresses.retry_after(self.address_key(client))
        if wait > 0:
            return Refusal("address", _seconds(wait), locked)
        if not token:
            wait, locked = await self.users.retry_after(self.user_key(username))
            if wait > 0:
                return Refusal("user", _seconds(wait), locked)
        return None

    async def failed(self, username: str, client: str | None, *, token: bool) -> list[str]:
        """Count a failed sign-in; the scopes ("user", "address") that it just locked out."""
        locked = []
        _, address_locked = await self.addresses.failed(self.address_key(client))
        if address_locked:
            locked.append("address")
        if not token and username:
            _, user_locked = await self.users.failed(self.user_key(username))
            if user_locked:
                locked.append("user")
        return locked

    async def succeeded(self, username: str) -> None:
        """A password was right: the user name starts afresh (the address does not)."""
        await self.users.reset(self.user_key(username))
