"""Who is asking: the sign-in backends, tried in a fixed order, and refresh tokens.

For a user name and password, the first backend that has the name decides; later ones are not
asked (docs/authentication.md has the reasons):

1. a robot of the policy (SHA-256 of its secret, compared in constant time);
2. a personal access token of a policy user, when the password has the `rgw_pat_` prefix
   (SHA-256 lookup among that user's tokens; never a slow hash);
3. a policy user with a password hash (bcrypt or argon2id);
4. the htpasswd file (bcrypt);
5. the LDAP directory (a bind as the user).

Slow hashes and LDAP binds run in worker threads, never on the event loop, and once one
succeeds the same credentials are accepted from `VerificationCache` for a while. Every failure
costs a slow hash, so an unknown name, a user without a password and a wrong robot secret cannot
be told apart from a wrong password by timing (no user enumeration). Failures are counted by
`Throttle`; a name or address that fails too often is refused before any check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import bcrypt
from anyio import CapacityLimiter
from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error

from gateway.auth.credentials import is_access_token, sha256_hex
from gateway.auth.htpasswd import HtpasswdFile
from gateway.auth.ldap import LdapConfig, LdapDirectory, LdapRejected, LdapUnavailable, LdapUser
from gateway.auth.lockout import MemoryFailureCounter, Refusal, Rules, Throttle
from gateway.auth.tokens import RefreshClaims
from gateway.auth.verifycache import VerificationCache
from gateway.config import ConfigError, Settings
from gateway.policy.engine import Engine
from gateway.policy.model import ANONYMOUS_SUBJECT, REPOSITORY_ACTIONS, Subject

__all__ = [
    "ANONYMOUS",
    "AuthenticationFailed",
    "Authenticator",
    "Identity",
    "TooManyAttempts",
    "fingerprint",
    "sha256_hex",
    "verify_password",
]

_argon2 = PasswordHasher()
DUMMY_COST = 12  # the cost of the bcrypt hashes `hash-password` makes
LDAP_THREADS = 8  # LDAP binds at once; a slow directory never takes the threads hashes need


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated (or anonymous) caller and how it proved who it is."""

    subject: Subject
    method: str  # anonymous | password | htpasswd | ldap | robot | access_token | refresh_token
    fingerprint: str | None = None  # ties refresh tokens to the credential they came from
    actions: frozenset[str] | None = None  # a personal access token's cap (None: no cap)
    via: str | None = None  # for refresh tokens: "htpasswd", "ldap", "token:NAME" or None

    @property
    def refreshable(self) -> bool:
        """Whether a refresh token may stand for this sign-in (not for LDAP: see the docs)."""
        return self.subject.kind != "anonymous" and self.via != "ldap"

    def allows(self, action: str) -> bool:
        """Whether the cap (if any) lets `action` through; `*` needs every repository action."""
        if self.actions is None:
            return True
        if action == "*":
            return self.actions.issuperset(REPOSITORY_ACTIONS)
        return action in self.actions


ANONYMOUS = Identity(ANONYMOUS_SUBJECT, "anonymous")


class AuthenticationFailed(Exception):
    """Bad credentials. `reason` is for the audit log only; clients get a generic answer."""

    def __init__(self, reason: str, username: str = "", *, counts: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.username = username
        self.counts = counts  # a failure of the caller (not of a directory that is down)
        self.locked: list[str] = []  # lockouts this failure started ("user", "address")


class TooManyAttempts(AuthenticationFailed):
    """Refused before checking: the user name or client address failed too often lately."""

    def __init__(self, refusal: Refusal, username: str = "") -> None:
        what = "user name" if refusal.scope == "user" else "client address"
        state = "locked out" if refusal.locked else "backing off"
        super().__init__(f"{what} {state} after failed sign-ins", username, counts=False)
        self.refusal = refusal

    @property
    def retry_after(self) -> int:
        return self.refusal.retry_after


@functools.lru_cache(maxsize=4096)
def fingerprint(secret_hash: str | None) -> str | None:
    """A short, one-way tag of a stored credential: changing the password revokes refresh tokens."""
    if not secret_hash:
        return None
    return hashlib.sha256(secret_hash.encode()).hexdigest()[:16]


def verify_password(password: str, stored: str) -> bool:
    """Check a password against a bcrypt or argon2id hash (slow: call from a thread)."""
    data = password.encode()
    if stored.startswith("$2"):
        if len(data) > 72:  # bcrypt ignores or refuses more; hash-password never made such a hash
            return False
        try:
            return bcrypt.checkpw(data, stored.encode())
        except ValueError:
            return False
    if stored.startswith("$argon2id$"):
        try:
            return _argon2.verify(stored, password)
        except Argon2Error:
            return False
    return False


def default_throttle() -> Throttle:
    return Throttle(
        MemoryFailureCounter(Rules(failures=10, window=300, lockout=300, backoff=1)),
        MemoryFailureCounter(Rules(failures=50, window=300, lockout=300, backoff=1)),
    )


REDIS_URL_INVALID = (
    "setting redis_url is not a valid Redis URL: expected redis://[[USER]:PASSWORD@]HOST[:PORT]"
    "[/DB] (or rediss://), with '/', '?' and '#' in the password percent-encoded ('/' as %2F)"
)


def throttle_for(settings: Settings) -> Throttle:
    def rules(failures: int) -> Rules:
        return Rules(
            failures=failures,
            window=settings.lockout_window,
            lockout=settings.lockout_duration,
            backoff=settings.lockout_backoff,
        )

    if settings.redis_url:
        # Shared by every replica: a lockout holds whichever replica the attacker reaches.
        import redis.asyncio as aioredis

        from gateway.auth.redislockout import RedisFailureCounter

        try:
            client = aioredis.from_url(
                settings.redis_url.reveal(), socket_timeout=0.5, socket_connect_timeout=0.5
            )
        except ValueError:  # its message may quote the URL, and so part of the password
            raise ConfigError(REDIS_URL_INVALID) from None
        prefix = f"registry-gateway:{settings.service}:"
        return Throttle(
            RedisFailureCounter(client, rules(settings.lockout_failures), prefix),
            RedisFailureCounter(client, rules(settings.lockout_address_failures), prefix),
        )
    return Throttle(
        MemoryFailureCounter(rules(settings.lockout_failures)),
        MemoryFailureCounter(rules(settings.lockout_address_failures)),
    )


class Authenticator:
    """Resolves credentials against one policy engine snapshot and the directory backends."""

    def __init__(
        self,
        *,
        htpasswd: HtpasswdFile | None = None,
        ldap: LdapDirectory | None = None,
        cache: VerificationCache | None = None,
        throttle: Throttle | None = None,
        repeat_window: float = 300.0,
    ) -> None:
        # A real hash of a random secret: failures verify against it to cost a real check.
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(DUMMY_COST)).decode()
        self.htpasswd = htpasswd
        self.ldap = ldap
        self.cache = cache if cache is not None else VerificationCache(300)
        self.throttle = throttle if throttle is not None else default_throttle()
        # Wrong credentials seen lately (as HMACs): the same wrong password again is one guess,
        # so a client retrying a stale password does not lock its user out.
        self._recent_failures = VerificationCache(repeat_window, 10000)
        self._ldap_threads = CapacityLimiter(LDAP_THREADS)
        # Slow hashes are CPU-bound and argon2id holds 64 MiB each: as many at once as there
        # are cores, no more (anyio's default of 40 threads could take 2.5 GB and starve the
        # event loop). Others wait their turn; identical checks already share one result.
        self._hash_threads = CapacityLimiter(os.cpu_count() or 1)
        self._pending: dict[tuple[str, str, str, str], asyncio.Future[Any]] = {}
        self._failures = 0  # counted failed sign-ins since start (see `generation`)

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """The backends the settings configure; ConfigError for incomplete LDAP settings."""
        ldap_config = LdapConfig.from_settings(settings)
        return cls(
            htpasswd=HtpasswdFile(settings.htpasswd) if settings.htpasswd else None,
            ldap=LdapDirectory(ldap_config) if ldap_config else None,
            cache=VerificationCache(settings.auth_cache_ttl, settings.auth_cache_size),
            throttle=throttle_for(settings),
            repeat_window=settings.lockout_window,
        )

    @property
    def generation(self) -> tuple[int, str | None]:
        """Changes whenever an answer given to right credentials may no longer be given again
        without checking: a counted failure (it may have started a lockout) or a new htpasswd
        file. The token endpoint replays recent answers only within one generation."""
        htpasswd = self.htpasswd
        return (self._failures, htpasswd.entries.revision if htpasswd is not None else None)

    async def _slow_failure(self, reason: str, username: str) -> AuthenticationFailed:
        await anyio.to_thread.run_sync(
            verify_password, "not-the-password", self._dummy, limiter=self._hash_threads
        )
        return AuthenticationFailed(reason, username)

    # -- sign-in -----------------------------------------------------------------------

    async def password(
        self, engine: Engine, username: str, password: str, *, client: str | None = None
    ) -> Identity:
        """Authenticate HTTP Basic or OAuth2 password credentials from `client` (an address).

        Raises TooManyAttempts when the name or address must wait, AuthenticationFailed when
        the credentials are wrong (or the only backend that could check them is down).
        """
        token = username in engine.policy.robots or is_access_token(password)
        refusal = await self.throttle.check(username, client, token=token)
        if refusal is not None:
            raise TooManyAttempts(refusal, username)
        try:
            identity = await self._verify(engine, username, password)
        except AuthenticationFailed as exc:
            if exc.counts and self._recent_failures.get("failed", username, password) is None:
                self._failures += 1
                self._recent_failures.put("failed", username, password)
                exc.locked = await self.throttle.failed(username, client, token=token)
            elif exc.counts:
                exc.reason += " (the same wrong credentials again: not counted)"
            raise
        if not token:
            await self.throttle.succeeded(username)
        return identity

    async def _verify(self, engine: Engine, username: str, password: str) -> Identity:
        policy = engine.policy
        robot = policy.robots.get(username)
        if robot is not None:
            if robot.expired(dt.date.today()):
                raise await self._slow_failure("robot expired", username)
            if hmac.compare_digest(sha256_hex(password), robot.token_sha256):
                subject = Subject("robot", username)
                return Identity(subject, "robot", fingerprint(robot.token_sha256))
            raise await self._slow_failure("wrong robot secret", username)
        user = policy.users.get(username)
        if is_access_token(password):
            digest = sha256_hex(password)
            for token in user.tokens if user is not None else ():
                if hmac.compare_digest(digest, token.token_sha256):
                    if token.expired(dt.date.today()):
                        raise await self._slow_failure(
                            f"personal access token {token.name!r} expired", username
                        )
                    return Identity(
                        Subject("user", username),
                        "access_token",
                        fingerprint(token.token_sha256),
                        actions=token.actions,
                        via=f"token:{token.name}",
                    )
            raise await self._slow_failure("unknown personal access token", username)
        if user is not None and user.password is not None:
            if not await self._check_hash("policy", username, password, user.password):
                raise AuthenticationFailed("wrong password", username)
            return Identity(Subject("user", username), "password", fingerprint(user.password))
        stored = self.htpasswd.get(username) if self.htpasswd is not None else None
        if stored is not None:
            if not await self._check_hash("htpasswd", username, password, stored):
                raise AuthenticationFailed("wrong password (htpasswd)", username)
            subject = Subject("user", username, directory=True)
            return Identity(subject, "htpasswd", fingerprint(stored), via="htpasswd")
        if self.ldap is not None:
            return await self._ldap(engine, username, password)
        if user is not None:
            raise await self._slow_failure("user has no password in the policy", username)
        raise await self._slow_failure("unknown user", username)

    async def _check_hash(self, backend: str, username: str, password: str, stored: str) -> bool:
        async def check() -> bool:
            return await anyio.to_thread.run_sync(
                verify_password, password, stored, limiter=self._hash_threads
            )

        return bool(await self._once(backend, username, password, stored, check))

    async def _ldap(self, engine: Engine, username: str, password: str) -> Identity:
        assert self.ldap is not None
        ldap = self.ldap

        async def bind() -> LdapUser:
            return await anyio.to_thread.run_sync(
                ldap.authenticate, username, password, limiter=self._ldap_threads
            )

        try:
            found: LdapUser = await self._once("ldap", username, password, "", bind)
        except LdapRejected as exc:
            raise AuthenticationFailed(f"LDAP: {exc}", username) from None
        except LdapUnavailable as exc:
            raise AuthenticationFailed(str(exc), username, counts=False) from None
        policy = engine.policy
        owner = policy.users.get(found.name)
        if (
            found.name in policy.robots
            or (owner is not None and owner.password is not None)
            or (self.htpasswd is not None and self.htpasswd.get(found.name) is not None)
        ):
            # "Alice" reached LDAP because only "alice" is in the policy: same person, other backend.
            raise AuthenticationFailed(
                f"LDAP user {found.name!r} is a name another backend signs in", username
            )
        subject = Subject("user", found.name, found.groups, directory=True)
        return Identity(subject, "ldap", via="ldap")

    async def _once(
        self,
        backend: str,
        username: str,
        password: str,
        stamp: str,
        check: Callable[[], Awaitable[Any]],
    ) -> Any:
        """The cached result of a successful check, or the check, run once for concurrent asks.

        `docker push` asks for several tokens at once: they share one slow check.
        """
        cached = self.cache.get(backend, username, password, stamp)
        if cached is not None:
            return cached
        key = (backend, username, stamp, sha256_hex(password))  # in-flight only, never kept
        pending = self._pending.get(key)
        if pending is None:

            async def run() -> Any:
                result = await check()
                if result:
                    self.cache.put(backend, username, password, stamp, result)
                return result

            pending = asyncio.ensure_future(run())
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    # -- refresh tokens ----------------------------------------------------------------

    def refresh(self, engine: Engine, claims: RefreshClaims) -> Identity:
        """The identity behind a verified refresh token, if its owner and credential still stand."""
        policy = engine.policy
        via = claims.via
        subject = Subject(claims.kind, claims.subject)
        actions = None
        if claims.kind == "robot":
            robot = policy.robots.get(claims.subject)
            if robot is None or robot.expired(dt.date.today()):
                raise AuthenticationFailed(
                    "refresh token of a robot no longer in the policy", claims.subject
                )
            current = fingerprint(robot.token_sha256)
        elif via is not None and via.startswith("token:"):
            user = policy.users.get(claims.subject)
            name = via.removeprefix("token:")
            token = next((t for t in user.tokens if t.name == name), None) if user else None
            if token is None or token.expired(dt.date.today()):
                raise AuthenticationFailed(
                    f"refresh token of personal access token {name!r}, gone or expired",
                    claims.subject,
                )
            current, actions = fingerprint(token.token_sha256), token.actions
        elif via == "htpasswd":
            stored = self.htpasswd.get(claims.subject) if self.htpasswd is not None else None
            user = policy.users.get(claims.subject)
            if stored is None or claims.subject in policy.robots or (user and user.password):
                raise AuthenticationFailed(
                    "refresh token of a user no longer in the htpasswd file", claims.subject
                )
            current = fingerprint(stored)
            subject = Subject("user", claims.subject, directory=True)
        elif via is None:
            user = policy.users.get(claims.subject)
            if user is None:
                raise AuthenticationFailed(
                    "refresh token of a user no longer in the policy", claims.subject
                )
            current = fingerprint(user.password)
        else:
            raise AuthenticationFailed(f"refresh token of unknown origin {via!r}", claims.subject)
        if claims.fingerprint is not None and not hmac.compare_digest(
            claims.fingerprint, current or ""
        ):
            raise AuthenticationFailed("refresh token of a changed credential", claims.subject)
        return Identity(subject, "refresh_token", claims.fingerprint, actions=actions, via=via)
