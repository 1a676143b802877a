"""How long until a policy change is enforced: from a file write, and from a git push.

    .venv/bin/python -m bench.reload [--rounds 20]     # from the repository root

Starts real gateways (`registry-gateway serve`) on loopback, changes the policy, and polls
the token endpoint until a token carries the new revision. Prints the median and worst time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.gateway import EXAMPLE_POLICIES, Gateway, jwt_parts, start_gateway
from tests.support.gitrepo import git


def revision(gateway: Gateway) -> str:
    claims = jwt_parts(gateway.token(None, "repository:library/x:pull").json()["token"])[1]
    return str(claims["revision"])


def wait_change(gateway: Gateway, old: str, started: float, timeout: float = 30) -> float:
    while True:
        if revision(gateway) != old:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise SystemExit("the gateway never enforced the change")
        time.sleep(0.005)


def bump(path: Path, i: int) -> None:
    text = path.read_text().split("\n# bench")[0]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{text}\n# bench {i}\n")
    os.replace(tmp, path)


def file_writes(root: Path, rounds: int, debounce: str) -> list[float]:
    gateway = start_gateway(root / f"files-{debounce}", args=["--reload-debounce", debounce])
    try:
        times = []
        for i in range(rounds):
            old = revision(gateway)
            started = time.perf_counter()
            bump(gateway.policies / "settings.yaml", i)
            times.append(wait_change(gateway, old, started))
        return times
    finally:
        gateway.stop()


def git_pushes(root: Path, rounds: int, *, hook: bool, interval: str) -> list[float]:
    bare, work = root / f"remote-{hook}.git", root / f"work-{hook}"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(root, "init", "-q", "-b", "main", str(work))
    shutil.copytree(EXAMPLE_POLICIES, work / "policies")
    git(work, "add", ".")
    git(work, "commit", "-qm", "start")
    git(work, "push", "-q", str(bare), "main")
    secret = "bench-reload-secret"
    gateway = start_gateway(
        root / f"gw-{hook}",
        args=["--policy-git", f"file://{bare}", "--poll-interval", interval],
        env={"REGISTRY_GATEWAY_RELOAD_SECRET": secret},
    )
    try:
        times = []
        for i in range(rounds):
            old = revision(gateway)
            bump(work / "policies" / "settings.yaml", i)
            git(work, "commit", "-qam", f"change {i}")
            started = time.perf_counter()
            git(work, "push", "-q", str(bare), "main")
            if hook:
                httpx.post(
                    f"{gateway.url}/-/reload",
                    headers={"Authorization": f"Bearer {secret}"},
                    timeout=30,
                )
            times.append(wait_change(gateway, old, started))
        return times
    finally:
        gateway.stop()


def report(name: str, times: list[float]) -> None:
    ms = sorted(t * 1000 for t in times)
    print(
        f"{name:<44} median {statistics.median(ms):7.0f} ms   worst {ms[-1]:7.0f} ms   (n={len(ms)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("file write -> enforced (watchfiles):", file=sys.stderr)
        report("file write, debounce 200ms (default)", file_writes(root, args.rounds, "200ms"))
        report("file write, debounce 50ms", file_writes(root, args.rounds, "50ms"))
        print("git push -> enforced:", file=sys.stderr)
        report(
            "git push, POST /-/reload webhook",
            git_pushes(root, args.rounds, hook=True, interval="1h"),
        )
        report(
            "git push, polling every 2s",
            git_pushes(root, max(3, args.rounds // 2), hook=False, interval="2s"),
        )


if __name__ == "__main__":
    main()
