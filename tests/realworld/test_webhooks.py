"""Webhooks from real processes: three `registry-gateway serve` replicas behind Debian's nginx,
sharing Redis, following one git policy remote whose `webhooks:` section points at two real
receivers in this process (tests/support/receiver.py: they check every signature and
timestamp), and Debian's docker-registry sending its notifications through nginx.

- a skopeo push produces exactly one `image.pushed` with the pushed digest, sent by the one
  replica the notification reached;
- a receiver that fails three times gets that event once, after retries;
- a push the policy refuses produces a `token.denied` for each refusing decision, no more;
- a policy commit that all three replicas load is one `policy.changed` (claimed in Redis);
- `registry-gateway webhook test NAME` delivers a signed sample.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.clients import Skopeo, ok
from tests.support.fixtures import OciImage
from tests.support.gateway import EXAMPLE_POLICIES, PASSWORDS, REPO, SERVICE, Gateway, creds
from tests.support.gitrepo import git
from tests.support.nginx import Nginx, start_nginx
from tests.support.receiver import Receiver
from tests.support.redis import RedisServer
from tests.support.registry import Registry, TokenAuth, free_port, start_registry
from tests.support.replicas import make_keys, start_replicas

ISSUER = "test-gateway"
NOTIFY = "notification-secret-of-the-webhook-test"
SECRETS = {"WEBHOOK_SECRET_ALL": "all-events-secret", "WEBHOOK_SECRET_FLAKY": "flaky-secret"}
POLL = 1.0


def webhooks_yaml(everything: str, flaky: str) -> str:
    return f"""\
webhooks:
  everything:
    url: {everything}
    events: ["*"]
    secret_env: WEBHOOK_SECRET_ALL
  flaky:
    url: {flaky}
    events: [image.pushed]
    repositories: ["bob/flaky"]
    secret_env: WEBHOOK_SECRET_FLAKY
"""


@dataclass
class Cluster:
    replicas: list[Gateway]
    nginx: Nginx
    registry: Registry
    work: Path
    everything: Receiver
    flaky: Receiver
    root: Path

    def skopeo(self, name: str) -> Skopeo:
        return Skopeo(self.root / "skopeo" / name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("webhooks")
    everything = Receiver(SECRETS["WEBHOOK_SECRET_ALL"].encode())
    flaky = Receiver(SECRETS["WEBHOOK_SECRET_FLAKY"].encode(), fail_first=3)
    redis = RedisServer(root / "redis")
    bare, work = root / "policy.git", root / "policy-work"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(root, "init", "-q", "-b", "main", str(work))
    shutil.copytree(EXAMPLE_POLICIES, work / "policies")
    (work / "policies" / "webhooks.yaml").write_text(webhooks_yaml(everything.url, flaky.url))
    git(work, "add", ".")
    git(work, "commit", "-qm", "example policy with webhooks")
    git(work, "remote", "add", "origin", str(bare))
    git(work, "push", "-q", "origin", "main")

    bundle = root / "bundle.pem"
    keys = make_keys(root / "keys-source", bundle, issuer=ISSUER)
    lb_port = free_port()
    args = [
        "--policy-git", f"file://{bare}", "--policy-branch", "main", "--policy-path", "policies",
        "--poll-interval", f"{POLL}s", "--drain-seconds", "0.2s",
        "--public-url", f"http://127.0.0.1:{lb_port}", "--webhook-backoff", "0.2s",
    ]  # fmt: skip
    env = {
        **SECRETS,
        "REGISTRY_GATEWAY_NOTIFICATION_SECRET": NOTIFY,
        "REGISTRY_GATEWAY_REDIS_URL": redis.url,
    }
    replicas = start_replicas(root, 3, keys=keys, args=args, env=env)
    nginx = registry = None
    try:
        nginx = start_nginx(root / "nginx", [f"127.0.0.1:{r.port}" for r in replicas], port=lb_port)
        registry = start_registry(
            root / "registry",
            token=TokenAuth(
                realm=f"{nginx.url}/auth/token",
                service=SERVICE,
                issuer=ISSUER,
                rootcertbundle=bundle,
            ),
            notifications=[
                {
                    "name": "gateway",
                    "url": f"{nginx.url}/-/notifications",
                    "headers": {"Authorization": [f"Bearer {NOTIFY}"]},
                    "timeout": "2s",
                    "threshold": 3,
                    "backoff": "1s",
                }
            ],
        )
        yield Cluster(replicas, nginx, registry, work, everything, flaky, root)
    finally:
        for process in (registry, nginx):
            if process is not None:
                process.stop()
        stopping = [threading.Thread(target=r.stop) for r in replicas]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        redis.stop()
        everything.stop()
        flaky.stop()


def events(receiver: Receiver, kind: str, **data: Any) -> list[dict[str, Any]]:
    """The CloudEvents of `kind` the receiver took whose data has the given values."""
    found = []
    for request in receiver.taken():
        document = request.json
        if document["type"] == f"registry-gateway.{kind}" and all(
            document["data"].get(k) == v for k, v in data.items()
        ):
            found.append(document)
    return found


def wait_for(
    receiver: Receiver, kind: str, timeout: float = 30.0, **data: Any
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while not events(receiver, kind, **data) and time.monotonic() < deadline:
        time.sleep(0.1)
    return events(receiver, kind, **data)


def status(replica: Gateway) -> dict[str, Any]:
    """A replica's Status page as JSON, as an admin sees it."""
    answer = httpx.get(
        f"{replica.url}/-/status",
        params={"format": "json"},
        auth=("alice", PASSWORDS["alice"]),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text[:300]
    data: dict[str, Any] = answer.json()
    return data


def test_a_push_is_one_image_pushed_event_with_its_digest(
    cluster: Cluster, oci_image: OciImage
) -> None:
    target = f"docker://{cluster.registry.host}/bob/webhooks:v1"
    ok(cluster.skopeo("push").copy(oci_image.ref("v1"), target, dest_creds=creds("bob")))
    raw = ok(cluster.skopeo("inspect").inspect(target, creds=creds("bob"), raw=True)).stdout
    digest = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    assert digest == oci_image.v1_digest

    found = wait_for(cluster.everything, "image.pushed", repository="bob/webhooks")
    assert found, f"no image.pushed; receiver got {len(cluster.everything.requests)} requests"
    time.sleep(4)  # time for a duplicate from another replica, if there were one
    [event] = events(cluster.everything, "image.pushed", repository="bob/webhooks")
    data = event["data"]
    assert (data["tag"], data["digest"]) == ("v1", digest)
    assert data["actor"] == {"kind": "user", "name": "bob"}
    assert data["media_type"] == "application/vnd.oci.image.manifest.v1+json"
    assert event["source"] == cluster.nginx.url
    assert event["subject"] == "bob/webhooks:v1"
    assert all(r.verified for r in cluster.everything.requests)

    # Sent by the one replica the registry's notification reached: only its log has it.
    logs = [status(r)["webhooks"]["webhooks"] for r in cluster.replicas]
    senders = [
        n
        for n, hooks in enumerate(logs)
        for hook in hooks
        if hook["name"] == "everything"
        for d in hook["deliveries"]
        if d["event_id"] == event["id"]
    ]
    assert len(senders) == 1, logs


def test_a_delete_is_an_image_deleted_event(cluster: Cluster, oci_image: OciImage) -> None:
    target = f"docker://{cluster.registry.host}/bob/deleted:v1"
    skopeo = cluster.skopeo("delete")
    ok(skopeo.copy(oci_image.ref("v1"), target, dest_creds=creds("bob")))
    ok(skopeo.delete(target, creds=creds("bob")))  # by digest, as Distribution 2.8 deletes
    [event] = wait_for(cluster.everything, "image.deleted", repository="bob/deleted")
    assert event["data"]["digest"] == oci_image.v1_digest
    assert event["data"]["actor"] == {"kind": "user", "name": "bob"}
    assert event["subject"] == f"bob/deleted@{oci_image.v1_digest}"


def test_a_receiver_failing_three_times_gets_the_push_once_after_retries(
    cluster: Cluster, oci_image: OciImage
) -> None:
    target = f"docker://{cluster.registry.host}/bob/flaky:v1"
    ok(cluster.skopeo("flaky").copy(oci_image.ref("v1"), target, dest_creds=creds("bob")))
    found = wait_for(cluster.flaky, "image.pushed", repository="bob/flaky")
    assert found, [r.status for r in cluster.flaky.requests]
    time.sleep(3)
    [event] = events(cluster.flaky, "image.pushed", repository="bob/flaky")
    about = [r for r in cluster.flaky.requests if r.json["id"] == event["id"]]
    statuses = [r.status for r in cluster.flaky.requests]
    assert statuses == [500, 500, 500, 204], statuses
    assert [r.status for r in about][-1] == 204 and len(about) == 4
    assert all(r.verified for r in about)
    deliveries = [
        d
        for r in cluster.replicas
        for hook in status(r)["webhooks"]["webhooks"]
        if hook["name"] == "flaky"
        for d in hook["deliveries"]
        if d["event_id"] == event["id"]
    ]
    assert [(d["status"], d["attempts"]) for d in deliveries] == [("delivered", 4)]


def test_a_denied_push_is_a_token_denied_event_per_decision(
    cluster: Cluster, oci_image: OciImage
) -> None:
    target = f"docker://{cluster.registry.host}/platform/prod/webhooks:v1"
    proc = cluster.skopeo("denied").copy(oci_image.ref("v1"), target, dest_creds=creds("carol"))
    assert proc.returncode != 0
    found = wait_for(cluster.everything, "token.denied", repository="platform/prod/webhooks")
    assert found
    time.sleep(2)
    found = events(cluster.everything, "token.denied", repository="platform/prod/webhooks")
    assert all(e["data"]["actor"] == {"kind": "user", "name": "carol"} for e in found)
    assert all("push" in e["data"]["denied_actions"] for e in found)
    # One event per refusing decision, whichever replica made it: the audit lines agree.
    decisions = [
        line["request_id"]
        for replica in cluster.replicas
        for line in replica.audit()
        if any(d.get("name") == "platform/prod/webhooks" for d in line.get("denied", ()))
    ]
    assert sorted(decisions) == sorted(e["data"]["request_id"] for e in found)


def test_a_policy_commit_is_one_policy_changed_across_replicas(cluster: Cluster) -> None:
    work = cluster.work
    (work / "policies" / "more.yaml").write_text(
        "grants:\n  - to: [user:carol]\n    repositories: [qa/**]\n    actions: [pull, push]\n"
    )
    git(work, "add", ".")
    git(work, "commit", "-qm", "carol pushes to qa")
    git(work, "push", "-q", "origin", "main")
    commit = git(work, "rev-parse", "HEAD")[:12]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        revisions = {status(r)["policy"]["revision"] for r in cluster.replicas}
        if revisions == {commit}:
            break
        time.sleep(0.2)
    assert revisions == {commit}
    assert wait_for(cluster.everything, "policy.changed", policy_revision=commit)
    time.sleep(3)  # every replica loaded it; only one may have sent it
    [event] = events(cluster.everything, "policy.changed", policy_revision=commit)
    subjects = {s["subject"] for s in event["data"]["diff"]["subjects"]}
    assert "user:carol" in subjects


def test_webhook_test_delivers_a_signed_sample(cluster: Cluster) -> None:
    before = len(cluster.everything.taken())
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "webhook", "test", "everything",
         "--policies", str(cluster.work / "policies"), "--event", "image.pushed"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, **SECRETS},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "webhook everything: delivered sample registry-gateway.image.pushed" in proc.stdout
    [sample] = cluster.everything.taken()[before:]
    assert sample.verified
    assert sample.json["data"]["test"] is True

    unknown = subprocess.run(
        [sys.executable, "-m", "gateway", "webhook", "test", "nope",
         "--policies", str(cluster.work / "policies")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert unknown.returncode == 2
    assert "no webhook 'nope'" in unknown.stderr and "everything, flaky" in unknown.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "gateway", "webhook", "test", "everything",
         "--policies", str(cluster.work / "policies")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={k: v for k, v in os.environ.items() if k not in SECRETS},
    )  # fmt: skip
    assert missing.returncode == 1
    assert "WEBHOOK_SECRET_ALL is not set" in missing.stderr
