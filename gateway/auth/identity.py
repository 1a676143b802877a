"""Who is asking: the sign-in backends, tried in a fixed order, and refresh tokens.

For a user name and password, the first backend that has the name decides; later ones are not
asked (docs/authentication.md has the reasons):

1. a robot of the policy (SHA-256 of its secret, compared in constant time);
2. a personal access token of a policy user, when the password has the `rgw_pat_` prefix
   (SHA-256 lookup among that user's tokens; never a slow hash);
3. a policy user with a password hash (bcrypt or argon2id);
4. the htpasswd file (bcrypt);
5. the LDAP directory (a bind as the user).

A password shaped like a JWT is first an OIDC ID token of a CI job (gateway/auth/workloads.py):
it signs in as the one policy workload it matches, whatever the user name. Such a token is
verified by its signature, not guessed: its refusals are not counted, and they say why.
A password with the `rgw_cli_` prefix is a CLI secret made in the UI after an OIDC sign-in
(gateway/auth/clisecrets.py): its owner, with the groups the provider gives them now.

Slow hashes and LDAP binds run in worker threads, never on the event loop, and once one
succeeds the same credentials are accepted from `VerificationCache` for a while. Every failure
is answered no sooner than `FailureFloor` after it started (gateway/auth/floor.py), so an
unknown name, a user without a password, a wrong password for any hash, an LDAP user and a wrong
robot secret or token cannot be told apart by timing (no user enumeration). A password sign-in
that needs a check reserves its attempt in the lockout store first (gateway/auth/lockout.py)
and settles it after, so parallel guesses cannot outrun the limits; a robot secret or token is
checked first and counted only when wrong.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

import anyio.to_thread
import bcrypt
from anyio import CapacityLimiter
from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error

from gateway.auth.clisecrets import PREFIX as CLI_PREFIX
from gateway.auth.clisecrets import RECHECK_SECONDS, CliSecretError, CliSecrets, cli_secrets_for
from gateway.auth.clisecrets import opened as cli_refresh_token
from gateway.auth.credentials import is_access_token, sha256_hex
from gateway.auth.floor import FailureFloor, hash_kind
from gateway.auth.htpasswd import HtpasswdFile
from gateway.auth.ldap import LdapConfig, LdapDirectory, LdapRejected, LdapUnavailable, LdapUser
from gateway.auth.lockout import Limits, LockStore, MemoryLockStore, Outcome, Refusal, keys_for
from gateway.auth.oidc import OidcRefused, looks_like_jwt
from gateway.auth.people import People
from gateway.auth.tokens import RefreshClaims
from gateway.auth.verifycache import VerificationCache
from gateway.auth.workloads import Workloads
from gateway.boundedcache import BoundedCache
from gateway.config import ConfigError, Settings
from gateway.policy.engine import Engine
from gateway.policy.model import ANONYMOUS_SUBJECT, REPOSITORY_ACTIONS, Subject
from gateway.policy.workloads import trusted_issuers

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
LDAP_THREADS = 8  # LDAP binds at once; a slow directory never takes the threads hashes need
LOCKOUT_FILE = "lockout.sqlite3"  # in the data dir: the counts the workers of a host share
log = logging.getLogger("registry_gateway.lockout")


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated (or anonymous) caller and how it proved who it is."""

    subject: Subject
    method: str  # anonymous | password | htpasswd | ldap | robot | access_token | refresh_token
    # | oidc (a CI job's ID token) | cli_secret (a person's, after an OIDC sign-in)
    fingerprint: str | None = None  # ties refresh tokens to the credential they came from
    actions: frozenset[str] | None = None  # a personal access token's cap (None: no cap)
    via: str | None = None  # for refresh tokens: "htpasswd", "ldap", "token:NAME" or None
    # For a slow sign-in (hash, LDAP): when the verified-credential cache stops vouching for
    # it (time.monotonic()). Nothing built on this sign-in may outlive it (gateway/auth/reuse.py).
    vouched_until: float | None = None
    # Audit fields of this sign-in (an OIDC token's issuer, subject and workload).
    details: tuple[tuple[str, str], ...] = ()

    @property
    def refreshable(self) -> bool:
        """Whether a refresh token may stand for this sign-in (not for LDAP, nor for a CI
        job's ID token, which lives minutes: see the docs)."""
        return self.subject.kind != "anonymous" and self.via not in ("ldap", "oidc")

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

    def __init__(
        self,
        reason: str,
        username: str = "",
        *,
        counts: bool = True,
        public: str | None = None,
        details: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.username = username
        self.counts = counts  # a failure of the caller (not of a directory that is down)
        self.locked: list[str] = []  # lockouts this failure started ("user", "address", ...)
        # What the client is told, when it may be told why (an OIDC token's refusal).
        self.public = public
        self.details = details  # audit fields


_REFUSALS = {
    "address": "client address {state} after failed sign-ins",
    "user": "user name {state} for this client address after failed sign-ins",
    "account": "user name under attack from many addresses: this one failed for it lately",
}


class TooManyAttempts(AuthenticationFailed):
    """Refused before checking: the address (or the name from this address) failed too often."""

    def __init__(self, refusal: Refusal, username: str = "") -> None:
        state = "locked out" if refusal.locked else "backing off"
        super().__init__(_REFUSALS[refusal.scope].format(state=state), username, counts=False)
        self.refusal = refusal

    @property
    def retry_after(self) -> int:
        return self.refusal.retry_after


class _Target(NamedTuple):
    """Where a name's password is checked, found without checking it."""

    backend: str  # robot | token | password | htpasswd | ldap | none
    stored: str = ""  # the stored hash (password, htpasswd)
    reason: str = ""  # for none: why nothing can sign this name in


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


def limits_for(settings: Settings) -> Limits:
    return Limits(
        user=settings.lockout_failures,
        address=settings.lockout_address_failures,
        account=settings.lockout_account_failures,
        window=settings.lockout_window,
        lockout=settings.lockout_duration,
        backoff=settings.lockout_backoff,
    )


REDIS_URL_INVALID = (
    "setting redis_url is not a valid Redis URL: expected redis://[[USER]:PASSWORD@]HOST[:PORT]"
    "[/DB] (or rediss://), with '/', '?' and '#' in the password percent-encoded ('/' as %2F)"
)


REDIS_TIMEOUT = 3.0  # seconds; see throttle_for


def throttle_for(settings: Settings) -> LockStore:
    """Where failures are counted: Redis (every replica), an SQLite file in the data dir (the
    workers of one host), or this process's memory (one worker)."""
    limits = limits_for(settings)
    if settings.redis_url:
        # Shared by every replica: a lockout holds whichever replica the attacker reaches.
        import redis.asyncio as aioredis

        from gateway.auth.redislockout import RedisLockStore

        try:
            # Every call that times out fails open (the try is not throttled): a gateway made
            # slow by load (its event loop late to read replies, its pool opening connections
            # for a burst) must not turn into one that counts nothing. A Redis that is down
            # refuses connections at once, whatever the timeout.
            client = aioredis.from_url(
                settings.redis_url.reveal(),
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
            )
        except ValueError:  # its message may quote the URL, and so part of the password
            raise ConfigError(REDIS_URL_INVALID) from None
        prefix = f"registry-gateway:{settings.service}:"
        return RedisLockStore(client, limits, prefix)
    if settings.workers > 1:
        from gateway.auth.lockstore import SqliteLockStore

        store = SqliteLockStore(settings.data_dir / LOCKOUT_FILE, limits)
        try:
            store.open()
        except (sqlite3.Error, OSError) as exc:
            log.error(
                "lockout store %s unusable (%s): each worker counts failures on its own",
                store.path,
                exc,
                extra={"event": "lockout_store_down"},
            )
            return MemoryLockStore(limits)
        return store
    return MemoryLockStore(limits)


class Authenticator:
    """Resolves credentials against one policy engine snapshot and the directory backends."""

    def __init__(
        self,
        *,
        htpasswd: HtpasswdFile | None = None,
        ldap: LdapDirectory | None = None,
        cache: VerificationCache | None = None,
        throttle: LockStore | None = None,
        floor: FailureFloor | None = None,
        repeat_window: float = 300.0,
        workloads: Workloads | None = None,
        people: People | None = None,
        cli_secrets: CliSecrets | None = None,
        cli_secret_recheck: float = RECHECK_SECONDS,
    ) -> None:
        self.htpasswd = htpasswd
        self.ldap = ldap
        self.workloads = workloads
        self.people = people
        self.cli_secrets = cli_secrets
        self.cli_secret_recheck = cli_secret_recheck
        # CLI secrets the provider vouched for lately: id -> (monotonic time, groups).
        self._rechecked: BoundedCache[str, tuple[float, frozenset[str]]] = BoundedCache(10000)
        self.cache = cache if cache is not None else VerificationCache(300)
        self.throttle: LockStore = throttle if throttle is not None else MemoryLockStore(Limits())
        self.floor = floor if floor is not None else FailureFloor()
        # Wrong credentials seen lately (as HMACs): the same wrong password again is one guess,
        # so a client retrying a stale password does not lock its user out.
        self._recent_failures = VerificationCache(repeat_window, 10000)
        self._ldap_threads = CapacityLimiter(LDAP_THREADS)
        # Slow hashes are CPU-bound and argon2id holds 64 MiB each: as many at once as there
        # are cores, no more (anyio's default of 40 threads could take 2.5 GB and starve the
        # event loop). Others wait their turn; identical checks already share one result.
        self._hash_threads = CapacityLimiter(os.cpu_count() or 1)
        self._pending: dict[tuple[str, str, str, str], asyncio.Future[Any]] = {}
        # Attempts under way, by a MAC of (client, name, password): identical requests (a
        # push starting) share one reservation and one check.
        self._attempts: dict[bytes, asyncio.Future[Identity]] = {}
        self._key = secrets.token_bytes(32)
        self._background: set[asyncio.Future[Any]] = set()
        self._noticed: tuple[Engine | None, object] = (None, None)
        self._generation = 0  # counted failures and refused tries since start

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """The backends the settings configure; ConfigError for incomplete LDAP settings."""
        ldap_config = LdapConfig.from_settings(settings)
        try:
            workloads = Workloads.for_issuers(trusted_issuers(settings.oidc_ci_issuers))
        except ValueError as exc:
            raise ConfigError(f"setting oidc_ci_issuers: {exc}") from None
        people = People.from_settings(settings)
        cli_secrets = None
        if people is not None:
            redis_url = settings.redis_url.reveal() if settings.redis_url else None
            cli_secrets = cli_secrets_for(
                settings.data_dir, redis_url, settings.service, settings.oidc_cli_secret_max_ttl
            )
        return cls(
            htpasswd=HtpasswdFile(settings.htpasswd) if settings.htpasswd else None,
            ldap=LdapDirectory(ldap_config) if ldap_config else None,
            cache=VerificationCache(settings.auth_cache_ttl, settings.auth_cache_size),
            throttle=throttle_for(settings),
            floor=FailureFloor(settings.signin_failure_floor),
            repeat_window=settings.lockout_window,
            workloads=workloads,
            people=people,
            cli_secrets=cli_secrets,
            cli_secret_recheck=settings.oidc_cli_secret_recheck,
        )

    @property
    def generation(self) -> tuple[int, str | None, Hashable]:
        """Changes whenever an answer given to right credentials may no longer be given again
        without checking: a counted failure (it may have started a lockout), here or, through
        a shared lockout store's epoch, on any other worker or replica; a try refused by a
        lockout (it may have been right); or a new htpasswd file. The token endpoint replays
        recent answers only within one generation."""
        htpasswd = self.htpasswd
        revision = htpasswd.entries.revision if htpasswd is not None else None
        return (self._generation, revision, self.throttle.epoch())

    # -- sign-in -----------------------------------------------------------------------

    async def password(
        self, engine: Engine, username: str, password: str, *, client: str | None = None
    ) -> Identity:
        """Authenticate HTTP Basic or OAuth2 password credentials from `client` (an address).

        Raises TooManyAttempts (at once) when the address, or the name from this address,
        must wait; AuthenticationFailed when the credentials are wrong (or the only backend
        that could check them is down), never sooner than the failure floor after the call.
        """
        if self.workloads is not None and looks_like_jwt(password):
            return await self._workload(engine, password)
        if self.cli_secrets is not None and password.startswith(CLI_PREFIX):
            return await self._cli_secret(engine, password)
        started = self.floor.clock()
        try:
            return await self._sign_in(engine, username, password, client)
        except TooManyAttempts:
            # A refused try may be the right password, which a replay or a remembered sign-in
            # would answer without asking here: the generation moves, ending those.
            self._generation += 1
            raise
        except AuthenticationFailed:
            self._notice(engine)
            await self.floor.wait(started)
            raise

    async def _workload(self, engine: Engine, token: str) -> Identity:
        """A CI job's ID token: the workload it matches, good until the token expires."""
        assert self.workloads is not None
        try:
            found = await self.workloads.sign_in(engine, token)
        except OidcRefused as exc:
            refused = (("oidc_issuer", exc.issuer), ("oidc_subject", exc.subject))
            public = f"OIDC token refused: {exc.message} (issuer {exc.issuer or '?'}, "
            public += f"subject {exc.subject or '?'})"
            raise AuthenticationFailed(
                f"OIDC token: {exc.message}", counts=False, public=public, details=refused
            ) from None
        verified = found.token
        left = verified.expires - time.time()
        details = (
            ("oidc_issuer", verified.issuer),
            ("oidc_subject", verified.subject),
            ("workload", found.workload.name),
        )
        return Identity(
            Subject("workload", found.workload.name),
            "oidc",
            via="oidc",
            vouched_until=time.monotonic() + left,
            details=details,
        )

    async def _cli_secret(self, engine: Engine, secret: str) -> Identity:
        """A person's CLI secret: its owner, with the groups the provider gives them now
        (asked at most every `cli_secret_recheck` seconds when the secret keeps a refresh
        token; 0: on every use)."""
        assert self.cli_secrets is not None
        try:
            record = await self.cli_secrets.check(secret)
        except CliSecretError as exc:
            raise AuthenticationFailed(
                f"CLI secret: {exc}", counts=False, public=f"CLI secret refused: {exc}"
            ) from None
        now = time.monotonic()
        groups, checked = frozenset(record.groups), None
        refresh = cli_refresh_token(record, secret)
        if refresh is not None and self.people is not None:
            cached = self._rechecked.get(record.id)
            if cached is not None and now - cached[0] < self.cli_secret_recheck:
                checked, groups = cached
            else:
                try:
                    person = await self.people.refresh(refresh)
                except OidcRefused as exc:
                    raise AuthenticationFailed(
                        f"CLI secret {record.id}: {exc.message}",
                        record.user,
                        counts=False,
                        public="CLI secret refused: the identity provider no longer signs you "
                        "in; sign in to the UI again and make a new one",
                    ) from None
                if person.name != record.user:
                    raise AuthenticationFailed(
                        f"CLI secret {record.id}: the provider names another user", record.user
                    )
                if person.refresh_token is not None and person.refresh_token != refresh:
                    await self.cli_secrets.keep_refresh(record, secret, person.refresh_token)
                checked, groups = now, person.groups
                self._rechecked.put(record.id, (now, groups))
        if record.user in engine.policy.robots:
            raise AuthenticationFailed("CLI secret of a robot's name", record.user)
        directory = record.user not in engine.policy.users
        subject = Subject("user", record.user, directory=directory, oidc_groups=groups)
        until = (checked + self.cli_secret_recheck) if checked is not None else None
        left = record.expires - time.time()
        return Identity(
            subject,
            "cli_secret",
            via="oidc",
            vouched_until=min(until, now + left) if until is not None else now + left,
            details=(("cli_secret", record.id),),
        )

    def _notice(self, engine: Engine) -> None:
        """Tell the floor which kinds of hash the live policy and htpasswd file hold (not on
        the way of robots and tokens, which may never need it: measuring argon2id takes
        its 64 MiB)."""
        entries = self.htpasswd.entries if self.htpasswd is not None else None
        if self._noticed[0] is engine and self._noticed[1] is entries:
            return
        self._noticed = (engine, entries)
        hashes = [user.password for user in engine.policy.users.values() if user.password]
        if entries is not None:
            hashes += entries.hashes.values()
        self.floor.notice({kind for kind in map(hash_kind, hashes) if kind})

    async def _sign_in(
        self, engine: Engine, username: str, password: str, client: str | None
    ) -> Identity:
        target = self._locate(engine, username, password)
        if target.backend in ("robot", "token"):
            # One SHA-256, checked first: a right secret never touches the lockout store, and
            # nobody guesses a 256-bit secret. A wrong one counts against the address.
            try:
                return self._token(engine, target, username, password)
            except AuthenticationFailed as exc:
                await self._token_failure(exc, target, username, password, client)
                raise
        self._notice(engine)  # a slow check ahead: the floor measures what it may cost
        key = self._attempt_key(client, username, password)
        attempt = self._attempts.get(key)
        if attempt is None:
            attempt = asyncio.ensure_future(
                self._attempt(engine, target, username, password, client)
            )
            self._attempts[key] = attempt
            attempt.add_done_callback(functools.partial(self._attempt_done, key))
        # Shielded: a client that goes away does not cancel the check or its settling.
        return await asyncio.shield(attempt)

    def _attempt_key(self, client: str | None, username: str, password: str) -> bytes:
        parts = (client or "", username, password)
        message = "\0".join(parts).encode("utf-8", "surrogatepass")
        return hashlib.blake2b(message, key=self._key, digest_size=16).digest()

    def _attempt_done(self, key: bytes, done: asyncio.Future[Identity]) -> None:
        self._attempts.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here, whoever else awaits it

    async def _attempt(
        self, engine: Engine, target: _Target, username: str, password: str, client: str | None
    ) -> Identity:
        """One sign-in that costs a check: reserved against the counts before the check,
        settled after it (a failure stays counted; anything else is given back)."""
        keys = keys_for(username, client)
        ticket = secrets.token_hex(8)
        refusal = await self.throttle.reserve(keys, ticket)
        if refusal is not None:
            raise TooManyAttempts(refusal, username)
        try:
            identity = await self._check(engine, target, username, password)
        except AuthenticationFailed as exc:
            outcome = self._outcome(exc, target, username, password)
            exc.locked = list(await self.throttle.settle(keys, ticket, outcome))
            raise
        except BaseException:
            self._later(self.throttle.settle(keys, ticket, "uncounted"))
            raise
        # The answer does not wait for the store: one round trip per password sign-in.
        self._later(self.throttle.settle(keys, ticket, "succeeded"))
        return identity

    async def _token_failure(
        self,
        exc: AuthenticationFailed,
        target: _Target,
        username: str,
        password: str,
        client: str | None,
    ) -> None:
        """Count a wrong robot secret or token against the address (TooManyAttempts if the
        address is locked out)."""
        keys = keys_for(None, client)
        ticket = secrets.token_hex(8)
        refusal = await self.throttle.reserve(keys, ticket)
        if refusal is not None:
            raise TooManyAttempts(refusal, username) from None
        outcome = self._outcome(exc, target, username, password)
        exc.locked = list(await self.throttle.settle(keys, ticket, outcome))

    def _outcome(
        self, exc: AuthenticationFailed, target: _Target, username: str, password: str
    ) -> Outcome:
        """Whether a failure counts: not when a directory was down, nor for the same wrong
        credentials again (a client retrying a stale password makes one guess, not many)."""
        if not exc.counts:
            return "uncounted"
        stamp = f"{target.backend}:{target.stored}"
        if self._recent_failures.get("failed", username, password, stamp) is not None:
            exc.reason += " (the same wrong credentials again: not counted)"
            return "uncounted"
        self._recent_failures.put("failed", username, password, stamp)
        self._generation += 1
        return "failed"

    def _later(self, work: Awaitable[object]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _locate(self, engine: Engine, username: str, password: str) -> _Target:
        """The backend that decides for this name (the first that has it), without a check."""
        policy = engine.policy
        if username in policy.robots:
            return _Target("robot")
        if is_access_token(password):
            return _Target("token")
        user = policy.users.get(username)
        if user is not None and user.password is not None:
            return _Target("password", user.password)
        stored = self.htpasswd.get(username) if self.htpasswd is not None else None
        if stored is not None:
            return _Target("htpasswd", stored)
        if self.ldap is not None:
            return _Target("ldap")
        reason = "user has no password in the policy" if user is not None else "unknown user"
        return _Target("none", reason=reason)

    def _token(self, engine: Engine, target: _Target, username: str, password: str) -> Identity:
        """A robot's secret or a personal access token: one SHA-256, compared in constant time."""
        policy = engine.policy
        if target.backend == "robot":
            robot = policy.robots[username]
            if robot.expired(dt.date.today()):
                raise AuthenticationFailed("robot expired", username)
            if hmac.compare_digest(sha256_hex(password), robot.token_sha256):
                subject = Subject("robot", username)
                return Identity(subject, "robot", fingerprint(robot.token_sha256))
            raise AuthenticationFailed("wrong robot secret", username)
        user = policy.users.get(username)
        digest = sha256_hex(password)
        for token in user.tokens if user is not None else ():
            if hmac.compare_digest(digest, token.token_sha256):
                if token.expired(dt.date.today()):
                    raise AuthenticationFailed(
                        f"personal access token {token.name!r} expired", username
                    )
                return Identity(
                    Subject("user", username),
                    "access_token",
                    fingerprint(token.token_sha256),
                    actions=token.actions,
                    via=f"token:{token.name}",
                )
        raise AuthenticationFailed("unknown personal access token", username)

    async def _check(
        self, engine: Engine, target: _Target, username: str, password: str
    ) -> Identity:
        """The slow check (a hash or an LDAP bind; a right one is remembered for a while, see
        `_once`), or the failure of a name nobody has."""
        if target.backend in ("password", "htpasswd"):
            stamp = f"{target.backend}:{target.stored}"
            if self._recent_failures.get("failed", username, password, stamp) is not None:
                # This very hash refused these very credentials lately: no need to ask again.
                raise AuthenticationFailed("wrong password", username)
            backend = "policy" if target.backend == "password" else "htpasswd"
            if not await self._check_hash(backend, username, password, target.stored):
                suffix = "" if target.backend == "password" else " (htpasswd)"
                raise AuthenticationFailed("wrong password" + suffix, username)
            until = self.cache.expires(backend, username, password, target.stored)
            return dataclasses.replace(self._hash_identity(target, username), vouched_until=until)
        if target.backend == "ldap":
            return await self._ldap(engine, username, password)
        raise AuthenticationFailed(target.reason, username)

    @staticmethod
    def _hash_identity(target: _Target, username: str) -> Identity:
        if target.backend == "password":
            return Identity(Subject("user", username), "password", fingerprint(target.stored))
        subject = Subject("user", username, directory=True)
        return Identity(subject, "htpasswd", fingerprint(target.stored), via="htpasswd")

    async def _check_hash(self, backend: str, username: str, password: str, stored: str) -> bool:
        async def check() -> bool:
            started = time.perf_counter()
            right = await anyio.to_thread.run_sync(
                verify_password, password, stored, limiter=self._hash_threads
            )
            self.floor.checked(time.perf_counter() - started)  # the floor follows the load
            return right

        return bool(await self._once(backend, username, password, stored, check))

    async def _ldap(self, engine: Engine, username: str, password: str) -> Identity:
        assert self.ldap is not None
        ldap = self.ldap

        async def bind() -> LdapUser:
            started = time.perf_counter()
            try:
                found: LdapUser = await anyio.to_thread.run_sync(
                    ldap.authenticate, username, password, limiter=self._ldap_threads
                )
            except LdapRejected:
                self.floor.checked(time.perf_counter() - started)
                raise
            self.floor.checked(time.perf_counter() - started)  # how long the directory takes
            return found

        try:
            found: LdapUser = await self._once("ldap", username, password, "", bind)
        except LdapRejected as exc:
            raise AuthenticationFailed(f"LDAP: {exc}", username) from None
        except LdapUnavailable as exc:
            raise AuthenticationFailed(str(exc), username, counts=False) from None
        until = self.cache.expires("ldap", username, password, "")
        return dataclasses.replace(
            self._ldap_identity(engine, username, found), vouched_until=until
        )

    def _ldap_identity(self, engine: Engine, username: str, found: LdapUser) -> Identity:
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
