"""Signed session cookies for the UI: who signed in, with which credential, and a CSRF token.

The cookie holds no password, only the subject, its directory groups, a fingerprint of the
stored credential, a random session id and a random CSRF token, signed with a key every
replica derives alike and bound to the gateway's service (a cookie one service minted does not
verify for another). Each request re-checks the subject against the live policy: a user
removed from the policy, or whose password changed, is signed out on their next click; and
against the revoked session ids: signing out revokes the session's id until the cookie would
have expired (in Redis, for every replica, when `redis_url` is set; else in this process).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from itsdangerous import BadSignature, URLSafeTimedSerializer
from redis.exceptions import RedisError
from starlette.responses import Response

from gateway.auth.identity import fingerprint
from gateway.auth.keys import KeyStore
from gateway.config import Settings
from gateway.policy.engine import Engine
from gateway.policy.model import ANONYMOUS_SUBJECT, Subject

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("registry_gateway.ui")

COOKIE = "rg_session"
LIFETIME = 12 * 3600  # seconds a sign-in lasts
_CONTEXT = b"registry-gateway ui session v1"
# A revocation outlives the cookie's own expiry by this much: replicas' clocks may differ.
CLOCK_SLACK = 300.0
MAX_REVOKED = 100_000  # sign-outs remembered in memory at most (the oldest go first)


@dataclass(frozen=True, slots=True)
class Session:
    """What the cookie says: a subject (anonymous before sign-in) and the form token."""

    csrf: str
    subject: Subject = ANONYMOUS_SUBJECT
    credential: str | None = None  # fingerprint of the credential used to sign in
    via: str | None = None  # which credential: None (policy password, robot secret),
    # "token:NAME" (personal access token), "htpasswd" or "ldap" (a directory)
    sid: str | None = None  # a signed-in session's random id: what signing out revokes
    issued: float | None = field(default=None, compare=False)  # when the cookie was signed
    fresh: bool = field(default=False, compare=False)  # made for this request: set the cookie
    # An OIDC sign-in: it ends when the ID token does (epoch seconds); the provider's refresh
    # token, encrypted (for the CLI secrets made in this session); a member of the admin group.
    expires: float | None = field(default=None, compare=False)
    refresh: str | None = field(default=None, compare=False)
    oidc_admin: bool = field(default=False, compare=False)

    @property
    def signed_in(self) -> bool:
        return self.subject.kind != "anonymous"

    def remaining(self, now: float | None = None) -> float:
        """Seconds until the cookie expires by itself (LIFETIME for one not yet sent)."""
        now = time.time() if now is None else now
        left = float(LIFETIME) if self.issued is None else self.issued + LIFETIME - now
        if self.expires is not None:
            left = min(left, self.expires - now)
        return max(0.0, left)


def new_session(
    subject: Subject = ANONYMOUS_SUBJECT,
    credential: str | None = None,
    via: str | None = None,
    *,
    expires: float | None = None,
    refresh: str | None = None,
    oidc_admin: bool = False,
) -> Session:
    sid = secrets.token_urlsafe(18) if subject.kind != "anonymous" else None
    return Session(
        secrets.token_urlsafe(24),
        subject,
        credential,
        via,
        sid,
        fresh=True,
        expires=expires,
        refresh=refresh,
        oidc_admin=oidc_admin,
    )


def is_directory(subject: Subject) -> bool:
    """Whether a directory backend (htpasswd, LDAP) signed this subject in."""
    return bool(getattr(subject, "directory", False))


def _with(
    subject: Subject, groups: frozenset[str], directory: bool, oidc: frozenset[str] = frozenset()
) -> Subject:
    return dataclasses.replace(
        subject, groups=groups, directory=directory or subject.directory, oidc_groups=oidc
    )


def derive_secret(keys: KeyStore) -> bytes:
    """A cookie key derived from the oldest signing key: replicas sharing the key dir agree."""
    oldest = keys.keys()[0]
    der = oldest.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return hmac.new(der, _CONTEXT, hashlib.sha256).digest()


class SessionCodec:
    """Reads and writes the session cookie of one service."""

    def __init__(self, secret: bytes, *, secure: bool, service: str) -> None:
        # The service is part of the signature: gateways of other services that share the key
        # directory (or session_secret) refuse this one's cookies.
        self._serializer = URLSafeTimedSerializer(secret, salt=f"ui-session\0{service}")
        self.secure = secure
        key = hmac.new(secret, b"ui-session sealed\0" + service.encode(), hashlib.sha256)
        self._box = Fernet(base64.urlsafe_b64encode(key.digest()))

    def seal(self, text: str) -> str:
        """`text` encrypted for this service's cookies (a provider's refresh token)."""
        return self._box.encrypt(text.encode()).decode()

    def unseal(self, sealed: str | None, ttl: int | None = None) -> str | None:
        """What `seal` encrypted (no older than `ttl` seconds), or None."""
        if not sealed:
            return None
        try:
            return self._box.decrypt(sealed.encode(), ttl=ttl).decode()
        except InvalidToken:
            return None

    def dumps(self, session: Session) -> str:
        data: dict[str, object] = {"c": session.csrf}
        if session.signed_in:
            data.update(
                s=str(session.subject),
                g=sorted(session.subject.groups),
                f=session.credential,
                v=session.via,
                d=is_directory(session.subject),
                i=session.sid,
            )
            if session.via == "oidc":
                data.update(
                    o=sorted(session.subject.oidc_groups),
                    e=session.expires,
                    r=session.refresh,
                    a=session.oidc_admin,
                )
        return self._serializer.dumps(data)

    def loads(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None when it is missing, forged, expired or for another
        service (or a signed-in one without a session id)."""
        if not cookie:
            return None
        try:
            data, signed = self._serializer.loads(cookie, max_age=LIFETIME, return_timestamp=True)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        issued = signed.timestamp() if isinstance(signed, dt.datetime) else None
        if "s" not in data:
            return Session(data["c"], issued=issued)
        sid = data.get("i")
        if not isinstance(sid, str) or not sid:
            return None
        try:
            subject = Subject.parse(str(data["s"]))
        except ValueError:
            return None
        groups = frozenset(str(g) for g in data.get("g") or ())
        credential = data.get("f") if isinstance(data.get("f"), str) else None
        via = data.get("v") if isinstance(data.get("v"), str) else None
        expires = data.get("e") if isinstance(data.get("e"), (int, float)) else None
        if via == "oidc" and (expires is None or expires <= time.time()):
            return None  # an OIDC sign-in ends when the provider's ID token does
        oidc = frozenset(str(g) for g in data.get("o") or ())
        subject = _with(subject, groups, bool(data.get("d")), oidc)
        refresh = data.get("r") if isinstance(data.get("r"), str) else None
        return Session(
            data["c"],
            subject,
            credential,
            via,
            sid,
            issued,
            expires=expires,
            refresh=refresh,
            oidc_admin=bool(data.get("a")),
        )

    def set_cookie(self, response: Response, session: Session) -> None:
        """Put the session on the answer as its cookie."""
        response.set_cookie(
            COOKIE,
            self.dumps(session),
            max_age=LIFETIME,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )

    def clear_cookie(self, response: Response) -> None:
        """Tell the browser to drop the session cookie."""
        response.delete_cookie(COOKIE, path="/", secure=self.secure, httponly=True, samesite="lax")


def still_valid(
    engine: Engine, subject: Subject, credential: str | None, via: str | None = None
) -> bool:
    """Whether a signed-in subject still stands in the live policy with the same credential.

    Directory sign-ins (htpasswd, LDAP) have no credential in the policy to compare with: they
    last as long as the engine still counts the subject as signed in, at most LIFETIME.
    """
    policy = engine.policy
    if subject.kind == "user":
        user = policy.users.get(subject.name)
        if is_directory(subject) or via in ("htpasswd", "ldap", "oidc"):
            return subject.name not in policy.robots and engine.known(subject)
        if user is None:
            return False
        stored = user.password
        if via is not None and via.startswith("token:"):
            name = via.removeprefix("token:")
            tokens = getattr(user, "tokens", ())
            token = next((t for t in tokens if t.name == name), None)
            if token is None or (token.expires is not None and dt.date.today() > token.expires):
                return False
            stored = token.token_sha256
    elif subject.kind == "robot":
        robot = policy.robots.get(subject.name)
        if robot is None or robot.expired(dt.date.today()):
            return False
        stored = robot.token_sha256
    else:
        return False
    if stored is None or credential is None:
        return credential is None
    return hmac.compare_digest(fingerprint(stored) or "", credential)


def csrf_matches(session: Session | None, submitted: object) -> bool:
    """The double-submit check: the form's token equals the one in the signed cookie."""
    if session is None or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())


# -- signed out: revoked session ids ----------------------------------------------------------


class Revocations(Protocol):
    """Session ids signed out before their cookie expires."""

    async def revoke(self, sid: str, ttl: float) -> None: ...

    async def revoked(self, sid: str) -> bool: ...


class MemoryRevocations:
    """Revoked ids in this process only: other workers and replicas do not see them."""

    def __init__(self, size: int = MAX_REVOKED) -> None:
        self.size = size
        self._until: OrderedDict[str, float] = OrderedDict()  # sid -> when it may be forgotten

    async def revoke(self, sid: str, ttl: float) -> None:
        self.add(sid, ttl)

    def add(self, sid: str, ttl: float) -> None:
        now = time.time()
        until = self._until
        until[sid] = now + ttl + CLOCK_SLACK
        until.move_to_end(sid)
        # The oldest first: beyond the size, or expired (O(1) a call: no scan of the rest).
        while until and (len(until) > self.size or next(iter(until.values())) <= now):
            until.popitem(last=False)

    async def revoked(self, sid: str) -> bool:
        return self.known(sid)

    def known(self, sid: str) -> bool:
        expiry = self._until.get(sid)
        return expiry is not None and expiry > time.time()

    def __len__(self) -> int:
        return len(self._until)


class RedisRevocations:
    """Revoked ids in Redis, seen by every replica, each key expiring with its cookie.

    If Redis cannot be reached, a sign-out is still recorded in this process and a check
    falls back to this process's record (the error is logged): an outage of Redis must not
    sign everyone out, so meanwhile other replicas may accept a cookie signed out here.
    """

    LOG_EVERY = 60.0  # seconds between two "Redis unreachable" lines

    def __init__(self, client: aioredis.Redis[bytes], prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.local = MemoryRevocations()
        self._logged = -math.inf

    async def revoke(self, sid: str, ttl: float) -> None:
        self.local.add(sid, ttl)
        try:
            await self.client.set(self.prefix + sid, b"1", ex=max(1, math.ceil(ttl + CLOCK_SLACK)))
        except (RedisError, OSError) as exc:
            self._unreachable(exc, "recorded in this process only")

    async def revoked(self, sid: str) -> bool:
        if self.local.known(sid):
            return True
        try:
            return bool(await self.client.exists(self.prefix + sid))
        except (RedisError, OSError) as exc:
            self._unreachable(exc, "checking this process's sign-outs only")
            return False

    def _unreachable(self, exc: RedisError | OSError, what: str) -> None:
        now = time.monotonic()
        if now - self._logged >= self.LOG_EVERY:
            self._logged = now
            log.error(
                "session store unreachable (%s); sign-outs %s",
                type(exc).__name__,
                what,
                extra={"event": "session_store_down"},
            )


def revocations_for(settings: Settings) -> Revocations:
    """Redis when `redis_url` is set (every replica), else this process's memory."""
    if not settings.redis_url:
        return MemoryRevocations()
    import redis.asyncio as aioredis

    try:
        client = aioredis.from_url(
            settings.redis_url.reveal(), socket_timeout=0.5, socket_connect_timeout=0.5
        )
    except ValueError:  # its message may quote the URL, and so part of a password
        log.error(
            "setting redis_url is not a valid Redis URL; sign-outs are kept in this process only",
            extra={"event": "session_store_down"},
        )
        return MemoryRevocations()
    return RedisRevocations(client, f"registry-gateway:{settings.service}:signed-out:")
