"""The gateway app in-process (its lifespan running) with webhooks in its policy and a real
receiver on loopback: each place an event happens reaches the receiver, signed, and the
Status page shows admins the deliveries."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth.keys import KeyStore
from gateway.config import load_settings
from gateway.services import Services

from tests.support.gateway import EXAMPLE_POLICIES, PASSWORDS
from tests.support.receiver import Receiver

SECRET = "hooks-test-secret"
ENV = "REGISTRY_GATEWAY_TEST_HOOKS_SECRET"
NOTIFY = "notification-secret-of-the-hooks-test"
SERVICE = "registry.test"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def webhooks_yaml(url: str) -> str:
    return f"""\
webhooks:
  everything:
    url: {url}
    events: ["*"]
    secret_env: {ENV}
  platform:
    url: {url}
    events: [image.pushed]
    repositories: ["platform/**"]
    secret_env: {ENV}
"""


Running = tuple[TestClient, Services, Receiver, Path]


@pytest.fixture
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    monkeypatch.setenv(ENV, SECRET)
    receiver = Receiver(SECRET.encode())
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLE_POLICIES, policies)
    (policies / "webhooks.yaml").write_text(webhooks_yaml(receiver.url))
    settings = load_settings(
        {
            "policies": str(policies),
            "data_dir": str(tmp_path / "data"),
            "audit_log": str(tmp_path / "audit.log"),
            "watch": "false",
            "service": SERVICE,
            "public_url": "https://gateway.example.com",
            "lockout_failures": "3",
            "lockout_backoff": "0",
            "signin_failure_floor": "0.001",
            "webhook_backoff": "0.05",
        },
        environ={"REGISTRY_GATEWAY_NOTIFICATION_SECRET": NOTIFY},
    )
    app = create_app(settings)
    try:
        with TestClient(app, base_url="https://gateway.example.com") as client:
            yield client, app.state.services, receiver, policies
    finally:
        receiver.stop()


def of_type(receiver: Receiver, kind: str, count: int = 1) -> list[dict[str, Any]]:
    """The CloudEvents of `kind` the receiver took, waiting for `count` of them."""
    deadline = time.monotonic() + 15
    while True:
        found = [r.json for r in receiver.taken() if r.json["type"] == f"registry-gateway.{kind}"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_a_denied_push_is_a_token_denied_event(running: Running) -> None:
    client, _, receiver, _ = running
    answer = client.get(
        "/auth/token",
        params={"service": SERVICE, "scope": "repository:platform/prod/api:pull,push"},
        auth=("carol", PASSWORDS["carol"]),
        headers={"X-Request-ID": "req-denied-1"},
    )
    assert answer.status_code == 200
    [event] = of_type(receiver, "token.denied")
    data = event["data"]
    assert data["repository"] == "platform/prod/api"
    assert data["denied_actions"] == ["push"] and data["granted_actions"] == ["pull"]
    assert data["actor"] == {"kind": "user", "name": "carol"}
    assert data["request_id"] == "req-denied-1"
    assert PASSWORDS["carol"] not in str(event)
    assert all(r.verified for r in receiver.requests)


def test_a_granted_request_is_no_event(running: Running) -> None:
    client, services, receiver, _ = running
    client.get(
        "/auth/token",
        params={"service": SERVICE, "scope": "repository:platform/api:pull"},
        auth=("carol", PASSWORDS["carol"]),
    )
    time.sleep(0.3)
    assert receiver.requests == []
    assert len(services.events.queue) == 0


def test_a_registry_push_reaches_both_matching_webhooks_once(running: Running) -> None:
    client, _, receiver, _ = running
    digest = "sha256:" + "c" * 64
    envelope = {
        "events": [
            {
                "id": "registry-event-1",
                "action": "push",
                "target": {"mediaType": MANIFEST, "digest": digest, "size": 9,
                           "repository": "platform/api", "tag": "v2"},
                "actor": {"name": "release"},
                "request": {"id": "r-9", "host": "registry.example.com"},
            },
            {"id": "blob", "action": "push", "target": {"mediaType": "application/octet-stream",
             "digest": digest, "repository": "platform/api"}},
        ]
    }  # fmt: skip
    answer = client.post(
        "/-/notifications", json=envelope, headers={"Authorization": f"Bearer {NOTIFY}"}
    )
    assert answer.status_code == 200
    pushed = of_type(receiver, "image.pushed", 2)
    assert len(pushed) == 2  # "everything" and "platform"
    assert {e["id"] for e in pushed} == {pushed[0]["id"]}
    assert pushed[0]["data"]["digest"] == digest
    assert pushed[0]["data"]["actor"] == {"kind": "robot", "name": "release"}
    time.sleep(0.3)
    assert len(of_type(receiver, "image.pushed")) == 2  # the blob made none


def test_a_policy_change_is_an_event_with_its_diff(running: Running) -> None:
    _, services, receiver, policies = running
    before = services.source.status().revision
    (policies / "more.yaml").write_text(
        "grants:\n  - to: [user:carol]\n    repositories: [qa/**]\n    actions: [pull, push]\n"
    )
    assert services.source.reload()  # in this thread, as a reload runs in a worker thread
    [event] = of_type(receiver, "policy.changed")
    data = event["data"]
    assert data["previous_revision"] == before
    assert data["policy_revision"] == services.source.status().revision
    assert data["diff"]["access_changed"] is True
    assert any(s["subject"] == "user:carol" for s in data["diff"]["subjects"])


def test_a_lockout_is_an_event(running: Running) -> None:
    client, _, receiver, _ = running
    for n in range(3):  # three different guesses (the same one again counts once)
        answer = client.get(
            "/auth/token", params={"service": SERVICE}, auth=("bob", f"wrong-guess-{n}")
        )
        assert answer.status_code == 401
    [event] = of_type(receiver, "signin.locked_out")
    assert event["data"]["username"] == "bob"
    assert event["data"]["locks"] == ["user"]
    assert "wrong-guess" not in str(event)


def test_a_key_rotation_is_an_event(running: Running) -> None:
    _, services, receiver, _ = running
    # `registry-gateway keys rotate` is another process with its own store on the data dir.
    key = KeyStore(services.settings.data_dir, common_name="x").rotate("ES256")
    [event] = of_type(receiver, "key.rotated")
    assert event["data"]["kid"] == key.kid


def test_admins_see_the_deliveries_on_the_status_page(running: Running) -> None:
    client, _, receiver, _ = running
    client.get(
        "/auth/token",
        params={"service": SERVICE, "scope": "repository:platform/prod/api:push"},
        auth=("carol", PASSWORDS["carol"]),
    )
    [event] = of_type(receiver, "token.denied")
    status = client.get("/-/status?format=json", auth=("alice", PASSWORDS["alice"])).json()
    hooks = {h["name"]: h for h in status["webhooks"]["webhooks"]}
    assert set(hooks) == {"everything", "platform"}
    [delivery] = hooks["everything"]["deliveries"]
    assert delivery["event_id"] == event["id"]
    assert (delivery["status"], delivery["attempts"], delivery["http_status"]) == (
        "delivered",
        1,
        204,
    )
    assert delivery["latency_ms"] >= 0
    page = BeautifulSoup(signed_in(client, "alice").get("/-/status").text, "html.parser")
    section = page.select_one("section[aria-labelledby=webhooks-heading]")
    assert section is not None
    rows = section.select("#webhook-everything + p + div table.webhook-log tbody tr")
    cells = [[td.get_text(" ", strip=True) for td in row.select("th, td")] for row in rows]
    assert cells[0][1:5] == [f"token.denied {event['id']}", "delivered", "1", "204"]
    other = client.get("/-/status?format=json", auth=("carol", PASSWORDS["carol"])).json()
    assert "webhooks" not in other


def signed_in(client: TestClient, user: str) -> TestClient:
    """`client` with a UI session of `user` (through the sign-in form)."""
    form = BeautifulSoup(client.get("/-/login").text, "html.parser")
    csrf = form.select_one("input[name=csrf]")
    assert csrf is not None
    answer = client.post(
        "/-/login",
        data={"username": user, "password": PASSWORDS[user], "csrf": str(csrf["value"])},
        follow_redirects=False,
    )
    assert answer.status_code in (302, 303), answer.text[:300]
    return client
