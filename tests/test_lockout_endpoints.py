"""Brute-force protection through the app: GET and POST /auth/token and the UI, with clients
at different addresses (httpx's ASGI transport sets the client address of each request)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings

SERVICE = "unit-registry"
PASSWORDS = {"bob": "bob-password", "dave": "dave-password"}
ATTACKER, BOB_AT = "198.51.100.66", "10.0.0.7"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    policies = tmp_path / "policies"
    policies.mkdir()
    users = "".join(
        f'  {name}: {{password: "{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()}"}}\n'
        for name, pw in PASSWORDS.items()
    )
    (policies / "people.yaml").write_text(f"users:\n{users}")
    settings = load_settings(
        {
            "policies": str(policies),
            "data_dir": str(tmp_path / "data"),
            "service": SERVICE,
            "audit_log": str(tmp_path / "audit.log"),
            "watch": "false",
            "lockout_failures": "5",
            "lockout_backoff": "0",
        },
        environ={},
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def send(client: TestClient, address: str, *requests: dict[str, Any]) -> list[httpx.Response]:
    """Send requests at once from `address`, on the app's own event loop."""

    async def all_at_once() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await asyncio.gather(*(http.request(**r) for r in requests))

    assert client.portal is not None
    return client.portal.call(all_at_once)


def login_form(client: TestClient, address: str, user: str, password: str) -> int:
    """The status of the UI's sign-in form posted from `address` (with its CSRF token)."""

    async def sign_in() -> int:
        transport = httpx.ASGITransport(app=client.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            page = await http.get("/-/login")
            found = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert found is not None
            data = {"username": user, "password": password, "csrf": found[1]}
            return (await http.post("/-/login", data=data)).status_code

    assert client.portal is not None
    return client.portal.call(sign_in)


def get(user: str, password: str) -> dict[str, Any]:
    return {
        "method": "GET",
        "url": "/auth/token",
        "params": {"service": SERVICE},
        "auth": (user, password),
    }


def post(user: str, password: str) -> dict[str, Any]:
    form = {"grant_type": "password", "username": user, "password": password}
    return {
        "method": "POST",
        "url": "/auth/token",
        "data": {**form, "service": SERVICE, "client_id": "test"},
    }


def ui(user: str, password: str) -> dict[str, Any]:
    return {"method": "GET", "url": "/", "params": {"format": "json"}, "auth": (user, password)}


def statuses(client: TestClient, address: str, *requests: dict[str, Any]) -> list[int]:
    return [answer.status_code for answer in send(client, address, *requests)]


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line]


def test_an_attacker_elsewhere_does_not_lock_bob_out_and_is_stopped_himself(
    client: TestClient, tmp_path: Path
) -> None:
    for i in range(5):
        assert statuses(client, ATTACKER, get("bob", f"guess-{i}")) == [401]
    right = PASSWORDS["bob"]
    # The attacker is stopped, on GET, POST and the UI, even with the right password ...
    for request in (get("bob", right), post("bob", right), ui("bob", right)):
        assert statuses(client, ATTACKER, request) == [429]
    # ... and bob, from his own address, signs in everywhere.
    for request in (get("bob", right), post("bob", right), ui("bob", right)):
        assert statuses(client, BOB_AT, request) == [200]
    # Other spellings are other names: they start no backoff of bob's.
    for variant in ("Bob", " bob", "bob ", "BOB", "bOb"):  # as many as the limit
        assert statuses(client, "10.0.0.8", get(variant, "guess")) == [401]
    assert statuses(client, "10.0.0.8", get("bob", right)) == [200]
    locked = [line for line in audit(tmp_path) if line["status"] == 429]
    assert {line["lockout"] for line in locked} == {"user"}
    assert {line["client"] for line in locked} == {ATTACKER}


def test_sixty_guesses_at_once_get_at_most_the_limit_checked(
    client: TestClient, tmp_path: Path
) -> None:
    guesses = [get("dave", f"guess-{i}") for i in range(59)] + [get("dave", PASSWORDS["dave"])]
    answers = statuses(client, "203.0.113.5", *guesses)
    checked = answers.count(401) + answers.count(200)
    assert 1 <= checked <= 5 and answers.count(429) == 60 - checked
    denied = [line for line in audit(tmp_path) if line["outcome"] == "denied"]
    assert len(denied) == answers.count(401)


def test_every_429_counts_in_lockouts_total(client: TestClient) -> None:
    def lockouts() -> float:
        return REGISTRY.get_sample_value("registry_gateway_lockouts_total") or 0.0

    for i in range(5):
        statuses(client, ATTACKER, get("dave", f"guess-{i}"))
    before = lockouts()
    assert statuses(client, ATTACKER, get("dave", "x"), post("dave", "y")) == [429, 429]
    assert lockouts() == before + 2
    assert statuses(client, ATTACKER, ui("dave", "z")) == [429]
    assert lockouts() == before + 3
    assert login_form(client, ATTACKER, "dave", "w") == 429
    assert lockouts() == before + 4
