"""POST /-/notifications with hostile bodies, and the catalog client that follows them: a bad
envelope is a 400, a bad event is ignored, and no URL is ever built from a bad name."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx2 import Response  # what starlette.testclient answers with
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth.keys import KeyStore
from gateway.auth.tokens import TokenIssuer
from gateway.catalog.index import CatalogIndex, EnvelopeError, Event, read_envelope
from gateway.catalog.registry import OCI_MANIFEST, RegistryClient, RegistryError
from gateway.config import load_settings

SECRET = "notification-secret"
BEARER = {"authorization": f"Bearer {SECRET}"}
DIGEST = "sha256:" + "ab" * 32


class Recorder:
    """A registry client that records what it was asked and answers with nothing."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def tags(self, repository: str) -> list[str]:
        self.asked.append(("tags", repository))
        return []

    async def manifest(self, repository: str, reference: str) -> None:
        self.asked.append(("manifest", f"{repository}@{reference}"))

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the module (a policy load per test would cost seconds)."""
    root = tmp_path_factory.mktemp("notifications")
    policies = shutil.copytree("policies", root / "policies")
    settings = load_settings(
        {
            "policies": str(policies),
            "data_dir": str(root / "data"),
            "audit_log": str(root / "audit.log"),
            "watch": "false",
        },
        environ={"REGISTRY_GATEWAY_NOTIFICATION_SECRET": SECRET},
    )
    app = create_app(settings)
    with TestClient(app) as test_client:
        app.state.services.catalog = CatalogIndex(Recorder())  # type: ignore[arg-type]
        yield test_client


@pytest.fixture
def client(app_client: TestClient) -> TestClient:
    recorder(app_client).asked.clear()
    return app_client


def recorder(client: TestClient) -> Recorder:
    app = client.app
    assert isinstance(app, Starlette)
    found: Recorder = app.state.services.catalog.client
    return found


def notify(client: TestClient, body: Any) -> Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/-/notifications", content=content, headers=BEARER)


def push(repository: Any, **target: Any) -> dict[str, Any]:
    return {
        "action": "push",
        "timestamp": "2024-05-01T10:00:00.123Z",
        "target": {"mediaType": OCI_MANIFEST, "repository": repository, **target},
    }


def test_only_the_registry_may_notify(client: TestClient) -> None:
    answer = client.post("/-/notifications", content=b'{"events":[]}')
    assert answer.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"events": 5},
        {"events": "x"},
        {"events": {"a": 1}},
        {},
        [],
        5,
        "events",
        None,
        b"",
        b"not json",
        b"\xff\xfe{",
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON decoder goes
        b'{"events":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"events":[' + b"1" * 5000 + b"]}",  # an integer longer than Python reads
    ],
    ids=lambda body: repr(body)[:30],
)
def test_a_body_that_is_not_an_envelope_is_a_400(client: TestClient, body: Any) -> None:
    answer = notify(client, body)
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["code"] == "INVALID_REQUEST"


@pytest.mark.parametrize(
    "event",
    [
        5,
        "push",
        None,
        [],
        {"action": "push"},
        {"action": "push", "target": "x"},
        {"action": "push", "target": ["library/base"]},
        {"action": ["push"], "target": {"repository": "library/base"}},
        push({"name": "library/base"}),
        push(["library", "base"]),
        push(5),
        push("../../v2/_catalog?x="),
        push("Library/Base"),
        push("library/base/"),
        push("a" * 300),
        push("library/base", tag="../../../v2/_catalog"),
        push("library/base", tag=["v1"]),
        push("library/base", tag="v1", digest="sha256:../../x"),
        push("library/base", tag="v1", digest={"algorithm": "sha256"}),
        push("library/base", mediaType=5),
        {"action": "push", "target": {"repository": "library/base"}, "timestamp": 5},
    ],
    ids=lambda event: repr(event)[:60],
)
def test_a_malformed_event_is_ignored_and_asks_the_registry_nothing(
    client: TestClient, event: Any
) -> None:
    answer = notify(client, {"events": [event]})
    assert answer.status_code == 200
    if isinstance(event, dict) and isinstance(event.get("timestamp"), int):
        # A timestamp that is not a time is not read; the event itself is well-formed.
        assert answer.json() == {"accepted": 1, "ignored": 0}
        return
    assert answer.json() == {"accepted": 0, "ignored": 1}
    assert recorder(client).asked == []


def test_well_formed_events_are_applied_next_to_ignored_ones(client: TestClient) -> None:
    events = [
        push("../../v2/_catalog?x="),
        push("library/base", tag="v1", digest=DIGEST),
        {"action": "pull", "target": {"repository": "library/base"}},
        "garbage",
    ]
    answer = notify(client, {"events": events})
    assert answer.json() == {"accepted": 2, "ignored": 2}
    for _ in range(10):
        if recorder(client).asked:
            break
        time.sleep(0.01)  # the update runs on the app's event loop, in another thread
    assert recorder(client).asked[:1] == [("tags", "library/base")]
    asked = "".join(what for _, what in recorder(client).asked)
    assert ".." not in asked and "_catalog" not in asked


def test_events_are_read_strictly() -> None:
    event = Event.read(push("library/base", tag="v1", digest=DIGEST))
    assert event == Event(
        "push", "library/base", "v1", DIGEST, OCI_MANIFEST, "2024-05-01T10:00:00Z"
    )
    year_one = {**push("library/base"), "timestamp": "0001-01-01T00:00:00+01:00"}
    assert Event.read(year_one) == Event("push", "library/base", media_type=OCI_MANIFEST)
    with pytest.raises(EnvelopeError):
        read_envelope(b'{"events": null}')


def test_apply_events_takes_anything() -> None:
    index = CatalogIndex(Recorder())  # type: ignore[arg-type]
    garbage: list[Any] = [5, None, "x", [], {"action": "push", "target": {"repository": {}}}]
    assert index.apply_events(garbage) == set()
    assert index.apply_events([push("library/base", tag="v1", digest=DIGEST)]) == {"library/base"}


class OneImage(Recorder):
    """A registry whose every repository has tag v1."""

    async def tags(self, repository: str) -> list[str]:
        return ["v1"]

    async def manifest(self, repository: str, reference: str) -> Any:
        return DIGEST, OCI_MANIFEST, {"config": {}, "layers": []}


def test_the_newest_push_time_reaches_the_repository() -> None:
    index = CatalogIndex(OneImage())  # type: ignore[arg-type]
    events = [
        {**push("library/base", tag="v1", digest=DIGEST), "timestamp": stamp}
        for stamp in ("2024-05-01T10:00:00Z", "2024-05-02T10:00:00+02:00", "not a time")
    ]
    assert index.apply_events([*events, {"action": "pull", "target": events[0]["target"]}]) == {
        "library/base"
    }
    asyncio.run(index.update_repository("library/base"))
    assert index.repositories["library/base"].last_push == "2024-05-02T08:00:00Z"


# -- the registry client -------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[RegistryClient, list[str]]]:
    keys = KeyStore(tmp_path / "keys")
    keys.ensure()
    issuer = TokenIssuer(keys, issuer="test", service="test")
    client = RegistryClient("http://registry.invalid", issuer)
    requested: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        return httpx.Response(200, json={"tags": ["v1", "../x", 5], "repositories": []})

    client.http = httpx.AsyncClient(
        base_url="http://registry.invalid", transport=httpx.MockTransport(handler)
    )
    yield client, requested


@pytest.mark.parametrize(
    "name", ["../../v2/_catalog?x=", "a/../b", "A", "", "a?b", "a#b", "a b", "a" * 256]
)
def test_the_registry_client_builds_no_url_from_a_bad_name(
    registry: tuple[RegistryClient, list[str]], name: str
) -> None:
    client, requested = registry

    async def run() -> None:
        with pytest.raises(RegistryError):
            await client.tags(name)
        with pytest.raises(RegistryError):
            await client.manifest(name, "v1")
        with pytest.raises(RegistryError):
            await client.blob_json(name, DIGEST)

    asyncio.run(run())
    assert requested == []


@pytest.mark.parametrize(
    "reference", ["../../v2/_catalog?x=", "v1/../x", "", ".v1", "v1?x", "v1#x", "a" * 129]
)
def test_the_registry_client_builds_no_url_from_a_bad_reference(
    registry: tuple[RegistryClient, list[str]], reference: str
) -> None:
    client, requested = registry

    async def run() -> None:
        with pytest.raises(RegistryError):
            await client.manifest("library/base", reference)
        with pytest.raises(RegistryError):
            await client.blob_json("library/base", reference)

    asyncio.run(run())
    assert requested == []


def test_the_registry_client_keeps_only_well_formed_tags(
    registry: tuple[RegistryClient, list[str]],
) -> None:
    client, requested = registry
    assert asyncio.run(client.tags("library/base")) == ["v1"]
    assert requested == ["http://registry.invalid/v2/library/base/tags/list?n=1000"]
