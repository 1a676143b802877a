"""A registry's read API over dicts, as an httpx transport, counting what it is asked: for
fast tests of the catalog index (tests/realworld/ read a real registry instead).

It answers like Distribution: `_catalog` and `tags/list` pages (`n`, `last`, a `Link` to the
next page while more remain), manifests by tag or digest with `Docker-Content-Digest` (GET and
HEAD), and blobs. Every request must carry a bearer token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_PATH = re.compile(
    r"/v2/(?P<name>.+)/(?:(?P<list>tags/list)|manifests/(?P<ref>[^/]+)|blobs/(?P<blob>[^/]+))"
)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _page(items: list[str], params: httpx.QueryParams, path: str) -> tuple[list[str], str | None]:
    """Distribution's pagination: sorted, after `last`, at most `n`; the next page's link."""
    items = sorted(items)
    last = params.get("last")
    if last:
        items = [item for item in items if item > last]
    n = params.get("n")
    if n is None or len(items) <= int(n):
        return items, None
    page = items[: int(n)]
    query = urlencode({"last": page[-1], "n": n})
    return page, f'<{path}?{query}>; rel="next"'


class FakeRegistry:
    """Repositories of tags pointing at manifests; `counts` says what was asked, by kind:
    `catalog` and `tags` pages, `head` (a manifest's HEAD), `manifest` and `blob` reads."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.repositories: dict[str, dict[str, str]] = {}  # name -> tag -> digest
        self.manifests: dict[str, tuple[str, bytes]] = {}  # digest -> (media type, body)
        self.blobs: dict[str, bytes] = {}
        self.delay = delay  # seconds each answer takes
        self.counts: Counter[str] = Counter()
        self.asked: list[tuple[str, str]] = []  # (method, path), in order
        self.in_flight = 0
        self.most_in_flight = 0
        self.broken: set[str] = set()  # paths answered with a 500
        self.held: dict[str, asyncio.Event] = {}  # paths answered once their event is set

    # -- filling it -------------------------------------------------------------------------

    def blob(self, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs[digest] = data
        return digest

    def manifest(self, body: dict[str, Any], media_type: str = OCI_MANIFEST) -> str:
        data = json.dumps(body).encode()
        digest = digest_of(data)
        self.manifests[digest] = (media_type, data)
        return digest

    def image(self, note: str, *, config: str | None = None) -> str:
        """A new single-platform image (its own config unless `config` is given); its digest."""
        if config is None:
            config = self.blob(
                json.dumps(
                    {
                        "architecture": "amd64",
                        "os": "linux",
                        "created": "2024-01-01T00:00:00Z",
                        "config": {"Labels": {"note": note}},
                    }
                ).encode()
            )
        layer = self.blob(b"layer " + note.encode())
        return self.manifest(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 100},
                "layers": [{"mediaType": LAYER, "digest": layer, "size": 1000}],
                "annotations": {"note": note},
            }
        )

    def tag(self, repository: str, tag: str, digest: str) -> None:
        self.repositories.setdefault(repository, {})[tag] = digest

    def reset_counts(self) -> None:
        self.counts.clear()
        self.asked.clear()

    # -- answering --------------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if request.url.path in self.held:
                await self.held[request.url.path].wait()
            return self._answer(request)
        finally:
            self.in_flight -= 1

    def _answer(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.asked.append((method, path))
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
        if path in self.broken:
            return httpx.Response(500, text="storage driver error")
        if path == "/v2/_catalog":
            self.counts["catalog"] += 1
            names = [name for name, tags in self.repositories.items() if tags]
            page, link = _page(names, request.url.params, path)
            headers = {"Link": link} if link else {}
            return httpx.Response(200, json={"repositories": page}, headers=headers)
        found = _PATH.fullmatch(path)
        if found is None:
            return httpx.Response(404)
        name = found["name"]
        tags = self.repositories.get(name)
        if found["list"]:
            self.counts["tags"] += 1
            if not tags:
                return httpx.Response(404, json={"errors": [{"code": "NAME_UNKNOWN"}]})
            page, link = _page(list(tags), request.url.params, path)
            headers = {"Link": link} if link else {}
            return httpx.Response(200, json={"name": name, "tags": page}, headers=headers)
        if found["blob"]:
            self.counts["blob"] += 1
            data = self.blobs.get(found["blob"])
            return httpx.Response(200, content=data) if data else httpx.Response(404)
        reference = found["ref"]
        self.counts["head" if method == "HEAD" else "manifest"] += 1
        digest = reference if reference.startswith("sha256:") else (tags or {}).get(reference)
        if digest is None or digest not in self.manifests:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        media_type, data = self.manifests[digest]
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest}
        if method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, content=data, headers=headers)
