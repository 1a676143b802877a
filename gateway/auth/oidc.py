"""OIDC ID tokens verified against their issuer's published keys: one verifier for every
issuer, a CI system's (GitHub Actions, GitLab CI) and the people's identity provider alike.

A token is checked in this order, cheapest first, and refused with `OidcRefused` (a message
a client may read, naming the issuer and subject, never the token):

1. its shape and size, and its header's `alg`: RS256 or ES256 only (never `none`, never an
   HMAC, whatever the key says);
2. its issuer: one of the issuers this verifier was given (the gateway fetches keys from
   no other place, whatever a token claims);
3. its signature, with the key its `kid` names in the issuer's JWKS (found through the
   issuer's discovery document); an unknown `kid` makes one fetch of the keys, at most one
   per issuer per `REFETCH_SECONDS` whatever the load, so forged `kid`s cannot make a storm;
4. `iss`, `aud` (when an audience is asked for), `exp`, `nbf` and `iat`, with `LEEWAY`
   seconds for clocks; `exp`, `iat`, `iss`, `sub` and `aud` must be there.

The keys are kept in memory per issuer; PyJWT does the cryptography, httpx the fetching.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from jwt import PyJWK
from jwt.types import Options

ALGORITHMS = ("RS256", "ES256")
LEEWAY = 60  # seconds either way, as the registry allows its own tokens
REFETCH_SECONDS = 30.0  # at most one fetch of an issuer's keys this often
MAX_TOKEN_BYTES = 16 * 1024
MAX_DOCUMENT_BYTES = 512 * 1024  # a discovery document or a JWKS
FETCH_TIMEOUT = 5.0
REQUIRED_CLAIMS = ("exp", "iat", "iss", "sub", "aud")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

log = logging.getLogger("registry_gateway.oidc")


class OidcRefused(Exception):
    """An ID token that does not verify. `message` may be shown to the client; `issuer` and
    `subject` are as the token claims them (unverified when the check failed before)."""

    def __init__(self, message: str, issuer: str = "", subject: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.issuer = issuer
        self.subject = subject


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """An ID token whose signature and times hold: who issued it, for whom, about whom."""

    issuer: str
    subject: str
    audience: Any  # a string or a list of strings, as the token has it
    claims: dict[str, Any]
    expires: float  # the `exp` claim (epoch seconds)


def secure_issuer(url: str) -> bool:
    """Whether keys may be fetched from this issuer: https, or http on the loopback (tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname in _LOOPBACK


@dataclass(slots=True)
class _Issuer:
    """What is known of one issuer: its discovery document, its keys, when they were read."""

    url: str
    metadata: dict[str, Any] = field(default_factory=dict)
    keys: dict[tuple[str, str], PyJWK] = field(default_factory=dict)  # (kid, alg) -> key
    fetched: float = float("-inf")  # monotonic time of the last fetch (tried)
    fetches: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Verifier:
    """Verifies ID tokens of a fixed set of issuers (see the module's text)."""

    def __init__(
        self,
        issuers: Iterable[str],
        *,
        client: httpx.AsyncClient | None = None,
        refetch_seconds: float = REFETCH_SECONDS,
        leeway: int = LEEWAY,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuers = {url.rstrip("/"): _Issuer(url.rstrip("/")) for url in issuers}
        for url in self._issuers:
            if not secure_issuer(url):
                raise ValueError(f"issuer {url!r} must be an https:// URL")
        self._client = client
        self.refetch_seconds = refetch_seconds
        self.leeway = leeway
        self.monotonic = monotonic

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._issuers)

    def fetches(self, issuer: str) -> int:
        """How many times this issuer's keys were fetched (for tests and benchmarks)."""
        found = self._issuers.get(issuer.rstrip("/"))
        return found.fetches if found is not None else 0

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=FETCH_TIMEOUT,
                follow_redirects=False,
                headers={"accept": "application/json"},
            )
        return self._client

    # -- verification --------------------------------------------------------------------

    async def verify(
        self, token: str, *, audience: str | Collection[str] | None = None
    ) -> VerifiedToken:
        """The verified token, or OidcRefused. Without `audience`, `aud` must be there but
        the caller decides whom it must name (CI workloads each name their own)."""
        header, payload = _unverified(token)
        claimed_iss, claimed_sub = payload.get("iss"), payload.get("sub")
        issuer = claimed_iss[:300] if isinstance(claimed_iss, str) else ""
        subject = claimed_sub[:300] if isinstance(claimed_sub, str) else ""

        def refuse(why: str) -> OidcRefused:
            return OidcRefused(why, issuer, subject)

        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise refuse(
                f"the token's algorithm {str(alg)[:20]!r} is not accepted (only "
                f"{', '.join(ALGORITHMS)})"
            )
        known = self._issuers.get(issuer.rstrip("/")) if issuer else None
        if known is None:
            raise refuse(f"issuer {issuer!r} is not trusted by this gateway")
        kid = header.get("kid", "")
        if not isinstance(kid, str) or len(kid) > 200:
            raise refuse("the token's kid is not a short string")
        key = await self._key(known, kid, str(alg))
        if key is None:
            raise refuse(
                f"no key {kid!r} for {alg} among the issuer's published keys (fetched at most "
                f"every {self.refetch_seconds:.0f} s)"
            )
        options: Options = {"require": list(REQUIRED_CLAIMS), "verify_aud": audience is not None}
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[str(alg)],
                audience=audience,
                issuer=issuer,
                leeway=self.leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise refuse("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise refuse("the token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise refuse("the token is for another audience (aud)") from None
        except jwt.InvalidSignatureError:
            raise refuse("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise refuse(f"the token lacks the {exc.claim} claim") from None
        except jwt.InvalidTokenError as exc:
            raise refuse(f"the token is invalid ({type(exc).__name__})") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise refuse("the token's sub is not a string")
        return VerifiedToken(issuer, claims["sub"], claims.get("aud"), claims, float(claims["exp"]))

    async def _key(self, issuer: _Issuer, kid: str, alg: str) -> PyJWK | None:
        key = _pick(issuer.keys, kid, alg)
        if key is not None:
            return key
        if self.monotonic() - issuer.fetched < self.refetch_seconds:
            return None  # fetched lately: an unknown kid waits for the next allowed fetch
        await self._refresh(issuer)
        return _pick(issuer.keys, kid, alg)

    # -- fetching ------------------------------------------------------------------------

    async def metadata(self, issuer: str) -> dict[str, Any]:
        """The issuer's discovery document (fetched with its keys when not known yet);
        OidcRefused when it cannot be had."""
        known = self._issuers.get(issuer.rstrip("/"))
        if known is None:
            raise OidcRefused(f"issuer {issuer!r} is not trusted by this gateway", issuer)
        if not known.metadata:
            await self._refresh(known)
        if not known.metadata:
            raise OidcRefused(f"the discovery document of {issuer} could not be read", issuer)
        return known.metadata

    async def _refresh(self, issuer: _Issuer) -> None:
        """Fetch the discovery document and the keys, once for every caller waiting, and at
        most once per `refetch_seconds` (a failure counts too: no storm on a down issuer)."""
        started = self.monotonic()
        async with issuer.lock:
            if issuer.fetched >= started or started - issuer.fetched < self.refetch_seconds:
                return  # another caller fetched while this one waited, or lately
            issuer.fetched = self.monotonic()
            issuer.fetches += 1
            try:
                metadata = await self._document(f"{issuer.url}/.well-known/openid-configuration")
                if metadata.get("issuer", "").rstrip("/") != issuer.url:
                    raise ValueError("its discovery document names another issuer")
                jwks_uri = metadata.get("jwks_uri")
                if not isinstance(jwks_uri, str) or not _same_trust(jwks_uri, issuer.url):
                    raise ValueError("its jwks_uri is missing or not https")
                keys = _keys(await self._document(jwks_uri))
            except (httpx.HTTPError, ValueError) as exc:
                log.warning(
                    "OIDC issuer %s: keys not fetched (%s); the ones known stay in use",
                    issuer.url,
                    str(exc)[:200],
                    extra={"event": "oidc_keys_failed", "issuer": issuer.url},
                )
                return
            issuer.metadata = metadata
            issuer.keys = keys
            log.info(
                "OIDC issuer %s: %d signing keys",
                issuer.url,
                len(keys),
                extra={"event": "oidc_keys_fetched", "issuer": issuer.url},
            )

    async def _document(self, url: str) -> dict[str, Any]:
        async with self._http().stream("GET", url) as response:
            if response.status_code != 200:
                raise ValueError(f"GET {url} answered {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"GET {url}: more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            found = json.loads(body)
        except ValueError:
            raise ValueError(f"GET {url}: not JSON") from None
        if not isinstance(found, dict):
            raise ValueError(f"GET {url}: not a JSON object")
        return found


def _same_trust(url: str, issuer: str) -> bool:
    """A JWKS over https, or over http only for an http issuer on the loopback (tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    return urlsplit(issuer).scheme == "http" and parts.hostname in _LOOPBACK


def _keys(jwks: dict[str, Any]) -> dict[tuple[str, str], PyJWK]:
    """The signing keys of a JWKS usable with an accepted algorithm, by (kid, alg)."""
    found: dict[tuple[str, str], PyJWK] = {}
    for jwk in jwks.get("keys", []) if isinstance(jwks.get("keys"), list) else []:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid", "")
        if not isinstance(kid, str):
            continue
        stated = jwk.get("alg")
        for alg, fits in _FITS.items():
            if (stated is not None and stated != alg) or not fits(jwk):
                continue
            try:
                found[kid, alg] = PyJWK(jwk, algorithm=alg)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
                continue  # a key of another type (RSA for ES256, P-384, ...)
    return found


_FITS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "RS256": lambda jwk: jwk.get("kty") == "RSA",
    "ES256": lambda jwk: jwk.get("kty") == "EC" and jwk.get("crv") == "P-256",
}


def _pick(keys: dict[tuple[str, str], PyJWK], kid: str, alg: str) -> PyJWK | None:
    key = keys.get((kid, alg))
    if key is None and not kid:  # no kid: only when the issuer has one key for the algorithm
        usable = [k for (_, a), k in keys.items() if a == alg]
        key = usable[0] if len(usable) == 1 else None
    return key


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and payload as written (nothing checked yet), or OidcRefused."""
    if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise OidcRefused("not a JWT (three base64url parts joined by dots)")
    head, body, _ = token.split(".")
    try:
        header = json.loads(_b64(head))
        payload = json.loads(_b64(body))
    except ValueError:
        raise OidcRefused("not a JWT (its header or payload is not base64url JSON)") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise OidcRefused("not a JWT (its header or payload is not a JSON object)")
    return header, payload


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def looks_like_jwt(text: str) -> bool:
    """Whether a password is shaped like a JWT (a JSON header, three parts): cheap, no parse."""
    return text.startswith("eyJ") and text.count(".") == 2 and len(text) <= MAX_TOKEN_BYTES


__all__ = [
    "ALGORITHMS",
    "LEEWAY",
    "REFETCH_SECONDS",
    "OidcRefused",
    "VerifiedToken",
    "Verifier",
    "looks_like_jwt",
    "secure_issuer",
]
