"""Hot reload that fails closed, and a policy that follows a git branch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from gateway.policy.source import PolicySource

from tests.support.clients import Skopeo, ok
from tests.support.fixtures import OciImage
from tests.support.gateway import (
    EXAMPLE_POLICIES,
    Gateway,
    creds,
    jwt_parts,
    refused,
    start_gateway,
    start_stack,
)
from tests.support.gitrepo import git

PROBES = 50
T = TypeVar("T")


def probe_policy(version: int) -> str:
    """A valid policy file: anonymous may pull probe/v<version> and nothing else in probe/."""
    return (
        "namespaces:\n  probe: {visibility: private}\n"
        f"grants:\n  - to: anonymous\n    repositories: [probe/v{version}]\n    actions: [pull]\n"
    )


BROKEN = [
    "namespaces:\n  probe: {visibility: private\n",  # not YAML
    "namespaces:\n  probe: {visibility: secret}\n",  # not a visibility
    "grants:\n  - to: [team:ghosts]\n    repositories: [probe/x]\n    actions: [pull]\n",
]


def write(path: Path, text: str) -> None:
    """Replace a file in one step, as editors and git checkouts mostly do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def probe_token(gateway: Gateway) -> tuple[str, set[str]]:
    scopes = [f"repository:probe/v{i}:pull" for i in range(PROBES)]
    answer = gateway.token(None, " ".join(scopes))
    assert answer.status_code == 200, answer.text
    claims = jwt_parts(answer.json()["token"])[1]
    return claims["revision"], {a["name"] for a in claims["access"] if a["actions"]}


def test_reload_under_load_never_mixes_or_serves_a_broken_policy(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLE_POLICIES, policies)
    probe = policies / "probe.yaml"
    probe.write_text(probe_policy(0))
    gateway = start_gateway(tmp_path / "gw", policies=policies, args=["--reload-debounce", "50ms"])
    probe = gateway.policies / "probe.yaml"
    expected = {PolicySource(gateway.policies).read()[2]: {"probe/v0"}}
    seen: list[tuple[str, set[str]]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                seen.append(probe_token(gateway))
            except (AssertionError, httpx.HTTPError) as exc:
                failures.append(repr(exc))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        for i in range(1, PROBES + 1):
            if i % 2:
                write(probe, probe_policy(i))
                expected[PolicySource(gateway.policies).read()[2]] = {f"probe/v{i}"}
            else:
                write(probe, BROKEN[i % len(BROKEN)])
            time.sleep(0.15)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(10)
        gateway.stop()
    assert not failures, failures[:5]
    assert len(seen) >= PROBES, "the client should have asked throughout the 50 rewrites"
    revisions = {revision for revision, _ in seen}
    assert revisions <= set(expected), "a response carried a revision that was never valid"
    for revision, granted in seen:
        assert granted == expected[revision], (revision, granted)
    assert len(revisions) > 10, "the gateway did not follow the valid changes"
    assert "policy_rejected" in gateway.logs()


def test_broken_policy_leaves_the_last_good_one_and_says_where(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path / "gw", args=["--reload-debounce", "50ms"])
    try:
        good = gateway.token("bob", "repository:platform/api:push").json()
        write(
            gateway.policies / "teams.yaml",
            (gateway.policies / "teams.yaml").read_text() + "  oops: [\n",
        )
        health = wait_for(
            lambda: httpx.get(f"{gateway.url}/healthz"), lambda r: r.json()["status"] == "degraded"
        )
        assert health.status_code == 200
        assert (
            f"{gateway.policies}/teams.yaml:" in health.json()["error"]
            and "YAML" not in health.json()["error"]  # where, not what: /healthz is public
        )
        ready = httpx.get(f"{gateway.url}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        after = gateway.token("bob", "repository:platform/api:push").json()
        assert jwt_parts(after["token"])[1]["revision"] == jwt_parts(good["token"])[1]["revision"]
        assert jwt_parts(after["token"])[1]["access"][0]["actions"] == ["push"]
    finally:
        gateway.stop()


def test_cold_start_without_a_valid_policy_exits(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "p.yaml").write_text("users: [\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--policies",
            str(broken),
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLE_POLICIES.parent,
    )
    assert proc.returncode == 1
    assert "not serving tokens without a valid policy" in proc.stderr
    assert f"{broken}/p.yaml:2:1: error: invalid YAML" in proc.stderr


def wait_for(get: Callable[[], T], done: Callable[[T], object], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"condition not met in {timeout} s: {value}"
        time.sleep(0.05)


# -- a policy in git ---------------------------------------------------------------------


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A bare repository as the remote and a work tree that pushes to it."""
    bare = tmp_path / "remote.git"
    work = tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    shutil.copytree(EXAMPLE_POLICIES, work / "policies")
    git(work, "add", ".")
    git(work, "commit", "-qm", "example policy")
    git(work, "remote", "add", "origin", str(bare))
    git(work, "push", "-q", "origin", "main")
    yield bare, work


def git_source(bare: Path, poll: str = "1s") -> list[str]:
    """The flags of a gateway that follows branch main of the test remote's policies/."""
    return [
        "--policy-git", f"file://{bare}",
        "--policy-branch", "main",
        "--policy-path", "policies",
        "--poll-interval", poll,
    ]  # fmt: skip


def commit_and_push(work: Path, message: str, *, force: bool = False) -> str:
    git(work, "add", "-A")
    git(work, "commit", "-qm", message)
    git(work, "push", "-q", *(["--force"] if force else []), "origin", "main")
    return git(work, "rev-parse", "HEAD")[:12]


def demote_bob(work: Path) -> None:
    teams = work / "policies" / "teams.yaml"
    teams.write_text(
        teams.read_text()
        .replace(
            "contributors: [bob, robot:ci-deploy]",
            "contributors: [robot:ci-deploy]\n    viewers: [carol, bob]",
        )
        .replace("    viewers: [carol]\n  qa:", "  qa:")
    )
    tests = work / "policies" / "tests" / "access.yaml"
    text = tests.read_text().replace(
        "- as: user:bob\n  scope: repository:platform/api:pull,push,delete\n  granted: [pull, push]\n",
        "",
    )
    tests.write_text(text)


def bob_push(gateway: Gateway) -> tuple[str, list[str]]:
    claims = jwt_parts(gateway.token("bob", "repository:platform/api:pull,push").json()["token"])[1]
    return claims["revision"], claims["access"][0]["actions"]


def test_git_branch_is_followed_and_broken_pushes_are_not(
    tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    bare, work = remote
    first = git(work, "rev-parse", "HEAD")[:12]
    gateway = start_gateway(
        tmp_path / "gw",
        args=git_source(bare),
        env={"REGISTRY_GATEWAY_RELOAD_SECRET": "hook-secret-for-tests"},
    )
    try:
        assert bob_push(gateway) == (first, ["pull", "push"])
        assert httpx.get(f"{gateway.url}/healthz").json()["source"]["kind"] == "git"

        demote_bob(work)
        second = commit_and_push(work, "bob only views platform")
        started = time.monotonic()
        assert wait_for(lambda: bob_push(gateway), lambda v: v[0] == second, timeout=5) == (
            second,
            ["pull"],
        )
        print(f"push to enforcement by polling (1 s interval): {time.monotonic() - started:.2f} s")

        (work / "policies" / "teams.yaml").write_text("teams: [\n")
        commit_and_push(work, "broken")
        wait_for(
            lambda: httpx.get(f"{gateway.url}/healthz").json(),
            lambda h: h["status"] == "degraded",
            timeout=5,
        )
        assert bob_push(gateway) == (second, ["pull"])

        # History rewritten by a force-push is followed.
        git(work, "reset", "-q", "--hard", first)
        (work / "policies" / "README.md").write_text("rewritten history\n")
        rewritten = commit_and_push(work, "rewrite", force=True)
        assert wait_for(lambda: bob_push(gateway), lambda v: v[0] == rewritten, timeout=5) == (
            rewritten,
            ["pull", "push"],
        )
        assert "history rewritten" in gateway.logs()
        assert httpx.get(f"{gateway.url}/healthz").json()["status"] == "ok"

        # A commit outside the policy directory changes no right, and still names the revision.
        (work / "CHANGELOG.md").write_text("nothing about access\n")
        unrelated = commit_and_push(work, "docs only")
        assert wait_for(lambda: bob_push(gateway), lambda v: v[0] == unrelated, timeout=5) == (
            unrelated,
            ["pull", "push"],
        )
        health = httpx.get(f"{gateway.url}/healthz").json()
        assert (health["status"], health["revision"], health["newest"]) == (
            "ok",
            unrelated,
            unrelated,
        )
    finally:
        gateway.stop()


def test_reload_webhook_and_a_remote_that_is_down(
    tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    bare, work = remote
    gateway = start_gateway(
        tmp_path / "gw",
        args=["--policy-git", f"file://{bare}", "--poll-interval", "1h"],
        env={"REGISTRY_GATEWAY_RELOAD_SECRET": "hook-secret-for-tests"},
    )
    try:
        hook = f"{gateway.url}/-/reload"
        assert httpx.post(hook).status_code == 401
        assert httpx.post(hook, headers={"Authorization": "Bearer wrong"}).status_code == 401
        demote_bob(work)
        second = commit_and_push(work, "demote bob")
        answer = httpx.post(
            hook, headers={"Authorization": "Bearer hook-secret-for-tests"}, timeout=30
        )
        assert answer.status_code == 200 and answer.json()["revision"] == second
        assert bob_push(gateway) == (second, ["pull"])

        bare.rename(bare.with_name("moved.git"))
        answer = httpx.post(
            hook, headers={"Authorization": "Bearer hook-secret-for-tests"}, timeout=30
        )
        assert answer.json()["source_error"] and answer.json()["revision"] == second
        health = httpx.get(f"{gateway.url}/healthz")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert health.json()["source"]["error"].startswith(f"fetching file://{bare}")
        assert bob_push(gateway) == (second, ["pull"])
        assert "hook-secret-for-tests" not in gateway.logs() + gateway.audit_path.read_text()
    finally:
        gateway.stop()


def test_removed_right_stops_the_next_push(
    tmp_path: Path, skopeo: Skopeo, oci_image: OciImage
) -> None:
    stack = start_stack(tmp_path / "stack", args=["--reload-debounce", "50ms"])
    try:
        target = stack.ref("platform/api:v1")
        ok(skopeo.copy(oci_image.ref("v1"), target, dest_creds=creds("bob")))
        policies = stack.gateway.policies
        teams = policies / "teams.yaml"
        write(
            teams,
            teams.read_text().replace(
                "contributors: [bob, robot:ci-deploy]", "contributors: [robot:ci-deploy]"
            ),
        )
        tests = policies / "tests" / "access.yaml"
        write(tests, "[]\n")
        wait_for(lambda: bob_push(stack.gateway), lambda v: v[1] == [], timeout=5)
        attempt = skopeo.copy(
            oci_image.ref("v1"), stack.ref("platform/api:v2"), dest_creds=creds("bob")
        )
        assert refused(attempt)
    finally:
        stack.stop()
