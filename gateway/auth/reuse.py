"""Reuse: answers, sign-ins and signed tokens given lately, given again while nothing that
made them has changed. A layer around the token pipeline's steps, never a second path.

`docker push` asks for the same token many times in a few seconds, and pulls ask for the same
few scopes all day. Three caches save the work, and one rule says how long anything in them
may stand:

- **answers**: a whole 200 answer to an identical GET (the same raw query and the same
  Authorization header, as a keyed hash), sent again with a new request id, `expires_in` and
  audit line: authenticate, decide and sign are all skipped;
- **sign-ins**: who an Authorization header (or a form's user name and password) proved to
  be lately, so a request for other scopes skips the sign-in (a slow hash or an LDAP bind);
- **tokens**: a token signed lately for the same subject and scopes, whatever the bytes of
  the request, so decide and sign are skipped (kept from the second signing on).

The rule: an entry stands only under the same `Conditions` it was made under (the policy
revision, the signing key, and the authenticator's generation, which moves with every
counted sign-in failure, on this process or, through a shared lockout store's epoch, on any
other worker or replica, and with every htpasswd change), and only until its deadline: the token
reuse window (less the token's age), for slow-hash and LDAP sign-ins the verified-credential
cache's TTL as well, for a CI job's ID token its expiry, and never past the next local
midnight, when `expires` dates act. No
password is kept: keys are MACs under a random per-process key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Hashable
from typing import Any, NamedTuple, TypeVar

from gateway.auth.answer import SignedToken, TokenAnswer
from gateway.auth.identity import Identity
from gateway.boundedcache import BoundedCache

V = TypeVar("V")

# Sign-ins whose proof may stand for the whole reuse window: a constant-time compare against
# the policy (robots, personal access tokens) or no credentials at all.
REUSE_ALWAYS = frozenset({"anonymous", "robot", "access_token"})
# Slow hashes and LDAP binds: only as long as the verified-credential cache would vouch.
REUSE_WITH_AUTH_CACHE = frozenset({"password", "htpasswd", "ldap"})
# A credential with an end of its own (a CI job's ID token; a CLI secret, until the
# provider is asked again): never past it.
REUSE_UNTIL_VOUCHED = frozenset({"oidc", "cli_secret"})


class Clock:
    """Monotonic seconds for deadlines, wall seconds for tokens' lifetimes, and the next
    local midnight on the monotonic scale. Tests pass a clock of their own."""

    def __init__(self) -> None:
        self._midnight = 0.0

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def next_midnight(self, now: float) -> float:
        """The next local midnight after monotonic `now` (worked out once a day)."""
        if now >= self._midnight:
            wall = dt.datetime.now()
            tomorrow = dt.datetime.combine(wall.date() + dt.timedelta(days=1), dt.time())
            self._midnight = now + (tomorrow - wall).total_seconds()
        return self._midnight


class Conditions(NamedTuple):
    """What an answer, sign-in or token was made under; it stands only while all of it holds."""

    revision: str
    kid: str
    generation: Hashable


class _Entry(NamedTuple):
    conditions: Conditions
    deadline: float  # on the clock's monotonic scale
    value: Any


class Reuse:
    """The three caches, under the one rule (see the module's text)."""

    def __init__(
        self, *, window: float, auth_cache_ttl: float, size: int = 10000, clock: Clock | None = None
    ) -> None:
        self.window = window  # how long a signed token may be handed out again
        self.auth_cache_ttl = auth_cache_ttl
        self.clock = clock or Clock()
        self._key = secrets.token_bytes(32)
        self._answers: BoundedCache[tuple[bytes, bytes], _Entry] = BoundedCache(size)
        self._seen: BoundedCache[tuple[bytes, bytes], None] = BoundedCache(size)
        self._sign_ins: BoundedCache[bytes, _Entry] = BoundedCache(size)
        self._tokens: BoundedCache[Hashable, _Entry] = BoundedCache(size)
        self._tokens_seen: BoundedCache[Hashable, None] = BoundedCache(size)

    # -- the rule ----------------------------------------------------------------------

    def deadline(self, method: str, age: float = 0.0, vouched_until: float | None = None) -> float:
        """Until when something made for a sign-in by `method` (and `age` seconds old) may
        stand, on the monotonic clock; now or earlier: not at all. A slow sign-in stands no
        longer than the verified-credential cache vouches for it (`vouched_until`), so a
        sign-in taken from an entry about to expire is not remembered past its expiry."""
        now = self.clock.monotonic()
        lifetime = self.window - age
        if method in REUSE_WITH_AUTH_CACHE:
            lifetime = min(lifetime, self.auth_cache_ttl)
            if vouched_until is None:
                return now  # nothing vouches for it (the cache is off): not kept
            lifetime = min(lifetime, vouched_until - now)
        elif method in REUSE_UNTIL_VOUCHED:
            if vouched_until is None:
                return now
            lifetime = min(lifetime, vouched_until - now)
        elif method not in REUSE_ALWAYS:
            return now
        return min(now + lifetime, self.clock.next_midnight(now))

    def _get(self, cache: BoundedCache[Any, _Entry], key: Any, conditions: Conditions) -> Any:
        entry = cache.get(key)
        if entry is None:
            return None
        if entry.conditions == conditions and self.clock.monotonic() < entry.deadline:
            return entry.value
        cache.pop(key)
        return None

    def _put(
        self,
        cache: BoundedCache[Any, _Entry],
        key: Any,
        conditions: Conditions,
        deadline: float,
        value: Any,
    ) -> None:
        if deadline > self.clock.monotonic():
            cache.put(key, _Entry(conditions, deadline, value))

    # -- keys --------------------------------------------------------------------------

    def digest(self, proof: bytes) -> bytes:
        """A MAC of a credential's bytes (empty for none): the same bytes, the same digest."""
        if not proof:
            return b""
        return hashlib.blake2b(proof, key=self._key, digest_size=16).digest()

    # -- answers -----------------------------------------------------------------------

    def answer(self, key: tuple[bytes, bytes], conditions: Conditions) -> TokenAnswer | None:
        """The answer given lately to this exact request, if it may be given again."""
        found: TokenAnswer | None = self._get(self._answers, key, conditions)
        return found

    def keep_answer(
        self, key: tuple[bytes, bytes], answer: TokenAnswer, conditions: Conditions
    ) -> None:
        """Keep a fresh answer to give again, if it may be: an issued token without a refresh
        token, for a sign-in that may be reused, from the second time the request came.

        Most requests that ask for a new repository never come again; noting their key costs
        less than keeping their answer. A request that repeats is answered afresh twice.
        """
        signed = answer.signed
        if signed is None or answer.refresh_token:
            return
        if _first_sighting(self._seen, key):
            return
        age = self.clock.time() - signed.minted
        deadline = self.deadline(answer.method, age, answer.vouched_until)
        self._put(self._answers, key, conditions, deadline, answer)

    # -- sign-ins ----------------------------------------------------------------------

    def sign_in(self, digest: bytes, conditions: Conditions) -> tuple[Identity, str] | None:
        """Who these credentials proved to be lately (and the name they gave), if it stands."""
        found: tuple[Identity, str] | None = self._get(self._sign_ins, digest, conditions)
        return found

    def keep_sign_in(
        self, digest: bytes, identity: Identity, username: str, conditions: Conditions
    ) -> None:
        self._put(
            self._sign_ins,
            digest,
            conditions,
            self.deadline(identity.method, vouched_until=identity.vouched_until),
            (identity, username),
        )

    # -- signed tokens -----------------------------------------------------------------

    def token(self, key: Hashable, conditions: Conditions) -> SignedToken | None:
        """A token signed lately for the same subject and scopes, if it may be handed out."""
        found: SignedToken | None = self._get(self._tokens, key, conditions)
        return found

    def keep_token(self, key: Hashable, token: SignedToken, conditions: Conditions) -> None:
        """Keep a token to hand out again, from the second time its subject and scopes were
        signed for (as answers are kept from their second sighting: a request for a new
        repository seldom comes again, and keeping every token it got churned megabytes
        through the cache: about 7% of such a request's CPU, measured)."""
        if _first_sighting(self._tokens_seen, key):
            return
        deadline = min(
            self.clock.monotonic() + self.window,
            self.clock.next_midnight(self.clock.monotonic()),
        )
        self._put(self._tokens, key, conditions, deadline, token)


def _first_sighting(seen: BoundedCache[Any, None], key: Any) -> bool:
    """Whether `key` is new to `seen` (and now noted there): what is kept only from its
    second sighting is not kept the first time."""
    if key in seen:
        return False
    seen.put(key, None)
    return True
