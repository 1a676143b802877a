"""A client for the registry's API (distribution v2), with tokens the gateway mints for itself.

Every URL is built from names checked against distribution's grammar (repository names, tags,
digests): a name from a notification or a registry answer can never reach another path.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, TypeGuard
from urllib.parse import parse_qs, urlsplit

import httpx

from gateway import __version__
from gateway.auth.tokens import TokenIssuer
from gateway.policy.patterns import is_repository_name

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
CATALOG_SUBJECT = "registry-gateway-catalog"
# What the registry's access log shows for the index's requests.
USER_AGENT = f"registry-gateway/{__version__} (catalog)"
TOKEN_REUSE = 60.0  # seconds one token of ours is sent again (at most half its lifetime)
TOKENS_KEPT = 4096  # tokens kept for reuse, one per repository read lately
# Distribution's reference grammar: a tag, and a digest (`algorithm:encoded`).
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,256}")


class RegistryError(RuntimeError):
    """The registry did not answer as expected; the message says what was asked."""


class ManifestUnreadable(RegistryError):
    """One manifest the registry serves is not a JSON object: a fault of that manifest, not
    of the registry, so a pass over the registry leaves its tag out and goes on."""


def is_tag(text: object) -> TypeGuard[str]:
    return isinstance(text, str) and TAG.fullmatch(text) is not None


def is_digest(text: object) -> TypeGuard[str]:
    return isinstance(text, str) and DIGEST.fullmatch(text) is not None


def _repository(name: str) -> str:
    """`name`, once it is known to be a repository name; RegistryError otherwise."""
    if not is_repository_name(name):
        raise RegistryError(f"refused: {name[:300]!r} is not a repository name")
    return name


def _reference(reference: str) -> str:
    if not (is_tag(reference) or is_digest(reference)):
        raise RegistryError(f"refused: {reference[:300]!r} is not a tag or a digest")
    return reference


class RegistryClient:
    """Reads the catalog, tags, manifests and image configs from the registry.

    `requests` counts what was asked, by kind (`catalog` and `tags` pages, manifest `head`s,
    `manifest` and `blob` reads): the index's progress and the benchmarks read it.
    """

    def __init__(
        self,
        url: str,
        issuer: TokenIssuer,
        *,
        page: int = 1000,
        timeout: float = 10.0,
        connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.issuer = issuer
        self.page = page
        self.requests: Counter[str] = Counter()
        # Tokens are signed once per repository and reused a while, not once per request.
        self._tokens: dict[str, tuple[str, float, dict[str, str]]] = {}
        self._token_reuse = min(TOKEN_REUSE, issuer.ttl / 2)
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            limits=limits,
            headers={"User-Agent": USER_AGENT},
            transport=transport,  # tests: a fake registry
        )

    async def close(self) -> None:
        await self.http.aclose()

    def _auth(self, name: str, access: dict[str, Any]) -> dict[str, str]:
        """`Authorization` for `access`, a token signed lately with the current key if any."""
        kid = self.issuer.keystore.current().kid
        now = time.monotonic()
        kept = self._tokens.get(name)
        if kept is not None and kept[0] == kid and kept[1] > now:
            return kept[2]
        token = self.issuer.issue_access_token(CATALOG_SUBJECT, [access]).token
        if len(self._tokens) >= TOKENS_KEPT:
            self._tokens.clear()
        headers = {"Authorization": f"Bearer {token}"}
        self._tokens[name] = (kid, now + self._token_reuse, headers)
        return headers

    def _pull(self, repository: str) -> dict[str, str]:
        access = {"type": "repository", "name": repository, "actions": ["pull"]}
        return self._auth(repository, access)

    async def _send(
        self,
        kind: str,
        path: str,
        headers: dict[str, str],
        params: dict[str, Any] | None = None,
        method: str = "GET",
    ) -> httpx.Response:
        self.requests[kind] += 1
        try:
            response = await self.http.request(method, path, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise RegistryError(f"{method} {path}: {exc.__class__.__name__}: {exc}") from None
        if response.status_code >= 400 and response.status_code != 404:
            raise RegistryError(
                f"{method} {path}: HTTP {response.status_code} {response.text[:200]}"
            )
        return response

    async def _paged(
        self, kind: str, path: str, key: str, headers: dict[str, str]
    ) -> AsyncIterator[str]:
        params: dict[str, Any] = {"n": self.page}
        while True:
            response = await self._send(kind, path, headers, params)
            if response.status_code == 404:
                return
            try:
                items = response.json().get(key) or []
            except (ValueError, AttributeError):  # not JSON, or not an object
                raise RegistryError(f"GET {path}: not the expected JSON object") from None
            if not isinstance(items, list):
                raise RegistryError(f"GET {path}: {key} is not a list")
            for item in items:
                yield item
            link = response.headers.get("link")
            if not link:
                return
            target = link.split(";")[0].strip("<> ")
            query = parse_qs(urlsplit(target).query)
            if "last" not in query:
                return
            params = {"n": self.page, "last": query["last"][0]}

    async def repositories(self) -> list[str]:
        """Every repository, following `_catalog` pagination."""
        headers = self._auth("", {"type": "registry", "name": "catalog", "actions": ["*"]})
        names = self._paged("catalog", "/v2/_catalog", "repositories", headers)
        return [name async for name in names if isinstance(name, str) and is_repository_name(name)]

    async def tags(self, repository: str) -> list[str]:
        """The repository's tags (only those in the tag grammar)."""
        path = f"/v2/{_repository(repository)}/tags/list"
        headers = self._pull(repository)
        return [tag async for tag in self._paged("tags", path, "tags", headers) if is_tag(tag)]

    async def digest(self, repository: str, tag: str) -> str | None:
        """The digest `tag` points at, from a HEAD of its manifest (no body is sent); None
        when the tag is gone, "" when the registry does not say (then read the manifest)."""
        path = f"/v2/{_repository(repository)}/manifests/{_reference(tag)}"
        headers = {**self._pull(repository), "Accept": ACCEPT}
        response = await self._send("head", path, headers, method="HEAD")
        if response.status_code == 404:
            return None
        digest = response.headers.get("docker-content-digest", "")
        return digest if is_digest(digest) else ""

    async def manifest(
        self, repository: str, reference: str
    ) -> tuple[str, str, dict[str, Any]] | None:
        """(digest, media type, manifest) of a tag or digest; None when it is gone."""
        path = f"/v2/{_repository(repository)}/manifests/{_reference(reference)}"
        headers = {**self._pull(repository), "Accept": ACCEPT}
        response = await self._send("manifest", path, headers)
        if response.status_code == 404:
            return None
        try:
            body = response.json()
        except json.JSONDecodeError:
            raise ManifestUnreadable(f"manifest {repository}:{reference} is not JSON") from None
        if not isinstance(body, dict):
            raise ManifestUnreadable(f"manifest {repository}:{reference} is not a JSON object")
        media_type = body.get("mediaType") or response.headers.get("content-type", "").split(";")[0]
        digest = response.headers.get("docker-content-digest", "")
        if not is_digest(digest):  # a registry or proxy that does not say: what it sent
            digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
        return digest, media_type, body

    async def blob_json(self, repository: str, digest: str) -> dict[str, Any] | None:
        if not is_digest(digest):
            raise RegistryError(f"refused: {digest[:300]!r} is not a digest")
        path = f"/v2/{_repository(repository)}/blobs/{digest}"
        response = await self._send("blob", path, self._pull(repository))
        if response.status_code == 404:
            return None
        try:
            data = response.json()
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    async def ping(self) -> bool:
        try:
            token = self.issuer.issue_access_token(CATALOG_SUBJECT, []).token
            response = await self.http.get("/v2/", headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError:
            return False
        return response.status_code == 200
