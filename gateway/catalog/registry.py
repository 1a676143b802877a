"""A client for the registry's API (distribution v2), with tokens the gateway mints for itself."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from gateway.auth.tokens import TokenIssuer

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
CATALOG_SUBJECT = "registry-gateway-catalog"


class RegistryError(RuntimeError):
    """The registry did not answer as expected; the message says what was asked."""


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
            for item in response.json().get(key) or []:
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
        return [name async for name in self._paged("/v2/_catalog", "repositories", headers)]

    async def tags(self, repository: str) -> list[str]:
        headers = self._auth(self._pull(repository))
        return [tag async for tag in self._paged(f"/v2/{repository}/tags/list", "tags", headers)]

    async def manifest(
        self, repository: str, reference: str
    ) -> tuple[str, str, dict[str, Any]] | None:
        """(digest, media type, manifest) of a tag or digest; None when it is gone."""
        headers = {**self._auth(self._pull(repository)), "Accept": ACCEPT}
        response = await self._get(f"/v2/{repository}/manifests/{reference}", headers)
        if response.status_code == 404:
            return None
        try:
            body = response.json()
        except json.JSONDecodeError:
            raise RegistryError(f"manifest {repository}:{reference} is not JSON") from None
        media_type = body.get("mediaType") or response.headers.get("content-type", "").split(";")[0]
        digest = response.headers.get("docker-content-digest", "")
        return digest, media_type, body

    async def blob_json(self, repository: str, digest: str) -> dict[str, Any] | None:
        headers = self._auth(self._pull(repository))
        response = await self._get(f"/v2/{repository}/blobs/{digest}", headers)
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
