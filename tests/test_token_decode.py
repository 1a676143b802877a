"""`registry-gateway token decode`: what the README's curl example pipes a token answer into,
to read the access a token carries. The token comes from the real token endpoint (in-process)."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.cli import main
from gateway.config import load_settings

from tests.support.gateway import PASSWORDS

SERVICE = "registry.local"


@pytest.fixture(scope="module")
def answer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The token endpoint's JSON answer for bob asking pull,push on bob/hello and platform/prod/api."""
    tmp = tmp_path_factory.mktemp("decode")
    settings = load_settings(
        {
            "policies": str(shutil.copytree("policies", tmp / "policies")),
            "data_dir": str(tmp / "data"),
            "service": SERVICE,
            "audit_log": str(tmp / "audit.log"),
        },
        environ={},
    )
    with TestClient(create_app(settings)) as client:
        response = client.get(
            "/auth/token",
            params=[
                ("service", SERVICE),
                ("scope", "repository:bob/hello:pull,push"),
                ("scope", "repository:platform/prod/api:pull,push"),
            ],
            auth=("bob", PASSWORDS["bob"]),
        )
        assert response.status_code == 200
        yield response.text


def decode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], text: str, *flags: str
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    code = main(["token", "decode", *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_decode_shows_the_granted_access_of_an_answer(
    answer: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = decode(monkeypatch, capsys, answer)
    assert code == 0, err
    lines = out.splitlines()
    assert "subject  bob" in lines
    assert f"issuer   registry-gateway   audience {SERVICE}" in lines
    # Only what was granted: bob may not push to platform/prod/.
    assert lines[lines.index("access") + 1 :][:2] == [
        "  repository:bob/hello  pull,push",
        "  repository:platform/prod/api  pull",
    ]
    assert lines[0].startswith("header   alg ES256, kid ")
    assert "NOT verified" in err


def test_decode_json_takes_a_bare_token(
    answer: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token = json.loads(answer)["token"]
    code, out, _ = decode(monkeypatch, capsys, token + "\n", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["header"]["alg"] == "ES256"
    assert data["claims"]["sub"] == "bob"
    assert data["claims"]["access"][1] == {
        "type": "repository",
        "name": "platform/prod/api",
        "actions": ["pull"],
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "three dot-separated parts"),
        ('{"errors": [{"code": "UNAUTHORIZED"}]}', "holds no token"),
        ("{not json", "neither a token nor a JSON answer"),
        ("a.b.c", "header is not base64url-encoded JSON"),
        ("W10.e30.x", "header is not a JSON object"),  # [] and {}
        ("x" * (1024 * 1024 + 1), "over 1048576 bytes"),
    ],
)
def test_decode_refuses_what_is_not_a_token(
    text: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = decode(monkeypatch, capsys, text)
    assert code == 1
    assert out == ""
    assert message in err
    assert "Traceback" not in err
