"""POST /-/notifications through the ASGI app: whatever the body, a 200 (the events
counted, accepted or ignored) or a 4xx in the registry's format; never a 500."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.catalog.index import CatalogIndex
from gateway.config import load_settings

from tests.fuzz.profiles import FUZZ
from tests.fuzz.strategies import hostile_text, json_values, pieces

SECRET = "fuzz-notification-secret"
HEADERS = {"authorization": f"Bearer {SECRET}", "content-type": "application/json"}


class NoRegistry:
    """A registry client with nothing in it (the fuzzer must not reach a network)."""

    async def tags(self, repository: str) -> list[str]:
        return []

    async def manifest(self, repository: str, reference: str) -> None:
        return None

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("fuzz-notifications")
    settings = load_settings(
        {
            "policies": str(shutil.copytree("policies", root / "policies")),
            "data_dir": str(root / "data"),
            "audit_log": str(root / "audit.log"),
            "watch": "false",
            "max_body_bytes": "65536",
            "access_log": "false",
        },
        environ={"REGISTRY_GATEWAY_NOTIFICATION_SECRET": SECRET},
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        app.state.services.catalog = CatalogIndex(NoRegistry())  # type: ignore[arg-type]
        yield test_client


names = st.one_of(
    st.sampled_from(["library/alpine", "platform/api", "a", "a/b/c", "a__b-c.d"]), pieces
)
targets = st.fixed_dictionaries(
    {},
    optional={
        "repository": st.one_of(names, json_values(4)),
        "tag": st.one_of(st.sampled_from(["v1", "latest", "../x"]), json_values(3)),
        "digest": st.one_of(st.just("sha256:" + "ab" * 32), json_values(3)),
        "mediaType": st.one_of(
            st.just("application/vnd.oci.image.manifest.v1+json"), json_values(3)
        ),
        "size": json_values(2),
    },
)
events = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "action": st.one_of(
                st.sampled_from(["push", "pull", "delete", "mount"]), json_values(2)
            ),
            "target": st.one_of(targets, json_values(4)),
            "timestamp": st.one_of(
                st.sampled_from(["2024-05-01T10:00:00Z", "0001-01-01T00:00:00+01:00"]),
                json_values(2),
            ),
        },
    ),
    json_values(6),
)
envelopes = st.one_of(
    st.fixed_dictionaries({"events": st.lists(events, max_size=5)}),
    st.fixed_dictionaries({"events": json_values(6)}),
    json_values(8),
)
bodies = st.one_of(
    envelopes.map(lambda value: json.dumps(value).encode("utf-8", "surrogatepass")),
    st.binary(max_size=300),
    st.integers(1, 200_000).map(lambda depth: b'{"events":' + b"[" * depth + b"]" * depth + b"}"),
    hostile_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
)


@FUZZ
@given(bodies)
def test_notifications_never_answer_500(client: TestClient, body: bytes) -> None:
    answer = client.post("/-/notifications", content=body, headers=HEADERS)
    assert answer.status_code in (200, 400, 413), (answer.status_code, answer.text[:300])
    data: dict[str, Any] = answer.json()
    if answer.status_code == 200:
        try:
            sent = json.loads(body)["events"]
        except RecursionError:  # deeper than this thread's stack lets the decoder go
            return
        assert data["accepted"] + data["ignored"] == len(sent)
    else:
        assert data["errors"][0]["code"] in ("INVALID_REQUEST", "REQUEST_TOO_LARGE")
