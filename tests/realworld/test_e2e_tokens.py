"""The token service with the real registry and real clients, deciding by the example policy."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.binaries import require
from tests.support.clients import CompletedProcess, DockerCLI, Podman, Skopeo, ok
from tests.support.fixtures import OciImage
from tests.support.gateway import PASSWORDS, Stack, creds, jwt_parts, refused, start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require("docker-registry", "docker-registry")
    running = start_stack(tmp_path_factory.mktemp("stack"))
    yield running
    running.stop()


def push(
    skopeo: Skopeo, image: OciImage, stack: Stack, repository: str, who: str | None
) -> CompletedProcess:
    return skopeo.copy(
        image.ref("v1"), stack.ref(f"{repository}:v1"), dest_creds=creds(who) if who else None
    )


def pull(
    skopeo: Skopeo, stack: Stack, repository: str, who: str | None, tmp_path: Path
) -> CompletedProcess:
    dest = f"oci:{tmp_path / 'pulled'}:v1"
    return skopeo.copy(stack.ref(f"{repository}:v1"), dest, src_creds=creds(who) if who else None)


def test_team_contributor_pushes_and_a_viewer_only_pulls(
    stack: Stack, skopeo: Skopeo, oci_image: OciImage, tmp_path: Path
) -> None:
    ok(push(skopeo, oci_image, stack, "platform/api", "bob"))
    ok(pull(skopeo, stack, "platform/api", "carol", tmp_path))
    assert refused(push(skopeo, oci_image, stack, "platform/carol-was-here", "carol"))
    assert refused(
        pull(skopeo, stack, "platform/api", "erin" if "erin" in PASSWORDS else None, tmp_path)
    )


def test_robot_pushes_as_team_contributor(
    stack: Stack, skopeo: Skopeo, oci_image: OciImage
) -> None:
    ok(push(skopeo, oci_image, stack, "platform/ci-built", "ci-deploy"))
    assert refused(push(skopeo, oci_image, stack, "qa/ci-built", "ci-deploy"))


def test_repeated_pushes_get_replayed_tokens_the_registry_accepts(
    stack: Stack, skopeo: Skopeo, oci_image: OciImage, tmp_path: Path
) -> None:
    for _ in range(3):  # the same token request each time: answered afresh twice, then replayed
        ok(push(skopeo, oci_image, stack, "platform/replayed", "ci-deploy"))
    replayed = [
        r
        for r in stack.gateway.audit()
        if r.get("reused") and any(a["name"] == "platform/replayed" for a in r["granted"])
    ]
    assert replayed and replayed[-1]["subject"] == "robot:ci-deploy"
    ok(pull(skopeo, stack, "platform/replayed", "ci-deploy", tmp_path))


def test_anonymous_pulls_public_namespace_only(
    stack: Stack, skopeo: Skopeo, oci_image: OciImage, tmp_path: Path
) -> None:
    ok(push(skopeo, oci_image, stack, "library/base", "alice"))
    ok(push(skopeo, oci_image, stack, "platform/secret", "alice"))
    ok(pull(skopeo, stack, "library/base", None, tmp_path))
    assert refused(pull(skopeo, stack, "platform/secret", None, tmp_path))
    assert refused(push(skopeo, oci_image, stack, "library/anon", None))


def test_delete_is_for_owners(stack: Stack, skopeo: Skopeo, oci_image: OciImage) -> None:
    ok(push(skopeo, oci_image, stack, "platform/doomed", "bob"))
    assert refused(skopeo.delete(stack.ref("platform/doomed:v1"), creds=creds("bob")))
    ok(skopeo.delete(stack.ref("platform/doomed:v1"), creds=creds("alice")))
    gone = skopeo.inspect(stack.ref("platform/doomed:v1"), creds=creds("alice"))
    assert gone.returncode != 0 and "manifest unknown" in gone.stderr.lower()


def test_restricted_repository_takes_only_the_listed_pushers(
    stack: Stack, skopeo: Skopeo, oci_image: OciImage
) -> None:
    assert refused(push(skopeo, oci_image, stack, "platform/prod/api", "bob"))
    ok(push(skopeo, oci_image, stack, "platform/prod/api", "release"))
    ok(push(skopeo, oci_image, stack, "platform/prod/api", "alice"))


def test_catalog_is_for_admins(stack: Stack, skopeo: Skopeo, oci_image: OciImage) -> None:
    ok(push(skopeo, oci_image, stack, "library/listed", "alice"))
    for user, status in (("alice", 200), ("bob", 401)):
        token = stack.gateway.token(user, "registry:catalog:*").json()["token"]
        answer = httpx.get(
            f"{stack.registry.url}/v2/_catalog", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == status
    assert "library/listed" in answer_json(stack, "alice")["repositories"]


def answer_json(stack: Stack, user: str) -> dict[str, Any]:
    token = stack.gateway.token(user, "registry:catalog:*").json()["token"]
    answer: dict[str, Any] = httpx.get(
        f"{stack.registry.url}/v2/_catalog", headers={"Authorization": f"Bearer {token}"}
    ).json()
    return answer


def test_podman_login_push_pull(stack: Stack, podman: Podman, oci_image: OciImage) -> None:
    require("podman", "podman")
    ok(podman.load_layout(oci_image.layout, "v1", "localhost/hello:v1"))
    assert podman.login(stack.host, "bob", "wrong").returncode != 0
    ok(podman.login(stack.host, "ci-deploy", PASSWORDS["ci-deploy"]))
    ok(podman.push("localhost/hello:v1", f"{stack.host}/platform/podman:v1"))
    ok(podman.pull(f"{stack.host}/platform/podman:v1"))
    ok(podman.logout(stack.host))
    assert podman.pull(f"{stack.host}/platform/podman:v1").returncode != 0


def test_docker_login_then_manifest_inspect_uses_the_refresh_token(
    stack: Stack, docker_cli: DockerCLI, skopeo: Skopeo, oci_image: OciImage
) -> None:
    require("docker", "docker.io")
    ok(push(skopeo, oci_image, stack, "platform/docker-seen", "bob"))
    ok(docker_cli.login(stack.host, "bob", PASSWORDS["bob"]))
    stored = docker_cli.config()["auths"][stack.host]
    assert "identitytoken" in stored and "password" not in json.dumps(stored)
    inspected = ok(docker_cli.manifest_inspect(f"{stack.host}/platform/docker-seen:v1"))
    assert json.loads(inspected.stdout)["schemaVersion"] == 2
    posts = [
        r
        for r in stack.gateway.audit()
        if r.get("grant_type") == "refresh_token" and r["status"] == 200
    ]
    assert posts and posts[-1]["subject"] == "user:bob"
    assert any(
        a["name"] == "platform/docker-seen" and "pull" in a["actions"] for a in posts[-1]["granted"]
    )


def test_no_secret_reaches_the_audit_log(stack: Stack) -> None:
    stack.gateway.token("bob", "repository:platform/api:pull", offline_token="true")
    text = stack.gateway.audit_path.read_text()
    for secret in PASSWORDS.values():
        assert secret not in text
    assert "eyJ" not in text  # no JWT, access or refresh


def test_key_rotation_while_the_registry_runs(
    tmp_path: Path, skopeo: Skopeo, oci_image: OciImage
) -> None:
    require("docker-registry", "docker-registry")
    stack = start_stack(tmp_path / "rotation")
    try:
        ok(push(skopeo, oci_image, stack, "library/before", "alice"))
        old_kid = jwt_parts(stack.gateway.token("alice").json()["token"])[0]["kid"]
        proc = stack.gateway.cli("keys", "rotate", "--data-dir", str(stack.gateway.data_dir))
        assert proc.returncode == 0, proc.stderr
        new_kid = proc.stdout.split()[3]
        stack.gateway.write_bundle(stack.bundle)
        stack.registry.restart()
        deadline = time.monotonic() + 15
        while jwt_parts(stack.gateway.token("alice").json()["token"])[0]["kid"] != new_kid:
            assert time.monotonic() < deadline, "the gateway never signed with the new key"
            time.sleep(0.5)
        assert new_kid != old_kid
        ok(push(skopeo, oci_image, stack, "library/after", "alice"))
        ok(pull(skopeo, stack, "library/before", None, tmp_path))
    finally:
        stack.stop()
