"""People signing in through the organisation's OpenID provider (the `oidc_*` settings).

Authlib makes the authorization code flow's requests (the authorization URL with PKCE S256,
state and nonce; the code exchange and the refresh grant with the client's secret); the ID
token is verified by the one verifier every issuer goes through (gateway/auth/oidc.py), with
the client id as its audience and the nonce of this sign-in. Groups are read from the ID
token and from the userinfo endpoint (some providers put them only there), filtered by
`oidc_group_filter`. What comes out is a `Person`: a name, groups, and until when the
provider vouches for them.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client

from gateway.auth.oidc import FETCH_TIMEOUT, OidcRefused, Verifier
from gateway.config import ConfigError, Settings

MAX_GROUPS = 1000
MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class Person:
    """Who the provider says signed in."""

    name: str
    groups: frozenset[str]
    expires: float  # the ID token's exp (epoch seconds)
    subject: str  # the provider's `sub`
    refresh_token: str | None = None
    admin: bool = False  # a member of `oidc_admin_group`


class People:
    """The provider people sign in with (see the module's text)."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str,
        scopes: str,
        redirect_uri: str,
        username_claim: str,
        groups_claim: str,
        group_filter: str | None = None,
        admin_group: str | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self.scopes = scopes
        self.redirect_uri = redirect_uri
        self.username_claim = username_claim
        self.groups_claim = groups_claim
        self.group_filter = re.compile(group_filter) if group_filter else None
        self.admin_group = admin_group
        self.verifier = verifier or Verifier([self.issuer])

    @classmethod
    def from_settings(cls, settings: Settings) -> People | None:
        """None when no provider is set; ConfigError when one is set but incomplete."""
        if not settings.oidc_issuer:
            return None
        secret = settings.oidc_client_secret.reveal() if settings.oidc_client_secret else ""
        if settings.oidc_client_secret_file is not None:
            try:
                secret = Path(settings.oidc_client_secret_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"setting oidc_client_secret_file: cannot read "
                    f"{settings.oidc_client_secret_file} ({exc.strerror})"
                ) from None
        if not settings.oidc_client_id or not secret:
            raise ConfigError(
                "setting oidc_issuer needs oidc_client_id and oidc_client_secret (or "
                "oidc_client_secret_file): register the gateway as a confidential client"
            )
        if settings.oidc_group_filter:
            try:
                re.compile(settings.oidc_group_filter)
            except re.error as exc:
                raise ConfigError(
                    f"setting oidc_group_filter is not a regular expression ({exc})"
                ) from None
        try:
            verifier = Verifier([settings.oidc_issuer])
        except ValueError as exc:
            raise ConfigError(f"setting oidc_issuer: {exc}") from None
        return cls(
            issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id,
            client_secret=secret,
            scopes=settings.oidc_scopes,
            redirect_uri=settings.public_url + settings.oidc_redirect_path,
            username_claim=settings.oidc_username_claim,
            groups_claim=settings.oidc_groups_claim,
            group_filter=settings.oidc_group_filter,
            admin_group=settings.oidc_admin_group,
            verifier=verifier,
        )

    def _client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self._secret,
            scope=self.scopes,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            timeout=FETCH_TIMEOUT,
        )

    async def authorization_url(self, state: str, nonce: str, code_verifier: str) -> str:
        """Where to send the browser: the provider's authorization endpoint with PKCE."""
        metadata = await self.verifier.metadata(self.issuer)
        extra = {}
        if "offline_access" in self.scopes.split():
            # OpenID Connect Core 11: a refresh token for offline access needs prompt=consent.
            extra["prompt"] = "consent"
        async with self._client() as client:
            url, _ = client.create_authorization_url(
                metadata["authorization_endpoint"],
                state=state,
                code_verifier=code_verifier,
                nonce=nonce,
                **extra,
            )
        return str(url)

    async def sign_in(self, code: str, code_verifier: str, nonce: str) -> Person:
        """Exchange the code, verify the ID token (and its nonce), read the groups."""
        metadata = await self.verifier.metadata(self.issuer)
        async with self._client() as client:
            try:
                token = await client.fetch_token(
                    metadata["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=code_verifier,
                )
            except Exception as exc:  # Authlib's OAuthError, httpx errors: the same refusal
                raise OidcRefused(
                    f"the provider did not exchange the code ({_why(exc)})", self.issuer
                ) from None
            return await self._person(client, metadata, token, nonce)

    async def refresh(self, refresh_token: str) -> Person:
        """The person as the provider sees them now (OidcRefused when it says no more)."""
        metadata = await self.verifier.metadata(self.issuer)
        async with self._client() as client:
            try:
                token = await client.refresh_token(
                    metadata["token_endpoint"], refresh_token=refresh_token
                )
            except Exception as exc:
                raise OidcRefused(
                    f"the provider refused the refresh ({_why(exc)})", self.issuer
                ) from None
            person = await self._person(client, metadata, token, None)
        if person.refresh_token is None:  # providers that do not rotate send none back
            return Person(
                person.name,
                person.groups,
                person.expires,
                person.subject,
                refresh_token,
                person.admin,
            )
        return person

    async def _person(
        self,
        client: AsyncOAuth2Client,
        metadata: dict[str, Any],
        token: dict[str, Any],
        nonce: str | None,
    ) -> Person:
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise OidcRefused("the provider sent no ID token (is openid in oidc_scopes?)")
        verified = await self.verifier.verify(id_token, audience=self.client_id)
        claims = dict(verified.claims)
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got, nonce):
                raise OidcRefused("the ID token's nonce is not this sign-in's", verified.issuer)
        userinfo = metadata.get("userinfo_endpoint")
        if isinstance(userinfo, str) and token.get("access_token"):
            try:
                answer = await client.get(userinfo)
                extra = answer.json() if answer.status_code == 200 else {}
            except (httpx.HTTPError, ValueError):
                extra = {}
            if isinstance(extra, dict) and extra.get("sub") == verified.subject:
                for key, value in extra.items():
                    claims.setdefault(key, value)
                if self.groups_claim in extra:  # the endpoint's list is the current one
                    claims[self.groups_claim] = extra[self.groups_claim]
        name = claims.get(self.username_claim)
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise OidcRefused(
                f"the provider's answer has no usable {self.username_claim} claim",
                verified.issuer,
                verified.subject,
            )
        raw = claims.get(self.groups_claim) or []
        groups = (
            [g for g in raw if isinstance(g, str)][:MAX_GROUPS] if isinstance(raw, list) else []
        )
        admin = self.admin_group is not None and self.admin_group in groups
        if self.group_filter is not None:
            groups = [g for g in groups if self.group_filter.fullmatch(g)]
        refresh = token.get("refresh_token")
        return Person(
            name,
            frozenset(groups),
            verified.expires,
            verified.subject,
            refresh if isinstance(refresh, str) else None,
            admin,
        )


def _why(exc: Exception) -> str:
    """A short cause without the request's secrets (Authlib's errors carry the provider's)."""
    error = getattr(exc, "error", None)
    return str(error)[:100] if error else type(exc).__name__


__all__ = ["People", "Person"]
