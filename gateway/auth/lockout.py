"""Brute-force protection that a stranger cannot turn against a user, and that parallel
requests cannot outrun (docs/authentication.md#brute-force-protection has the reasons).

Three counts, in a sliding window of `Limits.window` seconds:

- **address**: failures from one client address (an IPv6 address counts by its /64), whatever
  the name. Checked first; it stops one client from spraying many names or secrets.
- **user**: failures of one user name *from one address*. This is the lockout a user sees,
  and only the address that failed sees it: an attacker elsewhere cannot lock anyone out.
- **account**: failures of one user name from every address. It never refuses on its own;
  once it reaches `Limits.account` the name is *under attack*, and from then on an address
  that has failed for that name (within the window) is refused it, while an address that has
  not failed still gets its try: a correct password from a clean address always goes through.

Each sign-in that will cost a check **reserves** its attempt first, atomically against every
count (`reserve`), and settles it afterwards (`settle`): a failure stays counted, a success or
a failure that does not count is given back. An attempt under way counts against the limit,
so N parallel guesses never get more checks than the limit allows; past the free tries (a
third of the limit) a key takes one try at a time, each after its backoff pause.

`reserve` and `settle` are pure functions over `Record`s; the stores apply them atomically:
`MemoryLockStore` (one process), `gateway/auth/lockstore.SqliteLockStore` (the workers of one
host) and `gateway/auth/redislockout.RedisLockStore` (replicas, the same rules in Lua).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

BACKOFF_CAP = 60.0  # seconds: the longest wait between tries short of a lockout
PENDING_TTL = 120.0  # seconds after which a reservation never settled (a dead process) lapses
KEPT = 1024  # most failure times one key keeps (a limit of 0 never clears them)
IPV6_PREFIX = 64  # an IPv6 client counts by its /64: one host usually holds the whole prefix
EPOCH_INTERVAL = 0.25  # seconds between reads of a shared store's epoch (see Epoch)
EPOCH_STALE = 1.0  # an epoch read longer ago than this is not trusted

Outcome = Literal["failed", "succeeded", "uncounted"]
Scope = Literal["address", "user", "account"]


@dataclass(frozen=True, slots=True)
class Limits:
    """How many failures each count allows within the window, and what happens then."""

    user: int = 10  # failures of one name from one address that lock it there (0: never)
    address: int = 50  # failures from one address that lock the address (0: never)
    account: int = 100  # failures of one name from every address: under attack (0: never)
    window: float = 300.0  # seconds
    lockout: float = 300.0  # seconds a locked name (for one address) or address waits
    backoff: float = 1.0  # first pause once backoff starts, doubled per failure (0: none)

    @staticmethod
    def free(limit: int) -> int:
        """Failures allowed before any pause: a third of the limit (typos happen)."""
        return max(1, limit // 3) if limit else 3

    def wait_after(self, limit: int, count: int) -> float:
        """The pause a key must make after its `count`-th failure in the window."""
        free = self.free(limit)
        if self.backoff <= 0 or count < free:
            return 0.0
        cap = min(BACKOFF_CAP, self.lockout) if self.lockout > 0 else BACKOFF_CAP
        return min(cap, self.backoff * 2.0 ** min(count - free, 64))


@dataclass(slots=True)
class Record:
    """One key's state: failure times, attempts under way, and until when it must wait."""

    failures: list[float] = field(default_factory=list)
    pending: dict[str, float] = field(default_factory=dict)  # ticket -> when reserved
    wait_until: float = 0.0
    locked_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Keys:
    """The store keys of one sign-in. Tokens and robot secrets count by address alone.
    `username` and `client` say whose they are (for the lockout event), never stored."""

    address: str
    user: str | None = None
    account: str | None = None
    username: str | None = field(default=None, compare=False, repr=False)
    client: str = field(default="", compare=False, repr=False)

    def scoped(self) -> Iterator[tuple[Scope, str]]:
        yield "address", self.address
        if self.user is not None:
            yield "user", self.user
        if self.account is not None:
            yield "account", self.account


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a sign-in is not even tried: which count refuses, and for how long."""

    scope: Scope
    retry_after: int  # whole seconds, at least 1
    locked: bool  # a lockout (True) or a pause (False)


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def _prune(record: Record, now: float, window: float) -> None:
    start = now - window
    if record.failures and record.failures[0] <= start:
        record.failures[:] = [t for t in record.failures if t > start]
    stale = [ticket for ticket, at in record.pending.items() if at <= now - PENDING_TTL]
    for ticket in stale:
        del record.pending[ticket]


def _gates(limits: Limits) -> tuple[tuple[Scope, int], ...]:
    return (("address", limits.address), ("user", limits.user))


def _gate(record: Record, limit: int, limits: Limits, now: float) -> tuple[float, bool] | None:
    """(seconds, locked) when this key refuses another attempt now, else None."""
    if record.locked_until > now:
        return record.locked_until - now, True
    failures, pending = len(record.failures), len(record.pending)
    if limit and failures + pending >= limit:
        return 1.0, False  # every try it has left is under way
    if limits.backoff > 0 and failures >= limits.free(limit):
        if pending:
            return 1.0, False  # one try at a time once failures pile up
        if record.wait_until > now:
            return record.wait_until - now, False
    return None


def reserve(
    limits: Limits, records: dict[Scope, Record], ticket: str, now: float
) -> Refusal | None:
    """Reserve one attempt against every record (changed in place), or say why not."""
    for each in records.values():
        _prune(each, now, limits.window)
    for scope, limit in _gates(limits):
        record = records.get(scope)
        if record is not None:
            refused = _gate(record, limit, limits, now)
            if refused is not None:
                return Refusal(scope, _seconds(refused[0]), refused[1])
    user, account = records.get("user"), records.get("account")
    if user is not None and account is not None and under_attack(limits, account):
        # Under attack: one try per address. A clean address still gets its try.
        if user.pending:
            return Refusal("account", 1, False)
        if user.failures:
            return Refusal("account", _seconds(user.failures[-1] + limits.window - now), True)
    for scope, _ in _gates(limits):
        record = records.get(scope)
        if record is not None:
            record.pending[ticket] = now
    return None


def under_attack(limits: Limits, account: Record) -> bool:
    """Whether a name failed from every address together often enough to be under attack."""
    return bool(limits.account) and len(account.failures) >= limits.account


def settle(
    limits: Limits, records: dict[Scope, Record], ticket: str, outcome: Outcome, now: float
) -> list[Scope]:
    """Settle a reserved attempt (records changed in place); the lockouts it started."""
    started: list[Scope] = []
    for each in records.values():
        each.pending.pop(ticket, None)
        _prune(each, now, limits.window)
    if outcome == "failed":
        for scope, limit in _gates(limits):
            record = records.get(scope)
            if record is None:
                continue
            record.failures.append(now)
            del record.failures[:-KEPT]
            count = len(record.failures)
            if limit and count >= limit:
                record.failures.clear()  # a fresh count once the lockout ends
                record.wait_until = 0.0
                record.locked_until = now + limits.lockout
                started.append(scope)
            else:
                record.wait_until = now + limits.wait_after(limit, count)
        account = records.get("account")
        if account is not None and limits.account:
            before = under_attack(limits, account)
            account.failures.append(now)
            del account.failures[: -limits.account]
            if not before and under_attack(limits, account):
                started.append("account")
    elif outcome == "succeeded":
        user = records.get("user")
        if user is not None:  # the name proved itself from this address: it starts afresh
            user.failures.clear()
            user.wait_until = 0.0
    return started


class Epoch:
    """A count, shared by every process that counts in one store, that moves with every
    counted failure anywhere (each may have started a lockout). Replayed answers and
    remembered sign-ins stand only within one epoch, so a lockout started on one replica ends
    them on every replica once each has read the count again (every EPOCH_INTERVAL seconds).
    While the count cannot be read (older than EPOCH_STALE), `current` is a new object each
    time: nothing is replayed at all. Fail closed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._value: int | None = None
        self._read_at = -EPOCH_STALE

    def read(self, value: int) -> None:
        self._value, self._read_at = value, self._clock()

    def current(self) -> Hashable:
        if self._value is None or self._clock() - self._read_at > EPOCH_STALE:
            return object()  # equal to nothing: no replays until the count is read again
        return self._value


class LockStore(Protocol):
    """Where the counts live. Each call is one atomic step (one round trip, at most)."""

    shared: bool  # whether other processes count here too (then `refresh_epoch` must run)

    def epoch(self) -> Hashable:
        """The epoch of the counts (see Epoch): the same while no failure was counted."""
        ...

    async def refresh_epoch(self) -> None:
        """Read the shared epoch again (a background task calls this every EPOCH_INTERVAL)."""
        ...

    async def reserve(self, keys: Keys, ticket: str) -> Refusal | None:
        """Reserve an attempt under `ticket`, or the refusal that stops it."""
        ...

    async def settle(self, keys: Keys, ticket: str, outcome: Outcome) -> list[Scope]:
        """Settle the attempt `ticket`; the lockouts a failure started."""
        ...


class MemoryLockStore:
    """The counts of this process, for at most `size` keys (least recent dropped). Each call
    runs without yielding, so it is atomic on the event loop."""

    shared = False  # this process's own failures already move the authenticator's generation

    def __init__(
        self, limits: Limits, size: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self.size = size
        self._clock = clock
        self._records: OrderedDict[str, Record] = OrderedDict()

    def _records_of(self, keys: Keys) -> dict[Scope, Record]:
        found: dict[Scope, Record] = {}
        for scope, key in keys.scoped():
            record = self._records.get(key)
            if record is None:
                record = self._records[key] = Record()
            self._records.move_to_end(key)
            found[scope] = record
        while len(self._records) > self.size:
            self._records.popitem(last=False)
        return found

    async def reserve(self, keys: Keys, ticket: str) -> Refusal | None:
        return reserve(self.limits, self._records_of(keys), ticket, self._clock())

    async def settle(self, keys: Keys, ticket: str, outcome: Outcome) -> list[Scope]:
        return settle(self.limits, self._records_of(keys), ticket, outcome, self._clock())

    def epoch(self) -> Hashable:
        return 0

    async def refresh_epoch(self) -> None:
        return None


# Told of every lockout a failure starts: (user name or None, client address, the scopes).
LockoutListener = Callable[[str | None, str, list[Scope]], None]


class Announcing:
    """A LockStore that tells `listener` of each lockout a settled failure starts (the events
    hook: it must return at once). Every sign-in path counts through the store, so every
    lockout is told, whichever store holds the counts."""

    def __init__(self, store: LockStore, listener: LockoutListener) -> None:
        self.store = store
        self.listener = listener
        self.shared = store.shared

    def epoch(self) -> Hashable:
        return self.store.epoch()

    async def refresh_epoch(self) -> None:
        await self.store.refresh_epoch()

    async def reserve(self, keys: Keys, ticket: str) -> Refusal | None:
        return await self.store.reserve(keys, ticket)

    async def settle(self, keys: Keys, ticket: str, outcome: Outcome) -> list[Scope]:
        started = await self.store.settle(keys, ticket, outcome)
        if started:
            self.listener(keys.username, keys.client, started)
        return started


def _key(kind: str, value: str) -> str:
    # Exact, bounded and opaque: any name fits a Redis or SQLite key, and none is stored.
    data = value.encode("utf-8", "surrogatepass")
    return f"{kind}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"


def address_of(client: str | None) -> str:
    """The address a client counts as: itself, or its /64 for IPv6."""
    if not client:
        return "unknown"
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


def keys_for(username: str | None, client: str | None) -> Keys:
    """The keys of a sign-in as `username` from `client` (no name: a token, counted by
    address only). Names are compared exactly as given: no case-folding, no stripping."""
    address = address_of(client)
    if username is None:
        return Keys(_key("address", address), client=address)
    return Keys(
        _key("address", address),
        _key("user", f"{username}\0{address}"),
        _key("account", username),
        username=username,
        client=address,
    )
