"""HTTP Basic credentials: the parser, and what the token endpoint and the UI make of them."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth.basic import basic_credentials
from gateway.auth.identity import AuthenticationFailed
from gateway.config import load_settings

SERVICE = "unit-registry"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b64(b"bob:secret"), ("bob", "secret")),
        (b64(b"bob:"), ("bob", "")),  # an empty password is for the backends to refuse
        (b64(b"bob:a:b"), ("bob", "a:b")),  # the password may hold colons
        (" " + b64("jörg:pässword".encode()) + " ", ("jörg", "pässword")),
        ("Og==", None),  # empty name and empty password: anonymous
    ],
)
def test_well_formed_credentials(value: str, expected: tuple[str, str] | None) -> None:
    assert basic_credentials(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "\xff\xfe\xfd",  # not ASCII (header bytes arrive as Latin-1 text)
        "Ym9i\u20ac",
        "not base64!",
        "Ym9iOnNlY3JldA",  # padding missing
        "",
        b64(b"\xff\xfe:secret"),  # not UTF-8
        b64(b"no-colon-here"),
        b64(b":password-without-a-name"),
    ],
)
def test_malformed_credentials_are_refused_never_crash(value: str) -> None:
    with pytest.raises(AuthenticationFailed) as refused:
        basic_credentials(value)
    assert refused.value.reason == "malformed basic credentials"
    assert refused.value.username == ""  # what was sent may be a bare secret: never recorded


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    policies = shutil.copytree("policies", tmp_path / "policies")
    settings = load_settings(
        {
            "policies": str(policies),
            "data_dir": str(tmp_path / "data"),
            "service": SERVICE,
            "audit_log": str(tmp_path / "audit.log"),
            "watch": "false",
        },
        environ={},
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


NON_ASCII = {b"authorization": b"Basic \xff\xfe\xfd"}


def test_non_ascii_basic_on_the_token_endpoint_is_a_401_and_audited(
    client: TestClient, tmp_path: Path
) -> None:
    answer = client.get("/auth/token", params={"service": SERVICE}, headers=NON_ASCII)
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert answer.headers["www-authenticate"].startswith("Basic ")
    line = audit(tmp_path)[-1]
    assert line["outcome"] == "denied" and line["error"] == "malformed basic credentials"


@pytest.mark.parametrize(
    "path", ["/", "/r/library/base", "/search?q=base", "/n/library", "/-/teams"]
)
def test_non_ascii_basic_on_the_ui_is_a_401(client: TestClient, path: str) -> None:
    answer = client.get(path, params={"format": "json"}, headers=NON_ASCII)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic ")


def test_empty_basic_credentials_are_anonymous_on_the_token_endpoint(
    client: TestClient, tmp_path: Path
) -> None:
    """What the OCI conformance suite's client sends when it has no credentials."""
    answer = client.get(
        "/auth/token",
        params={"service": SERVICE, "scope": "repository:library/base:pull"},
        headers={"authorization": "Basic Og=="},
    )
    assert answer.status_code == 200
    line = audit(tmp_path)[-1]
    assert line["auth"] == "anonymous" and line["subject"] == "anonymous"
    assert line["granted"] == [{"type": "repository", "name": "library/base", "actions": ["pull"]}]


def test_empty_basic_credentials_are_anonymous_on_the_ui(client: TestClient) -> None:
    answer = client.get("/", params={"format": "json"}, headers={"authorization": "Basic Og=="})
    assert answer.status_code == 200
    assert answer.json()["viewer"]["signed_in"] is False


@pytest.mark.parametrize(
    "raw", [b":password", b"no-colon", b"\xff:x"], ids=["no-name", "no-colon", "not-utf8"]
)
def test_other_malformed_forms_stay_refused(client: TestClient, raw: bytes) -> None:
    headers = {"authorization": "Basic " + b64(raw)}
    assert (
        client.get("/auth/token", params={"service": SERVICE}, headers=headers).status_code == 401
    )
    assert client.get("/", params={"format": "json"}, headers=headers).status_code == 401
