"""Constant-shape failures: every failed sign-in is answered no sooner than a floor after it
started, and the floor is at least the slowest check this process makes.

So an unknown name, a wrong password for any hash (whatever its cost or the password's
length), a user without a password, an LDAP user, a wrong robot secret and a wrong personal
access token all take the same time, and the waiting costs no CPU (`asyncio.sleep`), unlike
the dummy hash it replaces.

What a check costs depends on the kind of stored hash (bcrypt and its cost, argon2id and its
parameters), so each kind the live policy and htpasswd file hold is measured once, in a
thread, the first time it is seen. Checks are also timed as they happen, hashes and LDAP binds
alike, waiting for a thread included (the slowest of the last `SAMPLES` within `RECENT`
seconds), so the floor follows a loaded machine or a slow directory, and comes back down. The floor is the slowest of these times `MARGIN`, plus
`SLACK`, and never less than the `signin_failure_floor` setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable

import anyio.to_thread
import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error

MARGIN = 1.25  # the floor over the slowest check measured: room for scheduling noise
SLACK = 0.01  # seconds added on top
SAMPLES = 64  # checks remembered for how long they took ...
RECENT = 60.0  # ... for at most this many seconds
_BCRYPT = re.compile(r"\$2[abxy]?\$(\d\d)\$")
_ARGON2 = re.compile(r"\$argon2id\$v=(\d+)\$m=(\d+),t=(\d+),p=(\d+)\$")


def hash_kind(stored: str) -> str | None:
    """What a check against `stored` costs depends on: `bcrypt:COST` or `argon2id:M,T,P`
    (None: not a hash this gateway checks, which then costs nothing)."""
    match = _BCRYPT.match(stored)
    if match:
        return f"bcrypt:{int(match[1])}"
    match = _ARGON2.match(stored)
    if match:
        return f"argon2id:{match[2]},{match[3]},{match[4]}"
    return None


@functools.lru_cache(maxsize=64)
def measure(kind: str) -> float:
    """Seconds one wrong-password check against a hash of `kind` takes here (blocks: run it
    in a thread). Kept per process: it is a property of the machine."""
    secret, wrong = secrets.token_bytes(16), b"not-the-password"
    scheme, _, params = kind.partition(":")
    if scheme == "bcrypt":
        stored = bcrypt.hashpw(secret, bcrypt.gensalt(int(params)))
        started = time.perf_counter()
        bcrypt.checkpw(wrong, stored)
        return time.perf_counter() - started
    memory, rounds, lanes = (int(part) for part in params.split(","))
    hasher = PasswordHasher(time_cost=rounds, memory_cost=memory, parallelism=lanes)
    hashed = hasher.hash(secret)
    started = time.perf_counter()
    with contextlib.suppress(Argon2Error):
        hasher.verify(hashed, wrong)
    return time.perf_counter() - started


class FailureFloor:
    """The least time a failed sign-in takes, kept at the slowest check this process makes."""

    def __init__(
        self,
        minimum: float = 0.0,
        *,
        measure: Callable[[str], float] = measure,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.minimum = minimum
        self._measure = measure
        self.clock = clock  # monotonic seconds: when a sign-in started, when a check ended
        self._costs: dict[str, float] = {}
        self._measuring: dict[str, asyncio.Future[float]] = {}
        self._kinds: frozenset[str] = frozenset()
        self._checks: deque[tuple[float, float]] = deque(maxlen=SAMPLES)  # (when, seconds)

    def notice(self, kinds: Iterable[str]) -> None:
        """The kinds of hash the live policy and htpasswd file hold; new kinds are measured
        at once, in a thread (call from the event loop)."""
        self._kinds = frozenset(kinds)
        for kind in self._kinds:
            if kind not in self._costs:
                self._measurement(kind)

    def _measurement(self, kind: str) -> asyncio.Future[float]:
        """The measurement of `kind` under way, started if none is (or one was cancelled, or
        belongs to another event loop)."""
        task = self._measuring.get(kind)
        if task is None or task.cancelled() or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._measure_kind(kind))
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._measuring[kind] = task
        return task

    async def _measure_kind(self, kind: str) -> float:
        try:
            cost = await anyio.to_thread.run_sync(self._measure, kind)
        except Exception:  # parameters no library accepts: checked at once
            cost = 0.0  # (verify_password refuses them without hashing)
        self._costs[kind] = cost
        self._measuring.pop(kind, None)
        return cost

    def checked(self, seconds: float) -> None:
        """How long a check took: a hash, or an LDAP bind (right or wrong, not an outage)."""
        self._checks.append((self.clock(), seconds))

    async def value(self) -> float:
        """The floor now, in seconds (waits for kinds still being measured)."""
        costs = []
        for kind in self._kinds:
            cost = self._costs.get(kind)
            if cost is None:
                cost = await asyncio.shield(self._measurement(kind))
            costs.append(cost)
        recent = self.clock() - RECENT
        while self._checks and self._checks[0][0] < recent:
            self._checks.popleft()
        costs.extend(seconds for _, seconds in self._checks)
        slowest = max(costs, default=0.0)
        return max(self.minimum, slowest * MARGIN + SLACK if slowest else 0.0)

    async def wait(self, started: float) -> None:
        """Sleep until the floor has passed since `started` (on the floor's clock)."""
        delay = started + await self.value() - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)
