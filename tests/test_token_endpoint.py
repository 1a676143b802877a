"""GET and POST /auth/token through the ASGI app: the protocol details clients depend on."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from httpx2 import Response  # what starlette.testclient answers with
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth.reuse import Clock
from gateway.config import load_settings
from gateway.services import Services

from tests.support.gateway import PASSWORDS, jwt_parts

SERVICE = "unit-registry"
Query = list[tuple[str, str | int | float | bool | None]]  # what TestClient takes as params


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    return Path(shutil.copytree("policies", tmp_path / "policies"))


@pytest.fixture
def client(tmp_path: Path, policies: Path) -> Iterator[TestClient]:
    settings = load_settings(
        {
            "policies": str(policies),
            "data_dir": str(tmp_path / "data"),
            "service": SERVICE,
            "audit_log": str(tmp_path / "audit.log"),
        },
        environ={},
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def services_of(client: TestClient) -> Services:
    """The service container of the app under test."""
    app = client.app
    assert isinstance(app, Starlette)
    services: Services = app.state.services
    return services


def token(client: TestClient, *scopes: str, user: str | None = None, **params: str) -> Response:
    query: Query = [
        ("service", SERVICE),
        *(("scope", s) for s in scopes),
        *params.items(),
    ]
    auth = (user, PASSWORDS[user]) if user else None
    return client.get("/auth/token", params=query, auth=auth)


def access(response: Response) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = jwt_parts(response.json()["token"])[1]["access"]
    return found


def test_response_fields_have_the_types_clients_need(client: TestClient) -> None:
    answer = token(client, "repository:library/alpine:pull")
    body = answer.json()
    assert answer.status_code == 200
    assert body["token"] == body["access_token"]
    assert isinstance(body["expires_in"], int) and body["expires_in"] == 300
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["issued_at"])
    assert "refresh_token" not in body
    header, claims = jwt_parts(body["token"])
    assert (
        header["alg"] == "ES256"
        and header["x5c"]
        and re.fullmatch(r"([A-Z2-7]{4}:){11}[A-Z2-7]{4}", header["kid"])
    )
    assert claims["aud"] == SERVICE and claims["sub"] == ""
    assert all(isinstance(claims[k], int) for k in ("exp", "nbf", "iat"))
    assert claims["revision"] == client.get("/healthz").json()["revision"]


def test_every_scope_is_granted_independently_and_merged(client: TestClient) -> None:
    answer = token(
        client,
        "repository:platform/api:push",
        "repository:platform/api:pull repository:library/base:pull",
        "repository:platform/api:pull",
        "repository:qa/tool:pull,push",
        user="bob",
    )
    assert access(answer) == [
        {"type": "repository", "name": "platform/api", "actions": ["pull", "push"]},
        {"type": "repository", "name": "library/base", "actions": ["pull"]},
        {"type": "repository", "name": "qa/tool", "actions": ["pull"]},
    ]


def test_catalog_scope_for_admin(client: TestClient) -> None:
    assert access(token(client, "registry:catalog:*", user="alice")) == [
        {"type": "registry", "name": "catalog", "actions": ["*"]}
    ]
    assert access(token(client, "registry:catalog:*", user="bob"))[0]["actions"] == []


@pytest.mark.parametrize(
    ("params", "code", "words"),
    [
        ({"service": ""}, "SERVICE_INVALID", "service parameter is missing"),
        ({"service": "other"}, "SERVICE_INVALID", "unknown service 'other'"),
        ({"scope": "repository:Bad:pull"}, "SCOPE_INVALID", "repository name 'Bad'"),
        ({"scope": "repository:a/b"}, "SCOPE_INVALID", "invalid scope"),
        ({"scope": " ".join(f"repository:r/{i}:pull" for i in range(101))}, "SCOPE_INVALID", "100"),
        ({"scope": "repository:" + "a" * 9000 + ":pull"}, "REQUEST_TOO_LARGE", "8192"),
    ],
)
def test_bad_requests_get_a_clear_400(
    client: TestClient, params: dict[str, str], code: str, words: str
) -> None:
    query = {"service": SERVICE, **params}
    answer = client.get("/auth/token", params=query)
    assert answer.status_code == 400
    error = answer.json()["errors"][0]
    assert error["code"] == code and words in error["message"]


def test_bad_credentials_get_401_with_a_basic_challenge(client: TestClient) -> None:
    wrong = client.get("/auth/token", params={"service": SERVICE}, auth=("bob", "nope"))
    unknown = client.get("/auth/token", params={"service": SERVICE}, auth=("mallory", "nope"))
    for answer in (wrong, unknown):
        assert answer.status_code == 401
        assert (
            answer.headers["www-authenticate"] == 'Basic realm="http://127.0.0.1:5001/auth/token"'
        )
        assert answer.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert wrong.json() == unknown.json()  # no user enumeration in the answer
    robot = client.get("/auth/token", params={"service": SERVICE}, auth=("release", "wrong"))
    assert robot.status_code == 401


def test_offline_token_gives_a_refresh_token_that_works_by_post(client: TestClient) -> None:
    body = token(client, user="bob", offline_token="true", account="bob", client_id="docker").json()
    refresh = body["refresh_token"]
    answer = client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": SERVICE,
            "client_id": "docker",
            "scope": "repository:platform/api:pull,push repository:platform/prod/x:push",
        },
    )
    assert answer.status_code == 200
    got = answer.json()
    assert got["scope"] == "repository:platform/api:pull,push"
    assert got["refresh_token"] == refresh  # no rotation: Docker keeps the one it has
    assert jwt_parts(got["access_token"])[1]["sub"] == "bob"


def test_password_grant_by_post(client: TestClient) -> None:
    answer = client.post(
        "/auth/token",
        data={
            "grant_type": "password",
            "username": "ci-deploy",
            "password": PASSWORDS["ci-deploy"],
            "service": SERVICE,
            "client_id": "containerd",
            "access_type": "offline",
            "scope": "repository:platform/app:pull,push",
        },
    )
    assert answer.status_code == 200
    assert answer.json()["scope"] == "repository:platform/app:pull,push"
    assert "refresh_token" in answer.json()
    bad = client.post(
        "/auth/token",
        data={
            "grant_type": "password",
            "username": "ci-deploy",
            "password": "x",
            "service": SERVICE,
        },
    )
    assert bad.status_code == 401
    odd = client.post("/auth/token", data={"grant_type": "client_credentials", "service": SERVICE})
    assert odd.status_code == 400 and "grant_type" in odd.json()["errors"][0]["message"]
    json_body = client.post("/auth/token", json={"grant_type": "password"})
    assert json_body.status_code == 400


def test_refresh_token_stops_working_when_the_user_leaves(
    client: TestClient, policies: Path
) -> None:
    refresh = token(client, user="carol", offline_token="true").json()["refresh_token"]
    people = policies / "people.yaml"
    text = people.read_text()
    start = text.index("  carol:")
    end = text.index("  dave:")
    people.write_text(text[:start] + text[end:])
    teams = policies / "teams.yaml"
    teams.write_text(teams.read_text().replace("viewers: [carol]", "viewers: []"))
    (policies / "tests" / "access.yaml").write_text("[]\n")
    assert services_of(client).source.reload()
    answer = client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh, "service": SERVICE},
    )
    assert answer.status_code == 401


def test_audit_line_per_request_without_secrets(client: TestClient, tmp_path: Path) -> None:
    token(client, "repository:platform/api:pull,delete", user="bob", offline_token="true")
    client.get("/auth/token", params={"service": SERVICE}, auth=("bob", "hunter2-wrong"))
    lines = (tmp_path / "audit.log").read_text().splitlines()
    import json

    issued, denied = (json.loads(line) for line in lines[-2:])
    assert issued["subject"] == "user:bob" and issued["auth"] == "password"
    assert issued["requested"] == ["repository:platform/api:delete,pull"]
    assert issued["granted"] == [
        {"type": "repository", "name": "platform/api", "actions": ["pull"]}
    ]
    assert issued["revision"] and issued["client"] == "testclient" and issued["duration_ms"] >= 0
    assert denied["outcome"] == "denied" and denied["status"] == 401 and denied["username"] == "bob"
    text = "\n".join(lines)
    assert PASSWORDS["bob"] not in text and "hunter2-wrong" not in text and "eyJ" not in text


def test_a_hostile_user_agent_stays_inside_its_audit_field(
    client: TestClient, tmp_path: Path
) -> None:
    """A user agent with a quote, a backslash, DEL and non-ASCII characters is one escaped,
    ASCII-only JSON string in one audit line."""
    agent = 'x", "subject": "user:alice\\\x7f\u00e9\u00ff'
    client.get(
        "/auth/token",
        params={"service": SERVICE, "scope": "repository:library/alpine:pull"},
        headers={b"user-agent": agent.encode()},
    )
    lines = (tmp_path / "audit.log").read_bytes().splitlines()
    assert lines[-1].isascii() and b"\x7f" not in lines[-1]
    record = audit_lines(tmp_path)[-1]
    # The header goes out as UTF-8 bytes; the gateway reads header bytes as Latin-1.
    assert record["user_agent"] == agent.encode().decode("latin-1")
    assert record["subject"] == "anonymous"


def test_system_routes(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["revision"]
    assert client.get("/readyz").status_code == 200
    keys = client.get("/.well-known/jwks.json").json()["keys"]
    assert keys[0]["kty"] == "EC" and keys[0]["kid"]
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "NOT_FOUND"


def audit_lines(tmp_path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]


def test_a_repeated_request_is_answered_again_and_audited_again(
    client: TestClient, tmp_path: Path
) -> None:
    token(client, "repository:platform/app:pull,push", user="ci-deploy")
    first = token(client, "repository:platform/app:pull,push", user="ci-deploy")  # kept
    again = token(client, "repository:platform/app:pull,push", user="ci-deploy")
    assert first.status_code == again.status_code == 200
    # The same signed token (docker push asks many times), under a new request id each time.
    assert again.json()["token"] == first.json()["token"]
    assert 0 < again.json()["expires_in"] <= first.json()["expires_in"]
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert again.headers["content-type"] == "application/json"
    assert again.headers["cache-control"] == "no-store"
    made, replayed = audit_lines(tmp_path)[-2:]  # the second answer, and its replay
    assert "reused" not in made and replayed["reused"] is True
    assert replayed["request_id"] == again.headers["x-request-id"]
    for key in ("subject", "auth", "requested", "granted", "revision", "outcome", "status"):
        assert replayed[key] == made[key], key
    # A different header (here: no credentials) is a different request.
    assert access(token(client, "repository:platform/app:pull,push")) == [
        {"type": "repository", "name": "platform/app", "actions": []}
    ]


def test_right_credentials_replayed_never_vouch_for_wrong_ones(client: TestClient) -> None:
    scope = "repository:platform/app:pull,push"
    assert token(client, scope, user="ci-deploy").status_code == 200
    query: Query = [("service", SERVICE), ("scope", scope)]
    wrong = client.get("/auth/token", params=query, auth=("ci-deploy", "not-the-secret"))
    assert wrong.status_code == 401


def replayed(tmp_path: Path) -> bool:
    """Whether the last token request was answered by a replay (so says its audit line)."""
    return audit_lines(tmp_path)[-1].get("reused") is True


def test_a_new_policy_revision_ends_replays(
    client: TestClient, policies: Path, tmp_path: Path
) -> None:
    scope = "repository:platform/app:pull,push"
    for _ in range(3):  # kept from the second answer on: the third is a replay
        before = token(client, scope, user="ci-deploy")
    assert replayed(tmp_path)
    grants = policies / "access.yaml"
    grants.write_text(grants.read_text() + "\n# a new revision, same rights\n")
    services = services_of(client)
    assert services.source.reload()
    after = token(client, scope, user="ci-deploy")
    assert not replayed(tmp_path)
    assert after.json()["token"] != before.json()["token"]
    assert jwt_parts(after.json()["token"])[1]["revision"] == services.source.status().revision


def test_a_new_signing_key_ends_replays(client: TestClient, tmp_path: Path) -> None:
    for _ in range(3):
        before = token(client, "repository:library/alpine:pull")
    assert replayed(tmp_path)
    services = services_of(client)
    services.keys.rotate()
    after = token(client, "repository:library/alpine:pull")
    assert not replayed(tmp_path)
    assert jwt_parts(after.json()["token"])[0]["kid"] == services.keys.current().kid
    assert jwt_parts(before.json()["token"])[0]["kid"] != services.keys.current().kid


def test_a_lockout_is_not_bypassed_by_a_replay(client: TestClient, tmp_path: Path) -> None:
    scope = "repository:platform/app:pull"
    for _ in range(3):  # the third is a replay
        assert token(client, scope, user="bob").status_code == 200
    assert audit_lines(tmp_path)[-1]["reused"] is True
    query: Query = [("service", SERVICE), ("scope", scope)]
    for attempt in range(10):
        client.get("/auth/token", params=query, auth=("bob", f"guess-{attempt}"))
    locked = token(client, scope, user="bob")
    assert locked.status_code == 429
    assert locked.json()["errors"][0]["code"] == "TOO_MANY_REQUESTS"


def test_answers_with_a_refresh_token_are_never_replayed(
    client: TestClient, tmp_path: Path
) -> None:
    answers = [token(client, user="ci-deploy", offline_token="true") for _ in range(3)]
    refresh_tokens = {a.json()["refresh_token"] for a in answers}
    assert len(refresh_tokens) == 3  # each one made for its request
    assert not any(line.get("reused") for line in audit_lines(tmp_path))


def test_an_unexpected_error_is_a_registry_500_without_a_traceback(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(services_of(client).tokens, "answer", broken)
    answer = token(client, "repository:library/alpine:pull")
    assert answer.status_code == 500
    assert answer.json()["errors"][0]["code"] == "INTERNAL"
    assert "boom" not in answer.text and "Traceback" not in answer.text
    assert answer.headers["x-request-id"]


@pytest.mark.parametrize(
    "query",
    [
        b"service=r&scope=repository%3Aa%2Fb%3Apull%2Cpush&scope=repository:c:pull",
        b"scope=a+b&scope=&flag&=x&&service=%E2%9C%93&q=%zz&plus=%2B",
        b"scope=repository:a:pull%20repository:b:push&offline_token=true",
        "service=caf\u00e9".encode("latin-1"),
    ],
)
def test_query_parameters_are_read_as_starlette_reads_them(query: bytes) -> None:
    from starlette.datastructures import QueryParams

    from gateway.auth.request import parse_urlencoded as query_params

    expected: dict[str, list[str]] = {}
    for key, value in QueryParams(query).multi_items():
        expected.setdefault(key, []).append(value)
    assert query_params(query) == expected


def test_a_remembered_sign_in_ends_with_the_policy_revision(
    client: TestClient, policies: Path
) -> None:
    assert token(client, "repository:platform/app:pull", user="carol").status_code == 200
    people = policies / "people.yaml"
    text = people.read_text()
    people.write_text(text[: text.index("  carol:")] + text[text.index("  dave:") :])
    teams = policies / "teams.yaml"
    teams.write_text(teams.read_text().replace("viewers: [carol]", "viewers: []"))
    (policies / "tests" / "access.yaml").write_text("[]\n")
    assert services_of(client).source.reload()
    # Another scope, the same header: signed in afresh, and carol is gone.
    assert token(client, "repository:platform/other:pull", user="carol").status_code == 401


class SteppedClock(Clock):
    """The reuse layer's clock, moved by the test; midnight wherever the test puts it."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0
        self.midnight = float("inf")

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    def next_midnight(self, now: float) -> float:
        return self.midnight


def test_replays_stop_at_midnight(client: TestClient, tmp_path: Path) -> None:
    clock = SteppedClock()
    services_of(client).tokens.reuse.clock = clock
    clock.midnight = clock.monotonic() + 20  # a robot's `expires` date acts at midnight
    scope = "repository:platform/app:pull,push"
    for _ in range(3):
        token(client, scope, user="ci-deploy")
    assert replayed(tmp_path)
    clock.offset += 21  # past midnight, within the 30 s reuse window
    assert token(client, scope, user="ci-deploy").status_code == 200
    assert not replayed(tmp_path)


def test_password_sign_ins_are_replayed_only_within_the_auth_cache_ttl(
    tmp_path: Path, policies: Path
) -> None:
    settings = load_settings(
        {
            "policies": str(policies),
            "data_dir": str(tmp_path / "data"),
            "service": SERVICE,
            "audit_log": str(tmp_path / "audit.log"),
            "auth_cache_ttl": "5",
        },
        environ={},
    )
    with TestClient(create_app(settings)) as client:
        clock = SteppedClock()
        services_of(client).tokens.reuse.clock = clock
        scope = "repository:platform/app:pull"
        for _ in range(3):
            token(client, scope, user="bob")
        assert replayed(tmp_path)
        clock.offset += 4
        token(client, scope, user="bob")
        assert replayed(tmp_path)  # a robot would be replayed for 30 s; bob for 5
        clock.offset += 2
        token(client, scope, user="bob")
        assert not replayed(tmp_path)


def test_a_refused_action_is_audited_as_denied(client: TestClient, tmp_path: Path) -> None:
    answer = token(
        client, "repository:platform/app:pull,push", "repository:library/x:pull", user="carol"
    )
    assert answer.status_code == 200  # a token is issued; push on platform/app is not in it
    line = audit_lines(tmp_path)[-1]
    assert line["denied"] == [{"type": "repository", "name": "platform/app", "actions": ["push"]}]
    full = token(client, "repository:platform/app:pull,push", user="ci-deploy")
    assert full.status_code == 200
    assert "denied" not in audit_lines(tmp_path)[-1]
