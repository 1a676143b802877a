"""People through a real OpenID provider, end to end: oidc-provider (Node) with its own login
and consent pages, the real gateway, Debian's registry, Chromium (Playwright) signing in as a
person would, the Docker CLI and skopeo with the CLI secret made in the UI."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.clients import DockerCLI, Skopeo, ok
from tests.support.fixtures import OciImage
from tests.support.gateway import Stack, jwt_parts, refused, start_stack
from tests.support.oidc import Provider, start_provider
from tests.support.registry import free_port

CLIENT_ID = "registry-gateway"
CLIENT_SECRET = "client-secret-for-tests-only"
TEAMS = """
teams:
  builders:
    description: people of the platform-devs group at the identity provider
    oidc_groups:
      - {group: platform-devs, role: contributor}
robots:
  seeder: {token_sha256: db3f6a86e0038f416bb77e097ce20e20b6a6352ce6a14c13f0038cea3d92534f}
namespaces:
  builds: {visibility: private, teams: [builders]}
grants:
  - to: [robot:seeder]
    repositories: ["builds/**"]
    actions: [pull, push]
"""
SEEDER = "seeder:seeder-secret-for-tests"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Provider]]:
    root = tmp_path_factory.mktemp("oidc-people")
    policies = root / "policies"
    policies.mkdir()
    (policies / "teams.yaml").write_text(TEAMS)
    provider_port = free_port()
    env = {
        "REGISTRY_GATEWAY_OIDC_ISSUER": f"http://127.0.0.1:{provider_port}",
        "REGISTRY_GATEWAY_OIDC_CLIENT_ID": CLIENT_ID,
        "REGISTRY_GATEWAY_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "REGISTRY_GATEWAY_OIDC_SCOPES": "openid profile email groups offline_access",
        "REGISTRY_GATEWAY_OIDC_PROVIDER_NAME": "Example SSO",
        # Ask the provider on every use of a CLI secret: a group change holds at once.
        "REGISTRY_GATEWAY_OIDC_CLI_SECRET_RECHECK": "0",
    }
    # The gateway reads the provider's discovery document at the first sign-in: it starts
    # first, so that the provider knows its redirect URI.
    stack = start_stack(root, policies=policies, env=env, catalog=True)
    try:
        provider = start_provider(
            root / "provider",
            port=provider_port,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uri=f"{stack.gateway.url}/-/oidc/callback",
            users={"dana": {"name": "Dana", "groups": ["platform-devs", "staff"]}},
        )
    except Exception:
        stack.stop()
        raise
    yield stack, provider
    stack.stop()
    provider.stop()


def sign_in_at_provider(page: Page, gateway: str, user: str) -> None:
    """From the gateway's sign-in page through the provider's login and consent pages."""
    page.goto(f"{gateway}/-/login")
    page.get_by_role("link", name="Sign in with Example SSO").click()
    page.locator("input[name=login]").fill(user)
    page.locator("input[name=password]").fill("any password: the provider's dev login")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()  # consent
    expect(page.locator(".who strong")).to_have_text(user)


def test_a_person_signs_in_and_pushes_with_a_cli_secret_until_the_group_is_gone(
    setup: tuple[Stack, Provider],
    docker_cli: DockerCLI,
    skopeo: Skopeo,
    oci_image: OciImage,
    tmp_path: Path,
    browser: Browser,
) -> None:
    stack, provider = setup
    gateway = stack.gateway.url
    ok(skopeo.copy(oci_image.ref("v1"), stack.ref("builds/app:v0"), dest_creds=SEEDER))
    with contextlib.closing(browser.new_context(base_url=gateway)) as context:
        page = context.new_page()
        sign_in_at_provider(page, gateway, "dana")
        # What the groups allow: push to builds/ through team builders.
        page.goto(f"{gateway}/-/explain/r/builds/app?format=json")
        rights = json.loads(page.locator("body").inner_text())
        assert rights["granted"] == ["pull", "push"]
        texts = [
            m["text"]
            for action in rights["actions"]
            for reason in action["reasons"]
            for m in reason["memberships"]
        ]
        assert "dana is in team:builders through OIDC group platform-devs" in texts
        page.goto(f"{gateway}/-/explain/r/builds/app")
        expect(page.get_by_text("through OIDC group platform-devs").first).to_be_visible()
        # A CLI secret, made and shown once.
        page.get_by_role("link", name="CLI secrets").click()
        page.get_by_label("What it is for").fill("laptop")
        page.get_by_role("button", name="Make a CLI secret").click()
        secret = page.locator("#cli-secret").inner_text()
        assert secret.startswith("rgw_cli_")
        page.goto(f"{gateway}/-/cli-secrets")
        assert secret not in page.content()
        expect(page.get_by_role("cell", name="laptop", exact=True)).to_have_count(1)

    ok(docker_cli.login(stack.host, "dana", secret))
    ok(skopeo.copy(oci_image.ref("v1"), stack.ref("builds/app:v1"), dest_creds=f"dana:{secret}"))
    shown = ok(docker_cli.manifest_inspect(f"{stack.host}/builds/app:v1"))
    assert "schemaVersion" in shown.stdout
    assert refused(
        skopeo.copy(oci_image.ref("v1"), stack.ref("other/app:v1"), dest_creds=f"dana:{secret}")
    )

    # The provider takes dana out of platform-devs: the very next use is refused the push.
    provider.set_groups("dana", ["staff"])
    assert refused(
        skopeo.copy(oci_image.ref("v1"), stack.ref("builds/app:v2"), dest_creds=f"dana:{secret}")
    )
    answer = httpx.get(
        f"{gateway}/auth/token",
        params={"service": stack.gateway.service, "scope": "repository:builds/app:pull,push"},
        auth=("dana", secret),
    )
    assert answer.status_code == 200
    claims = jwt_parts(answer.json()["token"])[1]
    assert claims["access"][0]["actions"] == []
    audit: list[dict[str, Any]] = stack.gateway.audit()
    assert any(line.get("auth") == "cli_secret" for line in audit)
    assert all(secret not in json.dumps(line) for line in audit)
    assert secret not in stack.gateway.logs()
