"""Brute-force protection on its own: the rules (gateway/auth/lockout.py), the SQLite store
the workers of one host share (gateway/auth/lockstore.py), the failure floor
(gateway/auth/floor.py), and the Authenticator that reserves before it checks. The token
endpoint and the UI: tests/test_lockout_endpoints.py; real servers, workers and Redis:
tests/realworld/test_bruteforce.py."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import bcrypt
import pytest
from argon2 import PasswordHasher

from gateway.auth import identity as identity_module
from gateway.auth.credentials import ROBOT_PREFIX, new_secret, sha256_hex
from gateway.auth.floor import MARGIN, FailureFloor, hash_kind
from gateway.auth.identity import AuthenticationFailed, Authenticator, Identity, TooManyAttempts
from gateway.auth.lockout import (
    EPOCH_STALE,
    Epoch,
    Keys,
    Limits,
    LockStore,
    MemoryLockStore,
    Outcome,
    Refusal,
    Scope,
    address_of,
    keys_for,
)
from gateway.auth.lockstore import SqliteLockStore
from gateway.policy.engine import Engine
from gateway.policy.load import load_texts
from gateway.policy.model import Subject

T = TypeVar("T")
BOB, DAVE, ROBOT = "bob-password", "dave-password", new_secret(ROBOT_PREFIX)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def memory(clock: Clock | None = None, **limits: Any) -> MemoryLockStore:
    options = {"window": 60.0, "lockout": 30.0, "backoff": 0.0, **limits}
    return MemoryLockStore(Limits(**options), clock=clock or Clock())


def fail(store: LockStore, keys: Keys, ticket: str = "t") -> list[Scope] | Refusal:
    """One failed attempt: reserved, then settled as failed (or the refusal)."""

    async def attempt() -> list[Scope] | Refusal:
        refusal = await store.reserve(keys, ticket)
        if refusal is not None:
            return refusal
        started: list[Scope] = await store.settle(keys, ticket, "failed")
        return started

    return run(attempt())


# -- the rules --------------------------------------------------------------------------------


def test_backoff_doubles_then_the_name_is_locked_for_that_address_until_the_lockout_ends() -> None:
    clock = Clock()
    store = memory(clock, user=6, backoff=1.0)
    keys = keys_for("bob", "10.0.0.1")
    waits = []
    for i in range(5):
        assert fail(store, keys, f"t{i}") == []
        refusal = run(store.reserve(keys, "probe"))
        waits.append(refusal.retry_after if refusal else 0)
        if refusal is None:
            run(store.settle(keys, "probe", "uncounted"))
        clock.now += waits[-1]  # the client waits as told
    assert waits == [0, 1, 2, 4, 8]  # two free failures (a third of 6), then doubling
    assert fail(store, keys, "t6") == ["user"]
    assert run(store.reserve(keys, "t7")) == Refusal("user", 30, True)
    clock.now += 30.5
    assert fail(store, keys, "t8") == []  # a fresh count after the lockout


def test_failures_leave_the_window_and_a_success_clears_the_name_not_the_address() -> None:
    clock = Clock()
    store = memory(clock, user=3, address=5)
    keys = keys_for("bob", "10.0.0.1")
    fail(store, keys, "a")
    fail(store, keys, "b")
    clock.now += 61
    assert fail(store, keys, "c") == []  # the first two are out of the window
    fail(store, keys, "d")
    run(store.reserve(keys, "e"))
    run(store.settle(keys, "e", "succeeded"))
    assert fail(store, keys, "f") == [] and fail(store, keys, "g") == []  # bob starts afresh
    assert fail(store, keys, "h") == ["address", "user"]  # the address did not: 5 failures


def test_an_attacker_elsewhere_never_locks_a_user_out_and_is_stopped_himself() -> None:
    store = memory(user=3, address=50, account=0)
    for i in range(3):
        fail(store, keys_for("bob", "198.51.100.7"), f"t{i}")
    refusal = run(store.reserve(keys_for("bob", "198.51.100.7"), "again"))
    assert refusal == Refusal("user", 30, True)
    assert run(store.reserve(keys_for("bob", "10.0.0.1"), "bob")) is None


def test_names_are_compared_exactly_as_given() -> None:
    store = memory(user=2, account=0)
    for i in range(2):
        fail(store, keys_for("bob", "192.0.2.1"), f"t{i}")
    for other in ("Bob", " bob", "bob ", "BOB"):
        assert run(store.reserve(keys_for(other, "192.0.2.1"), other)) is None
    assert run(store.reserve(keys_for("bob", "192.0.2.1"), "x")) is not None
    assert keys_for("Bob", "a").user != keys_for("bob", "a").user


def test_an_ipv6_client_counts_by_its_64_and_a_mapped_ipv4_as_itself() -> None:
    assert address_of("2001:db8:1:2:aaaa::1") == address_of("2001:db8:1:2:ffff::9")
    assert address_of("2001:db8:1:3::1") != address_of("2001:db8:1:2::1")
    assert address_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_of(None) == "unknown" and address_of("testclient") == "testclient"


def test_attempts_under_way_count_so_parallel_guesses_cannot_outrun_the_limit() -> None:
    store = memory(user=10, address=50, backoff=1.0)
    keys = keys_for("dave", "203.0.113.5")

    async def burst() -> list[Refusal | None]:
        return [await store.reserve(keys, f"t{i}") for i in range(60)]

    answers = run(burst())
    assert answers[:10] == [None] * 10  # 10 under way at once, before any has failed
    assert all(a is not None and not a.locked for a in answers[10:])
    # One right password gives its reservation back: a further try may start.
    run(store.settle(keys, "t0", "succeeded"))
    assert run(store.reserve(keys, "t60")) is None


def test_past_the_free_tries_a_key_takes_one_try_at_a_time() -> None:
    clock = Clock()
    store = memory(clock, user=9, backoff=1.0)
    keys = keys_for("dave", "203.0.113.5")
    for i in range(3):  # the free tries
        fail(store, keys, f"t{i}")
    clock.now += 1
    assert run(store.reserve(keys, "a")) is None
    assert run(store.reserve(keys, "b")) == Refusal("user", 1, False)  # "a" is under way


def test_under_attack_an_address_that_failed_is_refused_and_a_clean_one_is_not() -> None:
    store = memory(user=10, address=50, account=6)
    started = []
    for i in range(6):  # six attackers, one guess each
        result = fail(store, keys_for("bob", f"198.51.100.{i}"), f"t{i}")
        assert isinstance(result, list)
        started += result
    assert started == ["account"]
    refusal = run(store.reserve(keys_for("bob", "198.51.100.1"), "again"))
    assert refusal is not None and refusal.scope == "account" and refusal.locked
    assert run(store.reserve(keys_for("bob", "10.0.0.1"), "bob")) is None  # never failed
    assert run(store.reserve(keys_for("alice", "198.51.100.1"), "alice")) is None


def test_a_reservation_never_settled_lapses() -> None:
    clock = Clock()
    store = memory(clock, user=1)
    keys = keys_for("dave", "203.0.113.5")
    assert run(store.reserve(keys, "lost")) is None  # its process died
    assert run(store.reserve(keys, "next")) is not None
    clock.now += 121
    assert run(store.reserve(keys, "next")) is None


def test_tokens_count_by_address_only() -> None:
    store = memory(user=1, address=3)
    for i in range(3):
        fail(store, keys_for(None, "192.0.2.9"), f"t{i}")
    refusal = run(store.reserve(keys_for("alice", "192.0.2.9"), "alice"))
    assert refusal is not None and refusal.scope == "address"
    assert run(store.reserve(keys_for("ci-deploy", "192.0.2.10"), "robot")) is None


def test_the_memory_store_keeps_a_bounded_number_of_keys() -> None:
    store = MemoryLockStore(Limits(user=3), size=100)
    for i in range(1000):
        fail(store, keys_for(f"name-{i}", f"192.0.2.{i % 250}"), f"t{i}")
    assert len(store._records) == 100


# -- the SQLite store the workers of one host share -------------------------------------------


def test_two_sqlite_stores_on_one_file_count_as_one(tmp_path: Path) -> None:
    limits = Limits(user=10, address=50, window=60, lockout=30, backoff=1.0)
    path = tmp_path / "lockout.sqlite3"
    workers = [SqliteLockStore(path, limits), SqliteLockStore(path, limits)]
    keys = keys_for("dave", "203.0.113.5")
    reserved: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        async def burst() -> None:
            async def one(i: int) -> None:
                ticket = f"w{index}-{i}"
                if await workers[index].reserve(keys, ticket) is None:
                    with lock:
                        reserved.append(ticket)
                    await workers[index].settle(keys, ticket, "failed")

            await asyncio.gather(*(one(i) for i in range(30)))

        asyncio.run(burst())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= len(reserved) <= 10  # 60 tries on two "workers": never more than the limit
    refusal = run(workers[1].reserve(keys, "after"))
    assert refusal is not None and refusal.scope == "user"


def test_an_unusable_sqlite_store_throttles_nobody_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    store = SqliteLockStore(blocker / "lockout.sqlite3", Limits(user=1))
    keys = keys_for("dave", "203.0.113.5")
    assert run(store.reserve(keys, "a")) is None
    assert run(store.settle(keys, "a", "failed")) == []
    assert "lockout store unreachable" in caplog.text


def test_sqlite_rows_that_hold_nothing_are_deleted(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteLockStore(tmp_path / "l.sqlite3", Limits(user=3, window=60), clock=clock)
    keys = keys_for("dave", "203.0.113.5")
    run(store.reserve(keys, "a"))
    run(store.settle(keys, "a", "succeeded"))
    assert store._connection is not None
    assert store._connection.execute("SELECT count(*) FROM lockout").fetchone() == (0,)


def test_a_failure_counted_by_one_worker_moves_the_epoch_every_worker_reads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lockout.sqlite3"
    one, two = SqliteLockStore(path, Limits(user=3)), SqliteLockStore(path, Limits(user=3))
    run(two.refresh_epoch())
    before = two.epoch()
    assert two.epoch() == before  # stands while nothing was counted
    keys = keys_for("dave", "203.0.113.5")
    run(one.reserve(keys, "a"))
    run(one.settle(keys, "a", "succeeded"))
    run(two.refresh_epoch())
    assert two.epoch() == before  # a success is no reason to end replays
    fail(one, keys)
    assert two.epoch() == before  # until the other worker reads it again
    run(two.refresh_epoch())
    assert two.epoch() != before


def test_an_epoch_that_cannot_be_read_matches_nothing() -> None:
    """Fail closed: before the first read, and once the last read is too old, the epoch is a
    new object each time, so no replay or remembered sign-in is ever taken for it."""
    clock = Clock()
    epoch = Epoch(clock=clock)
    assert epoch.current() != epoch.current()
    epoch.read(7)
    assert epoch.current() == epoch.current() == 7
    clock.now += EPOCH_STALE + 0.1
    assert epoch.current() != epoch.current()


# -- the failure floor ------------------------------------------------------------------------


def test_hash_kinds() -> None:
    assert hash_kind(bcrypt.hashpw(b"x", bcrypt.gensalt(5)).decode()) == "bcrypt:5"
    assert hash_kind("$2y$12$" + "a" * 53) == "bcrypt:12"
    argon = PasswordHasher(time_cost=2, memory_cost=1024, parallelism=1).hash("x")
    assert hash_kind(argon) == "argon2id:1024,2,1"
    assert hash_kind("plaintext") is None and hash_kind("$argon2i$v=19$m=8,t=1,p=1$x$y") is None


def test_the_floor_is_the_slowest_kind_of_hash_in_use() -> None:
    costs = {"bcrypt:4": 0.01, "bcrypt:12": 0.2, "argon2id:65536,3,4": 0.1}
    floor = FailureFloor(0.05, measure=costs.__getitem__)

    async def value(kinds: set[str]) -> float:
        floor.notice(kinds)
        return await floor.value()

    assert run(value({"bcrypt:4"})) == 0.05  # the setting is the least floor
    assert run(value({"bcrypt:4", "argon2id:65536,3,4"})) == pytest.approx(0.1 * MARGIN + 0.01)
    assert run(value({"bcrypt:12", "bcrypt:4"})) == pytest.approx(0.2 * MARGIN + 0.01)


def test_the_floor_follows_slow_checks_and_comes_back_down() -> None:
    clock = Clock()
    floor = FailureFloor(measure={"bcrypt:12": 0.2}.__getitem__, clock=clock)

    async def value() -> float:
        floor.notice({"bcrypt:12"})
        return await floor.value()

    floor.checked(0.5)  # a check that took this long: a slow directory, a loaded machine
    assert run(value()) == pytest.approx(0.5 * MARGIN + 0.01)
    clock.now += 61
    assert run(value()) == pytest.approx(0.2 * MARGIN + 0.01)


# -- the Authenticator ------------------------------------------------------------------------


def engine() -> Engine:
    bob = bcrypt.hashpw(BOB.encode(), bcrypt.gensalt(4)).decode()
    dave = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(DAVE)
    text = (
        f'users:\n  bob: {{password: "{bob}"}}\n  dave: {{password: "{dave}"}}\n  erin: {{}}\n'
        f'robots:\n  ci-deploy: {{token_sha256: "{sha256_hex(ROBOT)}"}}\n'
    )
    return Engine(load_texts({"p.yaml": text}).policy)


def authenticator(store: Any = None, cost: float = 0.0, **limits: Any) -> Authenticator:
    return Authenticator(
        throttle=store if store is not None else memory(**limits),
        floor=FailureFloor(measure=lambda kind: cost),
    )


def sign_in(
    auth: Authenticator, engine: Engine, name: str, password: str, client: str
) -> Identity | AuthenticationFailed:
    async def attempt() -> Identity | AuthenticationFailed:
        try:
            return await auth.password(engine, name, password, client=client)
        except AuthenticationFailed as exc:
            return exc

    return run(attempt())


def test_bob_is_not_locked_out_by_an_attacker_elsewhere_and_the_attacker_is_stopped() -> None:
    policy, auth = engine(), authenticator(user=5, address=50)
    attacker = "198.51.100.66"
    for i in range(5):
        failed = sign_in(auth, policy, "bob", f"guess-{i}", attacker)
        assert type(failed) is AuthenticationFailed
    assert isinstance(sign_in(auth, policy, "bob", BOB, attacker), TooManyAttempts)
    assert isinstance(sign_in(auth, policy, "bob", "guess-9", attacker), TooManyAttempts)
    bob = sign_in(auth, policy, "bob", BOB, "10.0.0.7")
    assert isinstance(bob, Identity) and bob.subject == Subject("user", "bob")
    for variant in ("Bob", " bob", "bob "):  # other names, which nobody has
        failed = sign_in(auth, policy, variant, "guess", "10.0.0.8")
        assert type(failed) is AuthenticationFailed and failed.reason == "unknown user"
    assert isinstance(sign_in(auth, policy, "bob", BOB, "10.0.0.8"), Identity)


def test_a_password_proven_right_lately_is_no_way_round_a_lockout() -> None:
    """The verification cache is consulted after the attempt is reserved: a locked address
    cannot use it to learn which of its guesses is right."""
    policy, auth = engine(), authenticator(user=3, address=50)
    assert isinstance(sign_in(auth, policy, "bob", BOB, "10.0.0.7"), Identity)  # now cached
    for i in range(3):
        sign_in(auth, policy, "bob", f"guess-{i}", "198.51.100.66")
    assert isinstance(sign_in(auth, policy, "bob", BOB, "198.51.100.66"), TooManyAttempts)
    assert isinstance(sign_in(auth, policy, "bob", BOB, "10.0.0.7"), Identity)


def test_sixty_parallel_guesses_get_at_most_the_limit_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy, auth = engine(), authenticator(user=10, address=50, backoff=1.0)
    checked: list[str] = []
    real = identity_module.verify_password

    def counting(password: str, stored: str) -> bool:
        checked.append(password)
        return real(password, stored)

    monkeypatch.setattr(identity_module, "verify_password", counting)

    async def burst() -> list[Identity | AuthenticationFailed]:
        async def one(password: str) -> Identity | AuthenticationFailed:
            try:
                return await auth.password(policy, "dave", password, client="203.0.113.5")
            except AuthenticationFailed as exc:
                return exc

        passwords = [f"guess-{i}" for i in range(59)] + [DAVE]
        return await asyncio.gather(*(one(p) for p in passwords))

    answers = run(burst())
    refused = [a for a in answers if isinstance(a, TooManyAttempts)]
    assert len(checked) <= 10 and len(refused) >= 50
    assert len(answers) - len(refused) == len(checked)  # every other answer was a check


def test_identical_requests_at_once_share_one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A push starting sends its credentials many times at once: one check, no 429."""
    policy, auth = engine(), authenticator(user=3, address=3, backoff=1.0)
    checked: list[str] = []
    real = identity_module.verify_password

    def counting(password: str, stored: str) -> bool:
        checked.append(password)
        return real(password, stored)

    monkeypatch.setattr(identity_module, "verify_password", counting)

    async def burst() -> list[Identity]:
        return await asyncio.gather(
            *(auth.password(policy, "bob", BOB, client="10.0.0.7") for _ in range(20))
        )

    assert {i.subject for i in run(burst())} == {Subject("user", "bob")}
    assert checked == [BOB]


class Recording(MemoryLockStore):
    """A memory store that records its calls; a settle waits for `slow` when it is set."""

    def __init__(self) -> None:
        super().__init__(Limits(user=3, address=3, window=60, lockout=30, backoff=0))
        self.calls: list[tuple[str, Keys]] = []
        self.settled: list[str] = []
        self.slow: asyncio.Event | None = None

    async def reserve(self, keys: Keys, ticket: str) -> Refusal | None:
        self.calls.append(("reserve", keys))
        return await super().reserve(keys, ticket)

    async def settle(self, keys: Keys, ticket: str, outcome: Outcome) -> list[Scope]:
        self.calls.append((outcome, keys))
        if self.slow is not None:
            await self.slow.wait()
        self.settled.append(outcome)
        return await super().settle(keys, ticket, outcome)


def test_a_right_robot_secret_never_touches_the_store_and_a_wrong_one_counts_by_address() -> None:
    policy, store = engine(), Recording()
    auth = authenticator(store)
    assert isinstance(sign_in(auth, policy, "ci-deploy", ROBOT, "192.0.2.1"), Identity)
    assert store.calls == []
    failed = sign_in(auth, policy, "ci-deploy", new_secret(ROBOT_PREFIX), "192.0.2.1")
    assert type(failed) is AuthenticationFailed
    address_only = keys_for(None, "192.0.2.1")
    assert store.calls == [("reserve", address_only), ("failed", address_only)]


def test_a_password_sign_in_costs_one_store_round_trip_before_its_answer() -> None:
    policy, store = engine(), Recording()
    auth = authenticator(store)

    async def sign_in_while_the_store_is_slow() -> tuple[list[str], list[str]]:
        store.slow = asyncio.Event()
        await asyncio.wait_for(auth.password(policy, "bob", BOB, client="10.0.0.7"), 5)
        seen = ([call for call, _ in store.calls], list(store.settled))
        store.slow.set()
        await asyncio.sleep(0.01)
        return seen

    calls, settled = run(sign_in_while_the_store_is_slow())
    assert calls == ["reserve", "succeeded"] and settled == []  # answered before settling
    assert store.settled == ["succeeded"]  # and settled all the same


def test_the_same_wrong_password_again_counts_once_and_is_not_checked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy, auth = engine(), authenticator(user=3, address=50)
    checked: list[str] = []
    real = identity_module.verify_password

    def counting(password: str, stored: str) -> bool:
        checked.append(password)
        return real(password, stored)

    monkeypatch.setattr(identity_module, "verify_password", counting)
    for _ in range(6):
        failed = sign_in(auth, policy, "bob", "last-years-password", "10.0.0.7")
        assert type(failed) is AuthenticationFailed
    assert checked == ["last-years-password"]
    assert isinstance(sign_in(auth, policy, "bob", BOB, "10.0.0.7"), Identity)


def test_the_generation_moves_on_counted_failures_and_refusals_only() -> None:
    policy, auth = engine(), authenticator(user=2, address=50)
    start = auth.generation
    assert isinstance(sign_in(auth, policy, "bob", BOB, "10.0.0.7"), Identity)
    assert auth.generation == start
    sign_in(auth, policy, "bob", "guess-1", "198.51.100.1")
    first = auth.generation
    assert first != start
    sign_in(auth, policy, "bob", "guess-1", "198.51.100.1")  # the same again: not counted
    assert auth.generation == first
    sign_in(auth, policy, "bob", "guess-2", "198.51.100.1")  # locks bob for this address
    locked = auth.generation
    refused = sign_in(auth, policy, "bob", BOB, "198.51.100.1")
    assert isinstance(refused, TooManyAttempts)
    assert auth.generation != locked  # a refused try might have been right


def test_every_failure_waits_for_the_floor_and_nothing_else_does() -> None:
    policy, auth = engine(), authenticator(cost=0.1, user=50, address=50)
    floor = 0.1 * MARGIN + 0.01
    cases = [
        ("nobody", "guess"),  # unknown user
        ("erin", "guess"),  # a user without a password
        ("bob", "x" * 100),  # bcrypt, longer than 72 bytes
        ("dave", "guess"),  # argon2id
        ("ci-deploy", new_secret(ROBOT_PREFIX)),  # a wrong robot secret
        ("bob", "rgw_pat_" + "a" * 43),  # a wrong personal access token
    ]
    for name, password in cases:
        started = time.monotonic()
        assert type(sign_in(auth, policy, name, password, "10.0.0.9")) is AuthenticationFailed
        assert time.monotonic() - started >= floor, name
    started = time.monotonic()
    assert isinstance(sign_in(auth, policy, "bob", BOB, "10.0.0.9"), Identity)
    assert isinstance(sign_in(auth, policy, "ci-deploy", ROBOT, "10.0.0.9"), Identity)
    assert time.monotonic() - started < floor


def test_a_check_slower_than_measured_raises_the_floor_for_every_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loaded machine: a real check takes longer than its kind measured, and an unknown name's
    failure keeps up with it."""
    policy, auth = engine(), authenticator(user=50, address=50)
    real = identity_module.verify_password

    def slow(password: str, stored: str) -> bool:
        time.sleep(0.1)
        return real(password, stored)

    monkeypatch.setattr(identity_module, "verify_password", slow)
    assert type(sign_in(auth, policy, "bob", "guess", "10.0.0.9")) is AuthenticationFailed
    started = time.monotonic()
    assert type(sign_in(auth, policy, "nobody", "guess", "10.0.0.9")) is AuthenticationFailed
    assert time.monotonic() - started >= 0.1 * MARGIN


def test_the_floor_measures_the_hashes_the_policy_holds() -> None:
    measured: list[str] = []

    def measure(kind: str) -> float:
        measured.append(kind)
        return 0.0

    auth = Authenticator(floor=FailureFloor(measure=measure))
    sign_in(auth, engine(), "nobody", "guess", "10.0.0.9")
    assert sorted(measured) == ["argon2id:1024,1,1", "bcrypt:4"]
