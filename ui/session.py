"""Signed session cookies for the UI: who signed in, with which credential, and a CSRF token.

The cookie holds no password, only the subject, its directory groups, a fingerprint of the
stored credential and a random CSRF token, signed with a key every replica derives alike.
Each request re-checks the subject against the live policy: a user removed from the policy,
or whose password changed, is signed out on their next click.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import Response

from gateway.auth.identity import fingerprint
from gateway.auth.keys import KeyStore
from gateway.policy.engine import Engine
from gateway.policy.model import ANONYMOUS_SUBJECT, Subject

COOKIE = "rg_session"
LIFETIME = 12 * 3600  # seconds a sign-in lasts
_CONTEXT = b"registry-gateway ui session v1"


@dataclass(frozen=True, slots=True)
class Session:
    """What the cookie says: a subject (anonymous before sign-in) and the form token."""

    csrf: str
    subject: Subject = ANONYMOUS_SUBJECT
    credential: str | None = None  # fingerprint of the credential used to sign in
    via: str | None = None  # which credential: None (policy password, robot secret),
    # "token:NAME" (personal access token), "htpasswd" or "ldap" (a directory)
    fresh: bool = field(default=False, compare=False)  # made for this request: set the cookie

    @property
    def signed_in(self) -> bool:
        return self.subject.kind != "anonymous"


def new_session(
    subject: Subject = ANONYMOUS_SUBJECT, credential: str | None = None, via: str | None = None
) -> Session:
    return Session(secrets.token_urlsafe(24), subject, credential, via, fresh=True)


def is_directory(subject: Subject) -> bool:
    """Whether a directory backend (htpasswd, LDAP) signed this subject in."""
    return bool(getattr(subject, "directory", False))


def _with(subject: Subject, groups: frozenset[str], directory: bool) -> Subject:
    return dataclasses.replace(subject, groups=groups, directory=directory or subject.directory)


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
    """Reads and writes the session cookie."""

    def __init__(self, secret: bytes, *, secure: bool) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="ui-session")
        self.secure = secure

    def dumps(self, session: Session) -> str:
        data: dict[str, object] = {"c": session.csrf}
        if session.signed_in:
            data.update(
                s=str(session.subject),
                g=sorted(session.subject.groups),
                f=session.credential,
                v=session.via,
                d=is_directory(session.subject),
            )
        return self._serializer.dumps(data)

    def loads(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None when it is missing, forged or expired."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=LIFETIME)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        if "s" not in data:
            return Session(data["c"])
        try:
            subject = Subject.parse(str(data["s"]))
        except ValueError:
            return None
        groups = frozenset(str(g) for g in data.get("g") or ())
        credential = data.get("f") if isinstance(data.get("f"), str) else None
        via = data.get("v") if isinstance(data.get("v"), str) else None
        subject = _with(subject, groups, bool(data.get("d")))
        return Session(data["c"], subject, credential, via)

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
        if is_directory(subject) or via in ("htpasswd", "ldap"):
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
