"""The reuse layer's one rule, on a fake clock: conditions, the window, the auth-cache TTL
and the midnight cut-off, for answers, sign-ins and signed tokens alike."""

from __future__ import annotations

import pytest

from gateway.auth.answer import SignedToken, TokenAnswer, issued
from gateway.auth.identity import Identity
from gateway.auth.reuse import Clock, Conditions, Reuse
from gateway.auth.scope import Scope
from gateway.policy.model import Subject

WINDOW = 30.0
AUTH_TTL = 5.0
NOW = 1000.0
COND = Conditions("rev-1", "kid-1", (0, None))


class FakeClock(Clock):
    """Monotonic and wall time that move only when told; midnight where the test puts it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.midnight = NOW + 86400

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000 + self.now

    def next_midnight(self, now: float) -> float:
        return self.midnight


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reuse(clock: FakeClock) -> Reuse:
    return Reuse(window=WINDOW, auth_cache_ttl=AUTH_TTL, clock=clock)


def answer(
    clock: FakeClock, method: str, *, refresh: bool = False, vouched: float | None = None
) -> TokenAnswer:
    signed = SignedToken(
        "a.b.c", 300, "2026-12-02T00:00:00Z", clock.time(), (("repository", "x", ("pull",)),)
    )
    extra = {"refresh_token": "r"} if refresh else None
    if vouched is None and method in ("password", "htpasswd", "ldap"):
        vouched = clock.now + 3600  # the verified-credential cache vouches for a long while
    scopes = [Scope("repository", "x", ("pull",))]
    return issued(signed, scopes, {}, method, extra=extra, vouched_until=vouched)


def kept(
    reuse: Reuse,
    clock: FakeClock,
    method: str,
    *,
    refresh: bool = False,
    vouched: float | None = None,
) -> TokenAnswer:
    """An answer offered twice (answers are kept from the second sighting on)."""
    made = answer(clock, method, refresh=refresh, vouched=vouched)
    reuse.keep_answer((b"q", b"d"), made, COND)
    reuse.keep_answer((b"q", b"d"), made, COND)
    return made


def test_an_answer_is_kept_from_the_second_sighting(reuse: Reuse, clock: FakeClock) -> None:
    made = answer(clock, "robot")
    reuse.keep_answer((b"q", b"d"), made, COND)
    assert reuse.answer((b"q", b"d"), COND) is None
    reuse.keep_answer((b"q", b"d"), made, COND)
    assert reuse.answer((b"q", b"d"), COND) is made


@pytest.mark.parametrize(
    "changed",
    [
        COND._replace(revision="rev-2"),
        COND._replace(kid="kid-2"),
        COND._replace(generation=(1, None)),
    ],
    ids=["revision", "key", "generation"],
)
def test_any_changed_condition_ends_answers_sign_ins_and_tokens(
    reuse: Reuse, clock: FakeClock, changed: Conditions
) -> None:
    kept(reuse, clock, "robot")
    identity = Identity(Subject("robot", "ci"), "robot")
    reuse.keep_sign_in(b"digest", identity, "ci", COND)
    signed = answer(clock, "robot").signed
    assert signed is not None
    reuse.keep_token("key", signed, COND)
    reuse.keep_token("key", signed, COND)  # kept from the second signing on
    assert reuse.token("key", COND) is signed
    assert reuse.answer((b"q", b"d"), changed) is None
    assert reuse.sign_in(b"digest", changed) is None
    assert reuse.token("key", changed) is None
    # And the stale entries are gone, not waiting for the old conditions to come back.
    assert reuse.answer((b"q", b"d"), COND) is None
    assert reuse.sign_in(b"digest", COND) is None
    assert reuse.token("key", COND) is None


def test_a_token_is_kept_from_its_second_signing(reuse: Reuse, clock: FakeClock) -> None:
    """Tokens for a new repository seldom come again: the first signing is only noted."""
    signed = answer(clock, "robot").signed
    assert signed is not None
    reuse.keep_token("key", signed, COND)
    assert reuse.token("key", COND) is None
    reuse.keep_token("key", signed, COND)
    assert reuse.token("key", COND) is signed


def test_answers_last_the_window_less_the_token_s_age(reuse: Reuse, clock: FakeClock) -> None:
    made = answer(clock, "robot")
    clock.now += 10  # the token was signed 10 s before it was kept
    reuse.keep_answer((b"q", b"d"), made, COND)
    reuse.keep_answer((b"q", b"d"), made, COND)
    clock.now += WINDOW - 10 - 0.5
    assert reuse.answer((b"q", b"d"), COND) is made
    clock.now += 1
    assert reuse.answer((b"q", b"d"), COND) is None


@pytest.mark.parametrize("method", ["password", "htpasswd", "ldap"])
def test_slow_sign_ins_are_replayed_only_within_the_auth_cache_ttl(
    reuse: Reuse, clock: FakeClock, method: str
) -> None:
    made = kept(reuse, clock, method)
    identity = Identity(Subject("user", "bob"), method, vouched_until=clock.now + 3600)
    reuse.keep_sign_in(b"digest", identity, "bob", COND)
    clock.now += AUTH_TTL - 0.5
    assert reuse.answer((b"q", b"d"), COND) is made
    assert reuse.sign_in(b"digest", COND) is not None
    clock.now += 1
    assert reuse.answer((b"q", b"d"), COND) is None
    assert reuse.sign_in(b"digest", COND) is None


def test_robots_are_replayed_for_the_whole_window(reuse: Reuse, clock: FakeClock) -> None:
    made = kept(reuse, clock, "robot")
    clock.now += AUTH_TTL + 1
    assert reuse.answer((b"q", b"d"), COND) is made


def test_refresh_token_sign_ins_and_answers_are_never_kept(reuse: Reuse, clock: FakeClock) -> None:
    kept(reuse, clock, "refresh_token")
    assert reuse.answer((b"q", b"d"), COND) is None
    kept(reuse, clock, "robot", refresh=True)
    assert reuse.answer((b"q", b"d"), COND) is None


def test_nothing_stands_past_midnight(reuse: Reuse, clock: FakeClock) -> None:
    clock.midnight = NOW + 10  # `expires` dates act at midnight
    made = kept(reuse, clock, "robot")
    reuse.keep_sign_in(b"digest", Identity(Subject("robot", "ci"), "robot"), "ci", COND)
    signed = made.signed
    assert signed is not None
    reuse.keep_token("key", signed, COND)
    reuse.keep_token("key", signed, COND)
    clock.now += 9.5
    assert reuse.answer((b"q", b"d"), COND) is made
    assert reuse.sign_in(b"digest", COND) is not None
    assert reuse.token("key", COND) is signed
    clock.now += 1  # past midnight, well within the window
    assert reuse.answer((b"q", b"d"), COND) is None
    assert reuse.sign_in(b"digest", COND) is None
    assert reuse.token("key", COND) is None


def test_nothing_is_kept_for_a_deadline_already_past(reuse: Reuse, clock: FakeClock) -> None:
    clock.midnight = NOW  # midnight is now: nothing may be kept at all
    kept(reuse, clock, "robot")
    assert reuse.answer((b"q", b"d"), COND) is None


def test_the_real_clock_finds_the_next_midnight_once() -> None:
    clock = Clock()
    now = clock.monotonic()
    midnight = clock.next_midnight(now)
    assert now < midnight <= now + 86400 + 3600  # a day, give or take a DST change
    assert clock.next_midnight(now + 1) == midnight


@pytest.mark.parametrize("method", ["password", "htpasswd", "ldap"])
def test_a_slow_sign_in_stands_no_longer_than_its_verification_is_vouched_for(
    reuse: Reuse, clock: FakeClock, method: str
) -> None:
    # Taken from a verified-credential entry that expires in 2 s: neither the remembered
    # sign-in nor the answer may outlive it, though the auth-cache TTL would allow 5 s.
    made = kept(reuse, clock, method, vouched=clock.now + 2)
    identity = Identity(Subject("user", "leo"), method, vouched_until=clock.now + 2)
    reuse.keep_sign_in(b"digest", identity, "leo", COND)
    clock.now += 1.5
    assert reuse.answer((b"q", b"d"), COND) is made
    assert reuse.sign_in(b"digest", COND) is not None
    clock.now += 1
    assert reuse.answer((b"q", b"d"), COND) is None
    assert reuse.sign_in(b"digest", COND) is None


def test_a_slow_sign_in_nothing_vouches_for_is_not_kept(reuse: Reuse, clock: FakeClock) -> None:
    reuse.keep_sign_in(b"digest", Identity(Subject("user", "bob"), "password"), "bob", COND)
    assert reuse.sign_in(b"digest", COND) is None


def test_a_sign_in_from_the_verification_cache_is_vouched_only_until_its_entry_expires() -> None:
    """The bug behind issue 13's item 4: a remembered sign-in re-created from a cache entry
    about to expire lived a whole TTL longer. The identity now carries the entry's expiry."""
    import asyncio

    import bcrypt

    from gateway.auth.identity import Authenticator
    from gateway.auth.verifycache import VerificationCache
    from gateway.policy.engine import Engine
    from gateway.policy.load import load_texts

    stored = bcrypt.hashpw(b"leo-password", bcrypt.gensalt(4)).decode()
    policy = load_texts({"people.yaml": f"users:\n  leo:\n    password: '{stored}'\n"}).policy
    engine = Engine(policy)
    now = [100.0]
    authenticator = Authenticator(cache=VerificationCache(30, clock=lambda: now[0]))

    async def sign_in() -> Identity:
        return await authenticator.password(engine, "leo", "leo-password", client="127.0.0.1")

    fresh = asyncio.run(sign_in())
    assert fresh.vouched_until == 130.0  # checked now: vouched for the whole TTL
    now[0] = 125.0
    cached = asyncio.run(sign_in())
    assert cached.vouched_until == 130.0  # from the entry: not 155
