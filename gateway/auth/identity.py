"""Who is asking: policy users by password hash, robots by token, refresh tokens, or nobody.

Slow hashes run in a worker thread, never on the event loop. Every failure costs a slow
hash, so an unknown name, a user without a password and a wrong robot secret cannot be
told apart from a wrong password by timing (no user enumeration).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import anyio.to_thread
import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error

from gateway.auth.tokens import RefreshClaims
from gateway.policy.engine import Engine
from gateway.policy.model import ANONYMOUS_SUBJECT, Subject

_argon2 = PasswordHasher()
DUMMY_COST = 12  # the cost of the bcrypt hashes `hash-password` makes


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated (or anonymous) caller and how it proved who it is."""

    subject: Subject
    method: str  # anonymous | password | robot | access_token | refresh_token
    fingerprint: str | None = None  # ties refresh tokens to the credential they came from


ANONYMOUS = Identity(ANONYMOUS_SUBJECT, "anonymous")


class AuthenticationFailed(Exception):
    """Bad credentials. `reason` is for the audit log only; clients get a generic answer."""

    def __init__(self, reason: str, username: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.username = username


def fingerprint(secret_hash: str | None) -> str | None:
    """A short, one-way tag of a stored credential: changing the password revokes refresh tokens."""
    if not secret_hash:
        return None
    return hashlib.sha256(secret_hash.encode()).hexdigest()[:16]


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


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


class Authenticator:
    """Resolves credentials against one policy engine snapshot."""

    def __init__(self) -> None:
        # A real hash of a random secret: failures verify against it to cost a real check.
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(DUMMY_COST)).decode()

    async def _slow_failure(self, reason: str, username: str) -> AuthenticationFailed:
        await anyio.to_thread.run_sync(verify_password, "not-the-password", self._dummy)
        return AuthenticationFailed(reason, username)

    async def password(self, engine: Engine, username: str, password: str) -> Identity:
        """Authenticate HTTP Basic or OAuth2 password credentials; AuthenticationFailed if wrong."""
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
        if user is None:
            raise await self._slow_failure("unknown user", username)
        if user.password is None:
            raise await self._slow_failure("user has no password in the policy", username)
        ok = await anyio.to_thread.run_sync(verify_password, password, user.password)
        if not ok:
            raise AuthenticationFailed("wrong password", username)
        return Identity(Subject("user", username), "password", fingerprint(user.password))

    def refresh(self, engine: Engine, claims: RefreshClaims) -> Identity:
        """The identity behind a verified refresh token, if its owner and credential still stand."""
        policy = engine.policy
        if claims.kind == "robot":
            robot = policy.robots.get(claims.subject)
            if robot is None or robot.expired(dt.date.today()):
                raise AuthenticationFailed(
                    "refresh token of a robot no longer in the policy", claims.subject
                )
            current = fingerprint(robot.token_sha256)
        else:
            user = policy.users.get(claims.subject)
            if user is None:
                raise AuthenticationFailed(
                    "refresh token of a user no longer in the policy", claims.subject
                )
            current = fingerprint(user.password)
        if claims.fingerprint is not None and not hmac.compare_digest(
            claims.fingerprint, current or ""
        ):
            raise AuthenticationFailed("refresh token of a changed credential", claims.subject)
        return Identity(Subject(claims.kind, claims.subject), "refresh_token", claims.fingerprint)
