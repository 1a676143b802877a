"""Stateless replicas behind a real load balancer: three gateways, Debian's nginx, the registry.

The chain: skopeo -> registry (realm: nginx) -> nginx -> three `registry-gateway serve`
processes that share their signing keys and follow one bare git repository (1 s polls).
Only the CLI and HTTP are used: replicas are started, SIGTERMed and SIGKILLed as processes.
(A web UI session across replicas is tested with the UI.)
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.catalog import csrf_of
from tests.support.clients import Skopeo, ok
from tests.support.fixtures import OciImage
from tests.support.gateway import (
    EXAMPLE_POLICIES,
    ISSUER,
    PASSWORDS,
    SERVICE,
    Gateway,
    creds,
    jwt_parts,
)
from tests.support.gitrepo import git
from tests.support.nginx import Nginx, start_nginx
from tests.support.registry import Registry, TokenAuth, free_port, start_registry
from tests.support.replicas import make_keys, start_replicas

POLL = 1.0  # --poll-interval of every replica, seconds
DRAIN = 0.5  # --drain-seconds: /readyz 503 this long after SIGTERM (default 5 s; nginx
# here has only passive checks, so a long drain would only slow the test down)
PAUSE = 0.05  # seconds between two rounds of one load loop
PULL_REPO = "library/base"  # public: anonymous pulls, no password hashing in the loops


def token(
    base_url: str,
    user: str | None = None,
    *scopes: str,
    headers: dict[str, str] | None = None,
    **params: str,
) -> httpx.Response:
    """GET /auth/token from `base_url` (nginx or one replica) as an example user, or anonymous."""
    auth = (user, PASSWORDS[user]) if user else None
    return httpx.get(
        f"{base_url}/auth/token",
        params=[("service", SERVICE), *(("scope", s) for s in scopes), *params.items()],
        auth=auth,
        headers=headers,
        timeout=30,
    )


@dataclass
class Cluster:
    replicas: list[Gateway]
    nginx: Nginx
    registry: Registry
    work: Path  # a clone of the policy remote that pushes to it
    skopeo_home: Path
    revision: str = ""
    _skopeo: Iterator[int] = field(default_factory=itertools.count)

    @property
    def lb(self) -> str:
        return self.nginx.url

    def skopeo(self) -> Skopeo:
        """A skopeo with a home of its own (threads must not share one)."""
        return Skopeo(self.skopeo_home / str(next(self._skopeo)))

    def heal(self) -> None:
        """Restart any replica a failed test left stopped."""
        for replica in self.replicas:
            if replica.process is None or replica.process.poll() is not None:
                replica.process = None
                replica.start()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, oci_image: OciImage) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    bare, work = root / "policy.git", root / "policy-work"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(root, "init", "-q", "-b", "main", str(work))
    shutil.copytree(EXAMPLE_POLICIES, work / "policies")
    git(work, "add", ".")
    git(work, "commit", "-qm", "example policy")
    git(work, "remote", "add", "origin", str(bare))
    git(work, "push", "-q", "origin", "main")

    bundle = root / "bundle.pem"
    keys = make_keys(root / "keys-source", bundle)
    lb_port = free_port()  # the replicas' public URL (the realm) is nginx's
    args = [
        "--policy-git", f"file://{bare}", "--policy-branch", "main", "--policy-path", "policies",
        "--poll-interval", f"{POLL}s", "--drain-seconds", f"{DRAIN}s",
        "--public-url", f"http://127.0.0.1:{lb_port}",
    ]  # fmt: skip
    replicas = start_replicas(root, 3, keys=keys, args=args)
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
        )
        cluster = Cluster(replicas, nginx, registry, work, root / "skopeo")
        # The image every pull loop fetches, pushed once through the whole chain.
        ok(
            cluster.skopeo().copy(
                oci_image.ref("v1"),
                f"docker://{registry.host}/{PULL_REPO}:v1",
                dest_creds=creds("bob"),
            )
        )
        yield cluster
    finally:
        for process in (registry, nginx):
            if process is not None:
                process.stop()
        stopping = [threading.Thread(target=r.stop) for r in replicas]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()


@pytest.fixture(autouse=True)
def _healthy(cluster: Cluster) -> None:
    cluster.heal()


def revision_and_access(response: httpx.Response) -> tuple[str, list[tuple[str, list[str]]]]:
    assert response.status_code == 200, response.text
    claims = jwt_parts(response.json()["token"])[1]
    return claims["revision"], [(a["name"], a["actions"]) for a in claims["access"]]


# -- the whole chain ----------------------------------------------------------------------


def test_skopeo_pushes_and_pulls_through_nginx_and_three_replicas(
    cluster: Cluster, oci_image: OciImage, tmp_path: Path
) -> None:
    skopeo = cluster.skopeo()
    target = f"docker://{cluster.registry.host}/platform/api:v1"
    ok(skopeo.copy(oci_image.ref("v1"), target, dest_creds=creds("bob")))
    ok(skopeo.copy(target, f"dir:{tmp_path / 'pulled'}", src_creds=creds("carol")))
    assert (tmp_path / "pulled" / "manifest.json").exists()
    anonymous = skopeo.copy(oci_image.ref("v1"), f"docker://{cluster.registry.host}/platform/x:1")
    assert anonymous.returncode != 0

    # Round robin: a handful of token requests reaches every replica.
    for _ in range(6):
        assert token(cluster.lb, None, f"repository:{PULL_REPO}:pull").status_code == 200
    served = {r.port: len(r.audit()) for r in cluster.replicas}
    print(f"token requests audited per replica: {served}")
    assert all(served.values()), served


def test_request_id_and_client_address_pass_through_nginx(cluster: Cluster) -> None:
    request_id = f"deploy-{uuid.uuid4().hex[:16]}"
    answer = token(
        cluster.lb,
        None,
        f"repository:{PULL_REPO}:pull",
        headers={"X-Request-ID": request_id, "X-Forwarded-For": "203.0.113.7"},
    )
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == request_id
    lines = [a for r in cluster.replicas for a in r.audit() if a.get("request_id") == request_id]
    assert len(lines) == 1, lines
    # nginx appends its client (127.0.0.1, trusted by the gateway) to X-Forwarded-For.
    assert lines[0]["client"] == "203.0.113.7"


# -- the policy from git ------------------------------------------------------------------


def test_policy_push_is_enforced_by_every_replica_within_one_poll(cluster: Cluster) -> None:
    probe = cluster.work / "policies" / "probe.yaml"
    version = time.time_ns()
    probe.write_text(
        "namespaces:\n  probe: {visibility: private}\n"
        f"grants:\n  - to: anonymous\n    repositories: [probe/v{version}]\n    actions: [pull]\n"
    )
    git(cluster.work, "add", "-A")
    git(cluster.work, "commit", "-qm", f"probe {version}")
    git(cluster.work, "push", "-q", "origin", "main")
    pushed = time.monotonic()
    commit = git(cluster.work, "rev-parse", "HEAD")[:12]
    scope = f"repository:probe/v{version}:pull"

    enforced: dict[int, float] = {}
    while len(enforced) < len(cluster.replicas) and time.monotonic() - pushed < 5 * POLL:
        for n, replica in enumerate(cluster.replicas, 1):
            if n not in enforced:
                revision, access = revision_and_access(token(replica.url, None, scope))
                if revision == commit:
                    assert access == [(f"probe/v{version}", ["pull"])]
                    enforced[n] = time.monotonic() - pushed
        time.sleep(0.01)
    shown = ", ".join(f"replica {n}: {s:.2f} s" for n, s in sorted(enforced.items()))
    print(f"push to enforcement ({POLL:.0f} s poll interval): {shown}")
    assert len(enforced) == len(cluster.replicas), f"not every replica followed: {shown}"
    # One poll interval, plus the fetch and the reload that the poll starts (each replica
    # sleeps an interval, then fetches: its period is the interval plus the fetch, which takes
    # a few hundred ms on a loaded 2-core machine). A missed poll would cost a whole period more.
    assert max(enforced.values()) < POLL + 1.0, shown
    # Through the load balancer, every answer now carries the new revision.
    for _ in range(6):
        revision, _ = revision_and_access(token(cluster.lb, None, scope))
        assert revision == commit


# -- failures under load ------------------------------------------------------------------


@dataclass
class Load:
    """Client loops through nginx (token GETs and POSTs) and skopeo pulls from the registry."""

    cluster: Cluster
    skopeo_pulls: bool = True
    failures: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        loops: list[Callable[[], None]] = [self._tokens, self._tokens, self._posts]
        if self.skopeo_pulls:
            loops.append(self._pulls)
        self._threads = [threading.Thread(target=self._run, args=(f,)) for f in loops]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, step: Callable[[], None]) -> None:
        # A short pause per round: steady load that leaves this 2-core machine room to
        # restart replicas (unthrottled loops made a restart take 6 s instead of 1.5 s).
        while not self._stop.wait(PAUSE):
            try:
                step()
            except Exception as exc:
                self.failures.append(f"{step.__name__}: {exc!r}")

    def _tokens(self) -> None:
        robot = "ci-deploy"
        answer = token(self.cluster.lb, robot, "repository:platform/api:pull,push")
        self._check("token GET", answer)
        answer = token(self.cluster.lb, None, f"repository:{PULL_REPO}:pull")
        self._check("token GET", answer)

    def _posts(self) -> None:
        form = {
            "grant_type": "password",
            "username": "ci-deploy",
            "password": PASSWORDS["ci-deploy"],
            "service": SERVICE,
            "client_id": "replica-test",
            "scope": "repository:platform/api:pull",
        }
        self._check(
            "token POST", httpx.post(f"{self.cluster.lb}/auth/token", data=form, timeout=30)
        )

    def _pulls(self) -> None:
        skopeo = self.cluster.skopeo()
        dest = skopeo.home / "pulled"
        proc = skopeo.copy(f"docker://{self.cluster.registry.host}/{PULL_REPO}:v1", f"dir:{dest}")
        if proc.returncode != 0:
            self.failures.append(f"skopeo pull: {proc.stderr.strip()[-500:]}")
        self.counts["skopeo pull"] += 1
        shutil.rmtree(skopeo.home, ignore_errors=True)

    def _check(self, what: str, answer: httpx.Response) -> None:
        if answer.status_code != 200:
            self.failures.append(f"{what}: {answer.status_code} {answer.text[:300]}")
        self.counts[what] += 1


def decisions(replica: Gateway) -> list[object]:
    """What a replica decides for a few subjects, and the key it signs with."""
    out: list[object] = []
    for user, scope in [
        (None, f"repository:{PULL_REPO}:pull,push"),
        ("ci-deploy", "repository:platform/api:pull,push,delete"),
        ("release", "repository:platform/prod/api:pull,push"),
        ("carol", "repository:platform/api:pull,push"),
    ]:
        answer = token(replica.url, user, scope)
        header, claims = jwt_parts(answer.json()["token"])
        out.append((user, claims["revision"], claims["access"], header["kid"], claims["iss"]))
    return out


def test_a_killed_replica_costs_no_failed_operation_and_rejoins_deciding_the_same(
    cluster: Cluster,
) -> None:
    victim = cluster.replicas[1]
    assert victim.process is not None
    with Load(cluster) as load:
        time.sleep(1.0)
        victim.process.kill()  # SIGKILL: no drain, connections reset mid-request
        victim.process.wait(10)
        killed_at = sum(load.counts.values())
        time.sleep(2.0)
    print(f"operations during the kill test: {dict(load.counts)} (kill after {killed_at})")
    assert not load.failures, load.failures[:5]
    assert load.counts["skopeo pull"] >= 2 and load.counts["token POST"] >= 5
    assert sum(load.counts.values()) > killed_at + 10, "the load stopped with the replica"
    # No failure because nginx noticed the dead replica and retried on another.
    retried = [line for line in upstream_errors(cluster.nginx) if f":{victim.port}" in line]
    print(f"nginx upstream errors for the killed replica: {len(retried)}, e.g. {retried[:1]}")
    assert retried

    # (Restarting under load is what the rolling restart test does.)
    victim.process = None
    victim.start()  # same port, same keys, same remote
    assert decisions(victim) == decisions(cluster.replicas[0]) == decisions(cluster.replicas[2])


def upstream_errors(nginx: Nginx) -> list[str]:
    """nginx's error log lines about a replica that failed (and that it retried elsewhere)."""
    return [line for line in nginx.logs().splitlines() if "upstream" in line and "[error]" in line]


def test_rolling_restart_under_load_drops_no_request(cluster: Cluster) -> None:
    errors_before = len(upstream_errors(cluster.nginx))
    started = time.monotonic()
    steps: list[str] = []
    with Load(cluster) as load:
        time.sleep(0.5)
        for replica in cluster.replicas:
            assert replica.process is not None
            pid = replica.process.pid
            t0 = time.monotonic()
            replica.stop()  # SIGTERM; waits for the process to exit
            t1 = time.monotonic()
            replica.start()  # waits until /healthz answers 200
            steps.append(f"stop {t1 - t0:.1f} s + start {time.monotonic() - t1:.1f} s")
            assert replica.process is not None and replica.process.pid != pid
            assert httpx.get(f"{replica.url}/readyz").status_code == 200
        time.sleep(0.5)
    took = time.monotonic() - started
    print(
        f"rolling restart of 3 replicas in {took:.1f} s ({', '.join(steps)}) under load: {dict(load.counts)}"
    )
    retried = len(upstream_errors(cluster.nginx)) - errors_before
    print(f"nginx retried on another replica after {retried} upstream error(s)")
    assert not load.failures, load.failures[:5]
    assert sum(load.counts.values()) > 50


# -- tokens that outlive one replica -------------------------------------------------------


def test_refresh_token_from_one_replica_works_on_the_others(cluster: Cluster) -> None:
    first, *others = cluster.replicas
    login = token(first.url, "bob", offline_token="true", client_id="docker")
    assert login.status_code == 200, login.text
    refresh_token = login.json()["refresh_token"]
    for replica in others:
        answer = httpx.post(
            f"{replica.url}/auth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "service": SERVICE,
                "client_id": "docker",
                "scope": "repository:platform/api:pull,push",
            },
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        claims = jwt_parts(answer.json()["access_token"])[1]
        assert claims["sub"] == "bob"
        assert claims["access"] == [
            {"type": "repository", "name": "platform/api", "actions": ["pull", "push"]}
        ]
    # A refresh token the replicas did not sign is refused by all of them.
    forged = refresh_token[:-4] + ("AAAA" if not refresh_token.endswith("AAAA") else "BBBB")
    for replica in cluster.replicas:
        answer = httpx.post(
            f"{replica.url}/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": forged, "service": SERVICE},
            timeout=30,
        )
        assert answer.status_code == 401


def test_ui_session_from_one_replica_works_on_the_others(cluster: Cluster) -> None:
    first, *others = cluster.replicas
    with httpx.Client(base_url=first.url, follow_redirects=False, timeout=30) as client:
        form = client.get("/-/login")
        data = {"username": "bob", "password": PASSWORDS["bob"], "csrf": csrf_of(form.text)}
        assert client.post("/-/login", data=data).status_code == 303
        cookies = dict(client.cookies)
    for replica in others:
        page = httpx.get(f"{replica.url}/-/teams?format=json", cookies=cookies, timeout=30)
        assert page.status_code == 200, page.text
        assert page.json()["viewer"]["signed_in"] is True
        assert page.json()["viewer"]["name"] == "bob"
    # Without the cookie, the same page is for signed-in viewers only.
    assert httpx.get(f"{others[0].url}/-/teams?format=json", timeout=30).status_code in (401, 403)
