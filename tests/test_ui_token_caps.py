"""A personal access token's cap holds in the UI as at the token endpoint: an admin's
pull-only token is not an admin, and shows only pull (issue 13, item 7)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth.credentials import TOKEN_PREFIX, new_secret, token_entry
from gateway.config import load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "policies"
ALICE = "alice-example-password"


@pytest.fixture
def tokens() -> dict[str, str]:
    return {"pull-only": new_secret(TOKEN_PREFIX), "full": new_secret(TOKEN_PREFIX)}


@pytest.fixture
def client(tmp_path: Path, tokens: dict[str, str]) -> Iterator[TestClient]:
    policies = Path(shutil.copytree(EXAMPLE, tmp_path / "policies"))
    entries = [
        token_entry("alice", "pull-only", tokens["pull-only"], actions=["pull"]),
        token_entry("alice", "full", tokens["full"]),
    ]
    body = "".join(e.split("tokens:\n", 1)[1] for e in entries)
    people = policies / "people.yaml"
    anchor = "    full_name: Alice Admin\n"
    people.write_text(people.read_text().replace(anchor, anchor + "    tokens:\n" + body))
    settings = load_settings(
        {"policies": str(policies), "data_dir": str(tmp_path / "data"), "watch": "false"},
        environ={},
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_a_capped_token_over_basic_is_no_admin(client: TestClient, tokens: dict[str, str]) -> None:
    capped = ("alice", tokens["pull-only"])
    home = client.get("/?format=json", auth=capped).json()
    assert home["viewer"]["admin"] is False and home["viewer"]["signed_in"] is True
    assert client.get("/-/explain?format=json", auth=capped).status_code == 403
    # Her password, and a token without a cap, are what they always were.
    assert client.get("/?format=json", auth=("alice", ALICE)).json()["viewer"]["admin"] is True
    full = ("alice", tokens["full"])
    assert client.get("/-/explain?format=json", auth=full).status_code != 403


def test_a_session_signed_in_with_a_capped_token_is_no_admin(
    client: TestClient, tokens: dict[str, str]
) -> None:
    form = client.get("/-/login")
    csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    signed = client.post(
        "/-/login",
        data={"username": "alice", "password": tokens["pull-only"], "csrf": csrf, "next": "/"},
        follow_redirects=False,
    )
    assert signed.status_code == 303
    viewer = client.get("/?format=json").json()["viewer"]
    assert viewer["signed_in"] is True and viewer["admin"] is False
    assert client.get("/-/explain?format=json").status_code == 403
