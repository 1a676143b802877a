"""/healthz is public: it says where a rejected policy went wrong, never what its files say;
admins read the whole error on the UI's Status page."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings
from gateway.services import Services

EXAMPLE = Path(__file__).resolve().parents[1] / "policies"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    policies = shutil.copytree(EXAMPLE, tmp_path / "policies")
    settings = load_settings(
        {"policies": str(policies), "data_dir": str(tmp_path / "data"), "watch": "false"},
        environ={},
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def services(client: TestClient) -> Services:
    assert isinstance(client.app, Starlette)
    found: Services = client.app.state.services
    return found


def test_healthz_says_where_not_what(client: TestClient) -> None:
    source = services(client).source
    (source.directory / "zz.yaml").write_text("mallory-secret-name: {}\n")  # echoed by the loader
    assert source.reload() is False
    health = client.get("/healthz").json()
    assert health["status"] == "degraded"
    assert "zz.yaml:" in health["error"] and "mallory" not in health["error"]
    assert "mallory" not in client.get("/readyz").text
    admin = client.get("/-/status?format=json", auth=("alice", "alice-example-password")).json()
    assert "zz.yaml:" in admin["policy"]["last_error"]
    viewer = client.get("/-/status?format=json", auth=("carol", "carol-example-password")).json()
    assert "mallory" not in str(viewer["policy"]["last_error"])
