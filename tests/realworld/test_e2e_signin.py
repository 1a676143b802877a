"""Sign-in backends with real software: slapd, htpasswd files, the registry, skopeo, Docker CLI.

One stack serves the module: a gateway with the example policy plus `directory.yaml` (a user
with personal access tokens, a team mapped from LDAP groups), an htpasswd file, a real slapd
and a real registry. Lockouts get a gateway of their own with tight limits; they tell clients
apart by X-Forwarded-For, which uvicorn honours from 127.0.0.1.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest

from gateway.auth.credentials import ROBOT_PREFIX, TOKEN_PREFIX, new_secret, sha256_hex

from tests.support.binaries import require
from tests.support.clients import CompletedProcess, DockerCLI, Skopeo, ok
from tests.support.fixtures import OciImage
from tests.support.gateway import (
    EXAMPLE_POLICIES,
    PASSWORDS,
    Gateway,
    Stack,
    creds,
    jwt_parts,
    refused,
    start_gateway,
    start_stack,
)
from tests.support.ldap import (
    PASSWORDS as LDAP_PASSWORDS,
)
from tests.support.ldap import (
    SERVICE_DN,
    SERVICE_PASSWORD,
    SUFFIX,
    Slapd,
    start_slapd,
)

CACHE_TTL = 2.0  # seconds: short, so that directory changes show within a test
TINA_PASSWORD = "tina-policy-password"
HANA_PASSWORD = "hana-htpasswd-password"


@dataclass
class Setup:
    stack: Stack
    slapd: Slapd
    htpasswd: Path
    tokens: dict[str, str]  # token name -> secret, all of user tina

    @property
    def gateway(self) -> Gateway:
        return self.stack.gateway


def bcrypt4(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def directory_policy(tokens: dict[str, str]) -> str:
    sha = {name: sha256_hex(secret) for name, secret in tokens.items()}
    return f"""\
users:
  tina:
    password: "{bcrypt4(TINA_PASSWORD)}"
    tokens:
      laptop:
        token_sha256: "{sha["laptop"]}"
      readonly:
        token_sha256: "{sha["readonly"]}"
        actions: [pull]
      old:
        token_sha256: "{sha["old"]}"
        expires: 2020-01-01
teams:
  devs:
    description: Developers, from the directory
    ldap_groups:
      - group: "cn=platform-devs,ou=groups,{SUFFIX}"
        role: contributor
      - "cn=readers,ou=groups,{SUFFIX}"
namespaces:
  devs:
    teams: [devs]
"""


def policy_dir(root: Path, extra: str) -> Path:
    policies = root / "policies-src"
    shutil.copytree(EXAMPLE_POLICIES, policies)
    (policies / "directory.yaml").write_text(extra)
    return policies


def ldap_args(slapd: Slapd) -> tuple[list[str], dict[str, str]]:
    args = [
        "--ldap-url", slapd.url,
        "--ldap-bind-dn", SERVICE_DN,
        "--ldap-user-base", f"ou=people,{SUFFIX}",
        "--ldap-group-base", f"ou=groups,{SUFFIX}",
        "--ldap-connect-timeout", "1s",
        "--ldap-timeout", "2s",
    ]  # fmt: skip
    return args, {"REGISTRY_GATEWAY_LDAP_BIND_PASSWORD": SERVICE_PASSWORD}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require("docker-registry", "docker-registry")
    root = tmp_path_factory.mktemp("signin")
    slapd = start_slapd(root / "ldap")
    tokens = {name: new_secret(TOKEN_PREFIX) for name in ("laptop", "readonly", "old")}
    htpasswd = root / "auth" / "htpasswd"
    htpasswd.parent.mkdir()
    htpasswd.write_text(f"# registry users\nhana:{bcrypt4(HANA_PASSWORD)}\n")
    args, env = ldap_args(slapd)
    args += [
        "--htpasswd", str(htpasswd),
        "--auth-cache-ttl", str(CACHE_TTL),
        "--lockout-failures", "1000",
        "--lockout-address-failures", "1000",
    ]  # fmt: skip
    try:
        stack = start_stack(
            root / "stack", policies=policy_dir(root, directory_policy(tokens)), args=args, env=env
        )
    except Exception:
        slapd.stop()
        raise
    yield Setup(stack, slapd, htpasswd, tokens)
    stack.stop()
    slapd.stop()


def get_token(
    gateway: Gateway,
    user: str | None,
    password: str | None,
    *scopes: str,
    client: str | None = None,
) -> httpx.Response:
    headers = {"X-Forwarded-For": client} if client else {}
    auth = (user, password) if user is not None and password is not None else None
    return httpx.get(
        f"{gateway.url}/auth/token",
        params=[("service", gateway.service), *(("scope", s) for s in scopes)],
        auth=auth,
        headers=headers,
        timeout=30,
    )


def granted(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    access = jwt_parts(response.json()["token"])[1]["access"]
    return sorted(access[0]["actions"]) if access else []


def push(
    skopeo: Skopeo, image: OciImage, stack: Stack, repository: str, who: str
) -> CompletedProcess:
    return skopeo.copy(image.ref("v1"), stack.ref(f"{repository}:v1"), dest_creds=who)


# -- LDAP -------------------------------------------------------------------------------------


def test_ldap_user_in_a_mapped_group_pushes_to_the_team_namespace(
    setup: Setup, skopeo: Skopeo, oci_image: OciImage
) -> None:
    lara = f"lara:{LDAP_PASSWORDS['lara']}"
    ok(push(skopeo, oci_image, setup.stack, "devs/app", lara))
    # leo is a viewer through the posixGroup `readers`: pulls, never pushes.
    leo = f"leo:{LDAP_PASSWORDS['leo']}"
    ok(skopeo.inspect(setup.stack.ref("devs/app:v1"), creds=leo))
    assert refused(push(skopeo, oci_image, setup.stack, "devs/leo-was-here", leo))
    # erin is in the policy without a password: LDAP signs her in, and she owns erin/.
    ok(push(skopeo, oci_image, setup.stack, "erin/tool", f"erin:{LDAP_PASSWORDS['erin']}"))
    assert refused(push(skopeo, oci_image, setup.stack, "devs/app", "lara:wrong-password"))
    issued = [r for r in setup.gateway.audit() if r.get("auth") == "ldap"]
    assert {"user:lara", "user:leo", "user:erin"} <= {r["subject"] for r in issued}


def test_docker_login_of_an_ldap_user_keeps_the_password_not_a_refresh_token(
    setup: Setup, skopeo: Skopeo, docker_cli: DockerCLI, oci_image: OciImage
) -> None:
    lara = f"lara:{LDAP_PASSWORDS['lara']}"
    ok(push(skopeo, oci_image, setup.stack, "devs/docker-seen", lara))
    ok(docker_cli.login(setup.stack.host, "lara", LDAP_PASSWORDS["lara"]))
    stored = docker_cli.config()["auths"][setup.stack.host]
    assert "identitytoken" not in stored and "auth" in stored
    ok(docker_cli.manifest_inspect(f"{setup.stack.host}/devs/docker-seen:v1"))


def test_removing_an_ldap_user_from_the_group_removes_the_right_after_the_cache_ttl(
    setup: Setup, skopeo: Skopeo, oci_image: OciImage
) -> None:
    password = LDAP_PASSWORDS["lara"]
    scope = "repository:devs/app:pull,push"
    assert granted(get_token(setup.gateway, "lara", password, scope)) == ["pull", "push"]
    setup.slapd.remove_member("platform-devs", "lara")
    try:
        time.sleep(CACHE_TTL + 0.5)
        assert granted(get_token(setup.gateway, "lara", password, scope)) == []
        assert refused(push(skopeo, oci_image, setup.stack, "devs/app", f"lara:{password}"))
    finally:
        setup.slapd.add_member("platform-devs", "lara")


def test_ldap_down_fails_ldap_users_fast_and_nobody_else(
    setup: Setup, skopeo: Skopeo, oci_image: OciImage
) -> None:
    setup.slapd.stop()
    try:
        time.sleep(CACHE_TTL + 0.5)  # nothing remembered from earlier tests
        started = time.monotonic()
        answer = get_token(setup.gateway, "leo", LDAP_PASSWORDS["leo"], "repository:devs/app:pull")
        assert time.monotonic() - started < 2.0
        assert answer.status_code == 401
        assert answer.json()["errors"][0]["code"] == "UNAUTHORIZED"
        denied = [r for r in setup.gateway.audit() if r.get("username") == "leo"][-1]
        assert denied["outcome"] == "denied" and "LDAP server" in denied["error"]
        # Policy users, htpasswd users and robots do not notice.
        assert get_token(setup.gateway, "alice", PASSWORDS["alice"]).status_code == 200
        assert get_token(setup.gateway, "hana", HANA_PASSWORD).status_code == 200
        ok(push(skopeo, oci_image, setup.stack, "platform/while-ldap-down", creds("bob")))
        health = httpx.get(f"{setup.gateway.url}/healthz").json()
        assert health["status"] == "ok" and health["sign_in"]["ldap"]["down"] is True
    finally:
        setup.slapd.start()
    # The gateway leaves a down server alone a few seconds (DOWN_RETRY), and each failed try
    # meanwhile is answered after the failure floor, which a slow bind to a down server raises.
    deadline = time.monotonic() + 20
    while get_token(setup.gateway, "leo", LDAP_PASSWORDS["leo"]).status_code != 200:
        assert time.monotonic() < deadline, "LDAP sign-in never came back"
        time.sleep(0.5)


# -- htpasswd ---------------------------------------------------------------------------------


def test_htpasswd_user_signs_in_and_file_changes_are_picked_up(
    setup: Setup, skopeo: Skopeo, oci_image: OciImage
) -> None:
    ok(push(skopeo, oci_image, setup.stack, "qa/tool", creds("dave")))
    hana = f"hana:{HANA_PASSWORD}"
    # Not in the policy: a signed-in user all the same (protected pulls), with no team.
    ok(skopeo.inspect(setup.stack.ref("qa/tool:v1"), creds=hana))
    assert refused(push(skopeo, oci_image, setup.stack, "qa/hana", hana))
    new_password = "hana-rotated-password"
    tmp = setup.htpasswd.with_suffix(".new")
    tmp.write_text(f"hana:{bcrypt4(new_password)}\nhugo:{bcrypt4('hugo-password')}\n")
    tmp.replace(setup.htpasswd)  # as editors and config management do
    deadline = time.monotonic() + 10
    while get_token(setup.gateway, "hugo", "hugo-password").status_code != 200:
        assert time.monotonic() < deadline, "the gateway never re-read the htpasswd file"
        time.sleep(0.2)
    # The old password was verified (and remembered) before: a new hash forgets it at once.
    assert get_token(setup.gateway, "hana", HANA_PASSWORD).status_code == 401
    ok(skopeo.inspect(setup.stack.ref("qa/tool:v1"), creds=f"hana:{new_password}"))


# -- personal access tokens -------------------------------------------------------------------


def test_personal_access_token_for_docker_login_and_skopeo_push(
    setup: Setup, skopeo: Skopeo, docker_cli: DockerCLI, oci_image: OciImage
) -> None:
    laptop = setup.tokens["laptop"]
    ok(push(skopeo, oci_image, setup.stack, "tina/app", f"tina:{laptop}"))
    ok(docker_cli.login(setup.stack.host, "tina", laptop))
    stored = docker_cli.config()["auths"][setup.stack.host]
    assert "identitytoken" in stored and laptop not in str(stored)
    inspected = ok(docker_cli.manifest_inspect(f"{setup.stack.host}/tina/app:v1"))
    assert '"schemaVersion": 2' in inspected.stdout
    records = setup.gateway.audit()
    assert any(r.get("auth") == "access_token" and r.get("token_name") == "laptop" for r in records)
    refreshed = [
        r for r in records if r.get("grant_type") == "refresh_token" and r["status"] == 200
    ]
    assert refreshed and refreshed[-1]["subject"] == "user:tina"


def test_a_narrower_token_caps_the_grant_and_an_expired_one_fails(
    setup: Setup, skopeo: Skopeo, docker_cli: DockerCLI, oci_image: OciImage
) -> None:
    scope = "repository:tina/app:pull,push,delete"
    assert granted(get_token(setup.gateway, "tina", TINA_PASSWORD, scope)) == [
        "delete",
        "pull",
        "push",
    ]
    assert granted(get_token(setup.gateway, "tina", setup.tokens["readonly"], scope)) == ["pull"]
    readonly = f"tina:{setup.tokens['readonly']}"
    assert refused(push(skopeo, oci_image, setup.stack, "tina/readonly", readonly))
    expired = setup.tokens["old"]
    assert get_token(setup.gateway, "tina", expired).status_code == 401
    assert refused(skopeo.inspect(setup.stack.ref("tina/app:v1"), creds=f"tina:{expired}"))
    assert docker_cli.login(setup.stack.host, "tina", expired).returncode != 0
    # A token is checked only as a token: it is no password, and no one else's token.
    assert get_token(setup.gateway, "dave", setup.tokens["laptop"]).status_code == 401


# -- lockout ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """A gateway that locks a name after 4 failures and an address after 8, for 2 seconds."""
    root = tmp_path_factory.mktemp("lockout")
    tokens = {name: new_secret(TOKEN_PREFIX) for name in ("laptop", "readonly", "old")}
    args = [
        "--lockout-failures", "4",
        "--lockout-address-failures", "8",
        "--lockout-window", "60s",
        "--lockout-duration", "2s",
        "--lockout-backoff", "0",
    ]  # fmt: skip
    gateway = start_gateway(root, policies=policy_dir(root, directory_policy(tokens)), args=args)
    yield gateway, tokens
    gateway.stop()


def test_lockout_after_repeated_failures_and_recovery_after_the_lockout(
    strict: tuple[Gateway, dict[str, str]],
) -> None:
    gateway, tokens = strict
    attacker, tina_at = "10.0.0.66", "10.0.0.7"
    for i in range(4):
        assert get_token(gateway, "tina", f"guess-{i}", client=attacker).status_code == 401
    # The attacker's address is locked out of tina, the right password too: GET and POST alike.
    locked = get_token(gateway, "tina", TINA_PASSWORD, client=attacker)
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["Retry-After"]) <= 2
    assert locked.json()["errors"][0]["code"] == "TOO_MANY_REQUESTS"
    form = {"grant_type": "password", "username": "tina", "password": TINA_PASSWORD}
    posted = httpx.post(
        f"{gateway.url}/auth/token",
        data={**form, "service": gateway.service, "client_id": "test"},
        headers={"X-Forwarded-For": attacker},
    )
    assert posted.status_code == 429 and "Retry-After" in posted.headers
    # ... but not tina, from her own address (a stranger cannot lock anyone out) ...
    assert get_token(gateway, "tina", TINA_PASSWORD, client=tina_at).status_code == 200
    # ... and never tina's personal access tokens.
    assert get_token(gateway, "tina", tokens["laptop"], client=attacker).status_code == 200
    records = gateway.audit()
    assert any(r.get("lockout_started") == ["user"] for r in records)
    assert any(r["outcome"] == "locked" and r["status"] == 429 for r in records)
    time.sleep(2.2)
    assert get_token(gateway, "tina", TINA_PASSWORD, client=attacker).status_code == 200


def test_a_locked_address_is_refused_every_guess_and_nobody_else_is(
    strict: tuple[Gateway, dict[str, str]],
) -> None:
    gateway, _ = strict
    attacker = "10.0.0.99"

    def guess(i: int) -> int:
        return get_token(gateway, f"nobody-{i}", "guess", client=attacker).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(guess, range(8))) == [401] * 8
    assert get_token(gateway, "alice", PASSWORDS["alice"], client=attacker).status_code == 429
    wrong = get_token(gateway, "ci-deploy", new_secret(ROBOT_PREFIX), client=attacker)
    assert wrong.status_code == 429
    # A robot's right secret is no guess (256 random bits): it is never refused, nor counted.
    robot = ("ci-deploy", PASSWORDS["ci-deploy"])
    assert get_token(gateway, *robot, client=attacker).status_code == 200
    assert get_token(gateway, *robot, client="10.0.0.100").status_code == 200
    assert get_token(gateway, "alice", PASSWORDS["alice"], client="10.0.0.100").status_code == 200


def test_a_robot_keeps_working_while_its_name_is_attacked(
    strict: tuple[Gateway, dict[str, str]],
) -> None:
    """Failures for a robot's name count against the caller's address only, never the name."""
    gateway, _ = strict
    for i in range(6):  # more than the per-name limit, each from another address
        answer = get_token(gateway, "ci-deploy", new_secret(ROBOT_PREFIX), client=f"10.0.1.{i}")
        assert answer.status_code == 401
    assert (
        get_token(gateway, "ci-deploy", PASSWORDS["ci-deploy"], client="10.0.2.1").status_code
        == 200
    )
