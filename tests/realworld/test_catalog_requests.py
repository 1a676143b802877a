"""What the catalog index asks a real registry (Debian's docker-registry 2.8, token auth), counted
in the registry's own access log: images pushed with skopeo, then refreshes.

A refresh that finds nothing new asks for the repository list and each tag list, and nothing
else; a new tag of an image the index holds costs one HEAD; a new image one HEAD, one manifest
and one config read. The index runs in this process with the gateway's keys (the gateway itself
is started without `registry_url`, so that every request in the log with the index's user
agent is the index's)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth.keys import KeyStore
from gateway.auth.tokens import TokenIssuer
from gateway.catalog.index import CatalogIndex
from gateway.catalog.registry import USER_AGENT, RegistryClient

from tests.support.binaries import require
from tests.support.catalog import wait_until
from tests.support.clients import Skopeo, ok
from tests.support.fixtures import OciImage
from tests.support.gateway import Stack, creds, start_stack
from tests.support.images import build_image

# The registry's access log, one line a request (combined format, user agent last).
LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) .* "(?P<agent>[^"]*)"$'
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require("docker-registry", "docker-registry")
    require("skopeo", "skopeo")
    running = start_stack(tmp_path_factory.mktemp("catalog-requests"))
    yield running
    running.stop()


def kind(method: str, path: str) -> str:
    if path.startswith("/v2/_catalog"):
        return "catalog"
    if "/tags/list" in path:
        return "tags"
    if "/manifests/" in path:
        return "head" if method == "HEAD" else "manifest"
    if "/blobs/" in path:
        return "blob"
    return f"{method} {path}"


class AccessLog:
    """The index's requests in the registry's log, from a mark on."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.mark = 0

    def lines(self) -> list[re.Match[str]]:
        found = (LINE.search(line) for line in self.stack.registry.logs().splitlines())
        return [m for m in found if m is not None and m["agent"] == USER_AGENT]

    def since_mark(self) -> Counter[str]:
        seen = self.lines()[self.mark :]
        refused = [m.group(0) for m in seen if m["status"] not in ("200",)]
        assert not refused, f"the registry refused the index: {refused}"
        return Counter(kind(m["method"], m["path"]) for m in seen)

    def set_mark(self) -> None:
        self.mark = len(self.lines())


def refresh(
    runner: asyncio.Runner, catalog: CatalogIndex, log: AccessLog, expected: dict[str, int]
) -> Counter[str]:
    """Refresh and return what the registry logged for it, once it has logged as many
    requests as the index sent (the log is written as answers complete)."""
    client = catalog.client
    log.set_mark()
    before = Counter(client.requests)
    assert runner.run(catalog.refresh()) is True, catalog.last_error
    sent = Counter(client.requests) - before
    assert sent == Counter(expected), f"the index sent {dict(sent)}, expected {expected}"
    logged: Counter[str] = wait_until(
        lambda: log.since_mark() if log.since_mark().total() >= sent.total() else None,
        timeout=10,
        what="the registry's access log to show every request",
    )
    return logged


def test_refreshes_ask_the_registry_only_for_what_changed(
    stack: Stack, oci_image: OciImage, tmp_path: Path
) -> None:
    skopeo = Skopeo(tmp_path / "skopeo")
    alice = creds("alice")

    def push(source: str, target: str, *, all_platforms: bool = False) -> None:
        ok(skopeo.copy(source, stack.ref(target), creds=alice, all_platforms=all_platforms))

    push(oci_image.ref("v1"), "library/base:v1")
    push(oci_image.ref("v1"), "platform/api:v1")
    push(oci_image.ref("multi"), "library/multi:multi", all_platforms=True)
    keys = KeyStore(stack.gateway.data_dir)
    issuer = TokenIssuer(keys, issuer=stack.gateway.issuer, service=stack.gateway.service)
    client = RegistryClient(stack.registry.url, issuer)
    catalog = CatalogIndex(client, concurrency=4)
    log = AccessLog(stack)
    lists = {"catalog": 1, "tags": 3}
    with asyncio.Runner() as runner:  # one event loop: the client's connections live in it
        # From cold: every tag's manifest (platform/api:v1 is library/base:v1's image, so
        # its config is not read again), the index's two platforms and their configs.
        cold = {**lists, "manifest": 3 + 2, "blob": 1 + 2}
        assert refresh(runner, catalog, log, cold) == cold
        assert catalog.status().tags == 3

        assert refresh(runner, catalog, log, lists) == lists

        push(oci_image.ref("v1"), "library/base:stable")
        known = {**lists, "head": 1}
        assert refresh(runner, catalog, log, known) == known
        stable = catalog.repositories["library/base"].tags["stable"]
        assert stable.digest == oci_image.v1_digest

        layout = tmp_path / "v2"
        digest = build_image(layout, "v2", labels={"org.example.test": "second"})
        push(f"oci:{layout}:v2", "platform/api:v2")
        new = {**lists, "head": 1, "manifest": 1, "blob": 1}
        assert refresh(runner, catalog, log, new) == new
        v2 = catalog.repositories["platform/api"].tags["v2"]
        assert v2.digest == digest
        assert ("org.example.test", "second") in v2.platforms[0].labels
        runner.run(client.close())
