"""A client for the registry's API (distribution v2), with tokens the gateway mints for itself.

Every URL is built from names checked against distribution's grammar (repository names, tags,
digests): a name from a notification or a registry answer can never reach another path.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any, TypeGuard
from urllib.parse import parse_qs, urlsplit

import httpx

from gateway.auth.tokens import TokenIssuer
from gateway.policy.patterns import is_repository_name

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
CATALOG_SUBJECT = "registry-gateway-catalog"
# Distribution's reference grammar: a tag, and a digest (`algorithm:encoded`).
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,256}")


class RegistryError(RuntimeError):
    """The registry did not answer as expected; the message says what was asked."""


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
    """Reads the catalog, tags, manifests and image configs from the registry."""

    def __init__(
        self, url: str, issuer: TokenIssuer, *, page: int = 1000, timeout: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self.issuer = issuer
        self.page = page
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        self.http = httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=limits)

    async def close(self) -> None:
        await self.http.aclose()

    def _auth(self, *access: dict[str, Any]) -> dict[str, str]:
        token = self.issuer.issue_access_token(CATALOG_SUBJECT, list(access)).token
        return {"Authorization": f"Bearer {token}"}

    @staticmethod
    def _pull(repository: str) -> dict[str, Any]:
        return {"type": "repository", "name": repository, "actions": ["pull"]}

    async def _get(
        self, path: str, headers: dict[str, str], params: dict[str, Any] | None = None
    ) -> httpx.Response:
        try:
            response = await self.http.get(path, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise RegistryError(f"GET {path}: {exc.__class__.__name__}: {exc}") from None
        if response.status_code >= 400 and response.status_code != 404:
            raise RegistryError(f"GET {path}: HTTP {response.status_code} {response.text[:200]}")
        return response

    async def _paged(self, path: str, key: str, headers: dict[str, str]) -> AsyncIterator[str]:
        params: dict[str, Any] = {"n": self.page}
        while True:
            response = await self._get(path, headers, params)
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
        headers = self._auth({"type": "registry", "name": "catalog", "actions": ["*"]})
        names = self._paged("/v2/_catalog", "repositories", headers)
        return [name async for name in names if isinstance(name, str) and is_repository_name(name)]

    async def tags(self, repository: str) -> list[str]:
        """The repository's tags (only those in the tag grammar)."""
        path = f"/v2/{_repository(repository)}/tags/list"
        headers = self._auth(self._pull(repository))
        return [tag async for tag in self._paged(path, "tags", headers) if is_tag(tag)]

    async def manifest(
        self, repository: str, reference: str
    ) -> tuple[str, str, dict[str, Any]] | None:
        """(digest, media type, manifest) of a tag or digest; None when it is gone."""
        path = f"/v2/{_repository(repository)}/manifests/{_reference(reference)}"
        headers = {**self._auth(self._pull(repository)), "Accept": ACCEPT}
        response = await self._get(path, headers)
        if response.status_code == 404:
            return None
        try:
            body = response.json()
        except json.JSONDecodeError:
            raise RegistryError(f"manifest {repository}:{reference} is not JSON") from None
        if not isinstance(body, dict):
            raise RegistryError(f"manifest {repository}:{reference} is not a JSON object")
        media_type = body.get("mediaType") or response.headers.get("content-type", "").split(";")[0]
        digest = response.headers.get("docker-content-digest", "")
        return digest, media_type, body

    async def blob_json(self, repository: str, digest: str) -> dict[str, Any] | None:
        if not is_digest(digest):
            raise RegistryError(f"refused: {digest[:300]!r} is not a digest")
        path = f"/v2/{_repository(repository)}/blobs/{digest}"
        headers = self._auth(self._pull(repository))
        response = await self._get(path, headers)
        if response.status_code == 404:
            return None
        try:
            data = response.json()
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    async def ping(self) -> bool:
        try:
            response = await self.http.get("/v2/", headers=self._auth())
        except httpx.HTTPError:
            return False
        return response.status_code == 200
