"""Sign registry access tokens and the gateway's own refresh tokens."""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.auth.keys import KeyStore, SigningKey
from gateway.jsontext import ascii_json

__all__ = [
    "REFRESH_KINDS",
    "IssuedToken",
    "RefreshClaims",
    "TokenError",
    "TokenIssuer",
    "rfc3339",
]

REFRESH_KINDS = ("user", "robot")
# Distribution allows 60 s of clock skew both ways; refresh tokens get the same.
LEEWAY = 60
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access", "typ"})
_DECODE_OPTIONS: jwt.types.Options = {
    # Time claims are checked against the issuer's injectable clock, not PyJWT's.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "require": ["iss", "aud", "sub", "exp", "iat"],
}


class TokenError(Exception):
    """A refresh token that is malformed, forged, expired or not a refresh token."""


@dataclass(frozen=True)
class IssuedToken:
    """A signed access token and the fields of the token endpoint's answer."""

    token: str
    expires_in: int
    issued_at: str


@dataclass(frozen=True)
class RefreshClaims:
    """What a verified refresh token says about its holder."""

    subject: str
    kind: str
    fingerprint: str | None
    issued_at: int
    via: str | None = None  # the backend: None (policy), "htpasswd" or "token:NAME"


_last_rfc3339: tuple[int, str] = (0, "1970-01-01T00:00:00Z")


def rfc3339(epoch: int) -> str:
    """Format a Unix time as RFC 3339 in UTC, e.g. `2026-11-27T13:22:38Z`."""
    global _last_rfc3339
    last, text = _last_rfc3339
    if epoch != last:  # every token of a second shares one formatting
        text = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _last_rfc3339 = (epoch, text)
    return text


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Jti:
    """Token ids unique without a system call each: a random per-process prefix and a count
    (what the registry needs of `jti` is that it never repeats; it is no secret)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_urlsafe(12)
        self._count = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class _Signer:
    """Signs access tokens with one key: a JWS compact serialisation (RFC 7515) whose header
    segment is encoded once, and the key's signature made by `cryptography` directly.

    This is what PyJWT's `encode` does, less its per-call work (header JSON and base64,
    algorithm lookup, DER re-parsing through its own wrappers): about half the cost per token,
    on the token endpoint's hottest path. Refresh tokens and every verification still go
    through PyJWT, and the tests verify these tokens with PyJWT and the real registry.
    """

    def __init__(self, key: SigningKey, header: Mapping[str, Any]) -> None:
        jose = json.dumps(
            {"alg": key.algorithm, **header}, separators=(",", ":"), sort_keys=True
        ).encode()
        self.prefix = _b64(jose) + b"."
        private = key.private_key
        if key.algorithm == "ES256" and isinstance(private, ec.EllipticCurvePrivateKey):
            ecdsa = ec.ECDSA(hashes.SHA256())

            def sign(data: bytes) -> bytes:
                # JWS wants r || s as two 32-byte big-endian integers, not DER (RFC 7518 3.4).
                r, s = decode_dss_signature(private.sign(data, ecdsa))
                return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        elif key.algorithm == "RS256" and isinstance(private, rsa.RSAPrivateKey):
            pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()

            def sign(data: bytes) -> bytes:
                return private.sign(data, pkcs1, sha256)

        else:
            raise ValueError(f"cannot sign {key.algorithm} with a {type(private).__name__}")
        self._sign = sign

    def token(self, claims: Mapping[str, Any]) -> str:
        payload = ascii_json(claims).encode()
        signing_input = self.prefix + _b64(payload)
        return (signing_input + b"." + _b64(self._sign(signing_input))).decode("ascii")


class TokenIssuer:
    """Signs tokens with the key store's newest key."""

    def __init__(
        self,
        keystore: KeyStore,
        *,
        issuer: str,
        service: str,
        ttl: int = 300,
        refresh_ttl: int = 90 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keystore = keystore
        self.issuer = issuer
        self.service = service
        self.ttl = int(ttl)
        self.refresh_ttl = int(refresh_ttl)
        # Differs from `service`, so the registry refuses a refresh token as an access token.
        self.refresh_audience = f"{service}/refresh"
        self._clock = clock
        self._signers: dict[str, _Signer] = {}
        self._jti = _Jti()

    def _now(self) -> int:
        # Distribution rejects float time claims; truncate once here.
        return int(self._clock())

    def _signer(self, key: SigningKey) -> _Signer:
        """The access-token signer for `key`, built once per key."""
        signer = self._signers.get(key.kid)
        if signer is None:
            # Both x5c (checked first by 2.8 and 3.x) and the libtrust kid (2.8 fallback).
            signer = _Signer(key, {"typ": "JWT", "kid": key.kid, "x5c": key.x5c()})
            self._signers[key.kid] = signer
        return signer

    def issue_access_token(
        self,
        subject: str,
        access: Sequence[Mapping[str, Any]],
        *,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> IssuedToken:
        """Sign a registry access token granting `access` to `subject` ("" is anonymous)."""
        clash = _RESERVED_CLAIMS.intersection(extra_claims or ())
        if clash:
            raise ValueError(f"extra_claims may not override {sorted(clash)}")
        key = self.keystore.current()
        now = self._now()
        claims: dict[str, Any] = {
            **(extra_claims or {}),
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,  # a string: Distribution 2.8 rejects a list
            "exp": now + self.ttl,
            "nbf": now,
            "iat": now,
            "jti": self._jti(),
            "access": [
                {"type": a["type"], "name": a["name"], "actions": list(a["actions"])}
                for a in access
            ],
        }
        token = self._signer(key).token(claims)
        return IssuedToken(token=token, expires_in=self.ttl, issued_at=rfc3339(now))

    def issue_refresh_token(
        self, subject: str, kind: str, *, fingerprint: str | None = None, via: str | None = None
    ) -> str:
        """Sign a long-lived refresh token identifying `subject` of `kind` (user or robot)."""
        if not subject:
            raise ValueError("a refresh token needs a subject; anonymous users get none")
        if kind not in REFRESH_KINDS:
            raise ValueError(f"kind must be one of {REFRESH_KINDS}, not {kind!r}")
        key = self.keystore.current()
        now = self._now()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.refresh_audience,
            "exp": now + self.refresh_ttl,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "typ": "refresh",
            "kind": kind,
        }
        if fingerprint is not None:
            claims["fp"] = fingerprint
        if via is not None:
            claims["via"] = via
        # No x5c: the gateway finds its own key by kid, and the token stays short.
        headers = {"typ": "JWT", "kid": key.kid}
        return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers=headers)

    def verify_refresh_token(self, token: str) -> RefreshClaims:
        """Check a refresh token signed by any key in the store and return its claims."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise TokenError("malformed token") from exc
        if not isinstance(kid, str):
            raise TokenError("token has no key id")
        key = self.keystore.find(kid)
        if key is None:
            # Another process may have rotated since our last look at the disk.
            self.keystore.reload()
            key = self.keystore.find(kid)
        if key is None:
            raise TokenError("token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key.public_key(),
                algorithms=[key.algorithm],  # from our key, never from the token
                audience=self.refresh_audience,
                issuer=self.issuer,
                options=_DECODE_OPTIONS,
            )
        except jwt.InvalidAlgorithmError as exc:
            raise TokenError("algorithm not allowed") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("bad signature") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("not a refresh token (wrong audience)") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError("wrong issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"missing claim {exc.claim!r}") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError("malformed token") from exc
        return self._refresh_claims(claims)

    def _refresh_claims(self, claims: dict[str, Any]) -> RefreshClaims:
        if claims.get("typ") != "refresh":
            raise TokenError("not a refresh token")
        exp, iat = claims["exp"], claims["iat"]
        if not (_is_int(exp) and _is_int(iat)):
            raise TokenError("malformed token")
        now = self._now()
        if now > exp + LEEWAY:
            raise TokenError("token expired")
        if iat > now + LEEWAY:
            raise TokenError("token issued in the future")
        subject, kind, fingerprint = claims["sub"], claims.get("kind"), claims.get("fp")
        if not isinstance(subject, str) or not subject:
            raise TokenError("token has no subject")
        if kind not in REFRESH_KINDS:
            raise TokenError("token has an unknown kind")
        via = claims.get("via")
        if (fingerprint is not None and not isinstance(fingerprint, str)) or (
            via is not None and not isinstance(via, str)
        ):
            raise TokenError("malformed token")
        return RefreshClaims(
            subject=subject, kind=kind, fingerprint=fingerprint, issued_at=iat, via=via
        )
