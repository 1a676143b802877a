"""Several workers of one `serve` share one git checkout of the policy: a revoking commit
reaches every worker within a poll, and /healthz says which revision each one serves."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.realworld.test_reload import bob_push, commit_and_push, demote_bob, git_source, remote
from tests.support.gateway import start_gateway

__all__ = ["remote"]  # the fixture, shared with test_reload


def test_two_workers_both_follow_a_revoking_commit(
    tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    bare, work = remote
    gateway = start_gateway(
        tmp_path / "gw",
        args=["--workers", "2", *git_source(bare)],
    )
    try:
        assert bob_push(gateway)[1] == ["pull", "push"]
        demote_bob(work)
        revoked = commit_and_push(work, "bob only views platform")
        pushed = time.monotonic()
        time.sleep(3)  # three polls: every worker has fetched or followed by now
        # A new connection each time: the requests spread over both workers.
        answers = [bob_push(gateway) for _ in range(30)]
        assert all(answer == (revoked, ["pull"]) for answer in answers), answers
        health = [httpx.get(f"{gateway.url}/healthz", timeout=30).json() for _ in range(10)]
        assert {h["revision"] for h in health} == {revoked}
        assert {h["newest"] for h in health} == {revoked}
        assert {h["status"] for h in health} == {"ok"}
        print(f"revocation on both workers within {time.monotonic() - pushed:.1f} s")
        assert "index.lock" not in gateway.logs()
    finally:
        gateway.stop()


def test_a_rejected_commit_is_tried_once_until_the_branch_moves(
    tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    bare, work = remote
    gateway = start_gateway(
        tmp_path / "gw",
        args=git_source(bare, poll="0.3s"),
    )
    try:
        (work / "policies" / "teams.yaml").write_text("teams: [\n")
        commit_and_push(work, "broken")
        time.sleep(3)  # about ten polls of the same rejected commit
        rejected = gateway.logs().count('"event":"policy_rejected"')
        assert rejected == 1, f"the rejected commit was parsed {rejected} times"
        health = httpx.get(f"{gateway.url}/healthz", timeout=30).json()
        assert health["status"] == "degraded" and health["newest"] != health["revision"]
    finally:
        gateway.stop()


def test_a_worker_that_stalls_for_seconds_is_not_killed(tmp_path: Path) -> None:
    """A worker busy for a while (loading a large policy, a host under load: here, stopped
    for 7 s) is not killed and restarted by the supervisor, whose own default gives up on a
    worker after 5 s without an answer (and then kills its replacements in a loop)."""
    gateway = start_gateway(tmp_path / "gw", args=["--workers", "2"])
    try:
        assert gateway.process is not None
        workers = worker_pids(gateway.process.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGSTOP)
        time.sleep(7)
        os.kill(workers[0], signal.SIGCONT)
        time.sleep(1)
        assert worker_pids(gateway.process.pid) == workers
        assert "died" not in gateway.logs()
        assert httpx.get(f"{gateway.url}/healthz", timeout=30).status_code == 200
    finally:
        gateway.stop()


def worker_pids(supervisor: int) -> list[int]:
    """The worker processes under uvicorn's supervisor (not multiprocessing's tracker)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return sorted(
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
