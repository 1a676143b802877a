"""Sign-in pieces on their own: the verification cache, htpasswd, tokens. The commands that
make robots, tokens and password hashes: tests/realworld/test_signin.py. Lockout and the
failure floor: tests/test_lockout.py."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from httpx2 import Response  # what starlette.testclient answers with
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth import identity as identity_module
from gateway.auth.credentials import TOKEN_PREFIX, new_secret, token_entry
from gateway.auth.htpasswd import parse
from gateway.auth.verifycache import VerificationCache
from gateway.config import load_settings
from gateway.policy.engine import Engine
from gateway.policy.load import load_texts
from gateway.policy.model import Role, Subject

from tests.support.gateway import PASSWORDS, jwt_parts

SERVICE = "unit-registry"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the verification cache -------------------------------------------------------------------


def test_cache_hits_only_the_same_credentials_and_stored_hash_within_the_ttl() -> None:
    clock = Clock()
    cache = VerificationCache(ttl=300, size=10, clock=clock)
    cache.put("policy", "bob", "right", "$2b$hash1")
    assert cache.get("policy", "bob", "right", "$2b$hash1") is True
    assert cache.get("policy", "bob", "wrong", "$2b$hash1") is None
    assert cache.get("policy", "bob", "right", "$2b$hash2") is None  # the hash changed
    assert cache.get("htpasswd", "bob", "right", "$2b$hash1") is None
    assert "right" not in repr(cache._items)  # keys are HMACs; no password is kept
    clock.now += 301
    assert cache.get("policy", "bob", "right", "$2b$hash1") is None


def test_cache_is_bounded_and_can_be_off() -> None:
    cache = VerificationCache(ttl=300, size=3)
    for i in range(10):
        cache.put("ldap", f"u{i}", "p")
    assert len(cache) == 3 and cache.get("ldap", "u9", "p") and not cache.get("ldap", "u0", "p")
    assert cache.forget("u9") == 1 and len(cache) == 2
    off = VerificationCache(ttl=0)
    off.put("ldap", "u", "p")
    assert off.get("ldap", "u", "p") is None


# -- htpasswd ---------------------------------------------------------------------------------


def test_htpasswd_takes_bcrypt_entries_only() -> None:
    good = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$")
    text = (
        "# comment\n\n"
        f"hana:{good}\n"
        "md5:$apr1$abcdefgh$0123456789abcdefghijkl\n"
        "sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
        "plain:secret\n"
        "broken line\n"
        f"hana:{good}\n"
    )
    entries = parse(text, "htpasswd")
    assert entries.hashes == {"hana": good}
    assert len(entries.warnings) == 5
    assert "only bcrypt" in entries.warnings[0] and "htpasswd:4" in entries.warnings[0]


# -- the engine and directory users -----------------------------------------------------------

POLICY = """\
users:
  alice: {admin: true}
teams:
  devs:
    ldap_groups:
      - {group: "cn=Devs,ou=groups,dc=example,dc=org", role: contributor}
namespaces:
  devs: {teams: [devs]}
  qa: {visibility: protected}
"""


def test_a_directory_user_not_in_the_policy_is_signed_in_with_mapped_teams_only() -> None:
    engine = Engine(load_texts({"p.yaml": POLICY}).policy)
    groups = frozenset({"cn=devs,ou=groups,dc=example,dc=org"})
    lara = Subject("user", "lara", groups, directory=True)
    assert engine.known(lara) and engine.teams_of(lara) == {"devs": Role.CONTRIBUTOR}
    assert engine.decide(lara, "repository", "devs/app", ["pull", "push"]).granted == (
        "pull",
        "push",
    )
    assert engine.decide(lara, "repository", "qa/tool", ["pull"]).granted == ("pull",)
    assert engine.decide(lara, "repository", "lara/app", ["pull"]).granted == ()  # no namespace
    # Without the directory flag the same name is nobody (a forged name cannot sign in).
    assert not engine.known(Subject("user", "lara", groups))
    # A policy user signed in by a directory keeps what the policy gives (admin here).
    assert engine.is_admin(Subject("user", "alice", directory=True))


# -- the token endpoint: cache, tokens, refresh -----------------------------------------------


@pytest.fixture
def tokens() -> dict[str, str]:
    return {name: new_secret(TOKEN_PREFIX) for name in ("full", "pull-only", "expired")}


@pytest.fixture
def client(tmp_path: Path, tokens: dict[str, str]) -> Iterator[TestClient]:
    policies = Path(shutil.copytree("policies", tmp_path / "policies"))
    entries = [
        token_entry("tina", "full", tokens["full"]),
        token_entry("tina", "pull-only", tokens["pull-only"], actions=["pull"]),
        token_entry("tina", "expired", tokens["expired"], expires=dt.date(2020, 1, 1)),
    ]
    body = "".join(e.split("tokens:\n", 1)[1] for e in entries)
    (policies / "tina.yaml").write_text(f"users:\n  tina:\n    tokens:\n{body}")
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


def get(client: TestClient, user: str, password: str, *scopes: str, **params: str) -> Response:
    return client.get(
        "/auth/token",
        params=[("service", SERVICE), *(("scope", s) for s in scopes), *params.items()],
        auth=(user, password),
    )


def test_twenty_requests_cost_one_slow_hash(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = identity_module.verify_password

    def counting(password: str, stored: str) -> bool:
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(identity_module, "verify_password", counting)
    for i in range(20):
        answer = get(client, "alice", PASSWORDS["alice"], f"repository:library/l{i}:pull")
        assert answer.status_code == 200
    assert calls == [PASSWORDS["alice"]]
    for i in range(3):
        assert get(client, "alice", f"wrong-{i}").status_code == 401
    wrong = [call for call in calls if call.startswith("wrong")]
    assert wrong == ["wrong-0", "wrong-1", "wrong-2"]  # a wrong password is never remembered
    # (the same wrong password again is not even checked again: tests/test_lockout.py)


def test_personal_access_tokens_are_capped_expire_and_refresh_with_their_cap(
    client: TestClient, tokens: dict[str, str]
) -> None:
    scope = "repository:tina/app:pull,push"
    full = get(client, "tina", tokens["full"], scope)
    assert jwt_parts(full.json()["token"])[1]["access"][0]["actions"] == ["pull", "push"]
    capped = get(client, "tina", tokens["pull-only"], scope, offline_token="true")
    assert jwt_parts(capped.json()["token"])[1]["access"][0]["actions"] == ["pull"]
    refreshed = client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": capped.json()["refresh_token"],
            "service": SERVICE,
            "scope": scope,
        },
    )
    assert refreshed.status_code == 200 and refreshed.json()["scope"] == "repository:tina/app:pull"
    assert get(client, "tina", tokens["expired"]).status_code == 401
    assert get(client, "tina", tokens["full"] + "x").status_code == 401
    assert get(client, "bob", tokens["full"]).status_code == 401  # tina's, not bob's
    answer = get(client, "tina", tokens["full"], "registry:catalog:*")
    assert jwt_parts(answer.json()["token"])[1]["access"][0]["actions"] == []


def test_429_is_in_the_registry_error_format(client: TestClient) -> None:
    for i in range(10):
        get(client, "nobody-at-all", f"guess-{i}")
    answer = get(client, "nobody-at-all", "guess-10")
    assert answer.status_code == 429
    error = answer.json()["errors"][0]
    assert error["code"] == "TOO_MANY_REQUESTS" and error["detail"]["retry_after"] >= 1
    assert int(answer.headers["Retry-After"]) == error["detail"]["retry_after"]
