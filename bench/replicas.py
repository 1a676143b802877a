"""Requests/s of three gateway replicas behind nginx against one replica direct, same run.

    .venv/bin/python -m bench.replicas [--seconds 5] [--connections 16] [--rounds 3]

Run it from the repository root. Starts three `registry-gateway serve` replicas sharing their
signing keys (as tests/realworld/test_replicas.py does) and Debian's nginx in front of them,
then measures anonymous token requests (GET /auth/token, one pull scope) with wrk, or with an
httpx async loop when wrk is missing:

  1. one replica, direct;
  2. nginx in front of that one replica (what the load balancer costs);
  3. nginx in front of the three replicas.

Everything runs on this machine and competes for its cores: the figures show that nothing is
serialised and what nginx costs, not how a cluster of machines scales. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.gateway import SERVICE, Gateway
from tests.support.nginx import Nginx, start_nginx
from tests.support.registry import free_port
from tests.support.replicas import make_keys, start_replicas

PATH = f"/auth/token?service={SERVICE}&scope=repository:library/base:pull"


def wrk(url: str, seconds: float, connections: int) -> tuple[float, str]:
    """Requests/s and p99 latency from wrk (2 threads)."""
    proc = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", proc.stdout)
    p99 = re.search(r"99%\s+(\S+)", proc.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", proc.stdout)
    if errors:
        raise SystemExit(f"wrk saw failed requests against {url}:\n{proc.stdout}")
    assert rate and p99, proc.stdout
    return float(rate.group(1)), p99.group(1)


async def _httpx_loop(url: str, seconds: float, connections: int) -> tuple[float, str]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            answer = await client.get(url)
            answer.raise_for_status()
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return len(latencies) / elapsed, f"{latencies[int(len(latencies) * 0.99)] * 1000:.2f}ms"


def measure(url: str, seconds: float, connections: int) -> tuple[float, str]:
    # A short warm-up, then the measured run.
    if shutil.which("wrk"):
        wrk(url, 1, connections)
        return wrk(url, seconds, connections)
    asyncio.run(_httpx_loop(url, 1, connections))
    return asyncio.run(_httpx_loop(url, seconds, connections))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    replicas: list[Gateway] = []
    balancers: list[Nginx] = []
    try:
        keys = make_keys(root / "keys-source", root / "bundle.pem")
        lb_port = free_port()
        replicas = start_replicas(
            root, 3, keys=keys, args=["--public-url", f"http://127.0.0.1:{lb_port}"]
        )
        workers = os.cpu_count() or 1
        one = start_nginx(root / "nginx-1", [f"127.0.0.1:{replicas[0].port}"], workers=workers)
        balancers.append(one)
        three = start_nginx(
            root / "nginx-3",
            [f"127.0.0.1:{r.port}" for r in replicas],
            port=lb_port,
            workers=workers,
        )
        balancers.append(three)
        tool = "wrk" if shutil.which("wrk") else "httpx"
        print(
            f"anonymous GET /auth/token, {args.connections} connections, {args.seconds:.0f} s "
            f"each, {tool}, {os.cpu_count()} cores",
            file=sys.stderr,
        )
        cases = [
            ("1 replica, direct", replicas[0].url),
            ("nginx -> 1 replica", one.url),
            ("nginx -> 3 replicas", three.url),
        ]
        # Rounds interleave the cases, so that other work on the machine hits them alike.
        runs: dict[str, list[tuple[float, str]]] = {title: [] for title, _ in cases}
        for round_ in range(1, args.rounds + 1):
            for title, base in cases:
                rate, p99 = measure(base + PATH, args.seconds, args.connections)
                runs[title].append((rate, p99))
                print(f"  round {round_}: {title}: {rate:.0f} requests/s", file=sys.stderr)
        served = [len(r.audit()) for r in replicas]
        print(f"| setup | requests/s (median of {args.rounds}) | p99 of that run |")
        print("|---|---:|---:|")
        for title, results in runs.items():
            rate, p99 = sorted(results)[len(results) // 2]
            print(f"| {title} | {rate:.0f} | {p99} |")
        print(f"\ntoken requests audited per replica over the whole run: {served}")
    finally:
        for balancer in balancers:
            balancer.stop()
        for replica in replicas:
            replica.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
