"""Token latency with a dead webhook against none, in one run (issue 17's target: p99 with a
dead webhook within 10% of p99 without one).

    .venv/bin/python -m bench.webhooks [--seconds 10] [--rounds 3] [--connections 16]

Run it from the repository root. Starts three `registry-gateway serve` processes on 127.0.0.1,
each pinned to core 0 (`taskset`), serving the example policy:

  none  no webhooks (the floor, measured in the same run);
  dead  a webhook subscribed to every event ('*') whose URL is a closed port: every delivery
        is refused at once and retried (backoff, for 10 minutes), its outbox fills and drops;
  hung  the same, but the port accepts connections and never answers: every try waits out
        `webhook_timeout` (5 s), four at a time.

wrk (pinned to core 1, one thread, `--connections`) sends one anonymous request over and over,
`repository:library/base:pull,push`: a public repository, so pull is granted and push refused,
and every request is a `token.denied` event put on the queue. The cases take turns, `--rounds`
times, each after a 2 s warm-up; the report gives each round's p99 and the median per case, the
events the gateways took off their queues and dropped (from /metrics), and PASS or MISS.
Without wrk it falls back to an httpx loop (its figures are the client's, and noisier).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.gateway import EXAMPLE_POLICIES, SERVICE, Gateway
from tests.support.registry import free_port

SCOPE = "repository:library/base:pull,push"
PATH = f"/auth/token?service={SERVICE}&scope={SCOPE}"
TARGET = 1.10  # p99 with a dead webhook at most 10% above none
SECRET_ENV = "BENCH_WEBHOOK_SECRET"


class Pinned(Gateway):
    """A gateway process pinned to one core."""

    core: str = "0"

    def command(self) -> list[str]:
        base = super().command()
        return ["taskset", "-c", self.core, *base] if shutil.which("taskset") else base


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def webhook_policy(root: Path, url: str | None) -> Path:
    policies = root / "policies"
    shutil.copytree(EXAMPLE_POLICIES, policies)
    if url is not None:
        (policies / "webhooks.yaml").write_text(
            f'webhooks:\n  dead:\n    url: {url}\n    events: ["*"]\n    secret_env: {SECRET_ENV}\n'
        )
    return policies


def start(root: Path, url: str | None) -> Gateway:
    root.mkdir(parents=True)
    gateway = Pinned(
        root,
        webhook_policy(root, url),
        free_port(),
        None,
        service=SERVICE,
        env={SECRET_ENV: "bench-secret"},
        args=["--log-level", "warning"],
    )
    gateway.start()
    return gateway


def wrk(url: str, seconds: float, connections: int) -> tuple[float, float]:
    """Requests/s and p99 (ms) from wrk, pinned to core 1."""
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") else []
    proc = subprocess.run(
        [*pin, "wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    )
    if re.search(r"Non-2xx or 3xx responses|Socket errors", proc.stdout):
        raise SystemExit(f"wrk saw failed requests against {url}:\n{proc.stdout}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", proc.stdout)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", proc.stdout)
    assert rate and p99, proc.stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return float(rate.group(1)), float(p99.group(1)) * scale


async def _httpx(url: str, seconds: float, connections: int) -> tuple[float, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                answer = await client.get(url)
                answer.raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(worker() for _ in range(connections)))
    latencies.sort()
    return len(latencies) / seconds, latencies[int(len(latencies) * 0.99) - 1]


def load(url: str, seconds: float, connections: int) -> tuple[float, float]:
    if shutil.which("wrk"):
        return wrk(url, seconds, connections)
    return asyncio.run(_httpx(url, seconds, connections))


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    """The sum of a counter's samples with these labels, from the gateway's /metrics."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)

    with socket.socket() as closed:  # a port nobody listens on: a dead receiver
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    hung = socket.socket()  # listens, never accepts or answers: a hung receiver
    hung.bind(("127.0.0.1", 0))
    hung.listen(1024)
    hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}/hook"

    tmp = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    gateways: dict[str, Gateway] = {}
    try:
        for name, url in (("none", None), ("dead", dead_url), ("hung", hung_url)):
            log(f"starting gateway {name!r}")
            gateways[name] = start(tmp / name, url)
        check = httpx.get(gateways["dead"].url + PATH, timeout=10)
        assert check.status_code == 200, check.text
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in gateways}
        for round_ in range(1, args.rounds + 1):
            for name, gateway in gateways.items():
                url = gateway.url + PATH
                load(url, args.warmup, args.connections)
                rate, p99 = load(url, args.seconds, args.connections)
                results[name].append((rate, p99))
                log(f"round {round_} {name}: {rate:,.0f} req/s, p99 {p99:.2f} ms")
        events = {
            name: (
                metric(g, "registry_gateway_events_total", type="token.denied"),
                metric(g, "registry_gateway_webhook_dropped_total"),
                metric(g, "registry_gateway_webhook_attempts_total"),
            )
            for name, g in gateways.items()
        }
    finally:
        for gateway in gateways.values():
            gateway.stop()
        hung.close()
        shutil.rmtree(tmp, ignore_errors=True)

    tool = "wrk (-t1, pinned to core 1)" if shutil.which("wrk") else "httpx loop (noisier)"
    print(f"bench.webhooks: GET {PATH}, anonymous (pull granted, push refused: a token.denied")
    print(f"each request); {tool}, {args.connections} connections, {args.rounds} rounds of")
    print(f"{args.seconds:.0f} s per case after {args.warmup:.0f} s warm-up; servers on core 0;")
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print()
    print("| case | req/s (mean) | p99 ms per round | p99 ms (median) | events dispatched |"
          " dropped | webhook requests |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|")
    medians = {}
    for name, runs in results.items():
        medians[name] = statistics.median(p for _, p in runs)
        rounds = ", ".join(f"{p:.2f}" for _, p in runs)
        dispatched, dropped, attempts = events[name]
        print(
            f"| {name} | {statistics.mean(r for r, _ in runs):,.0f} | {rounds} | "
            f"{medians[name]:.2f} | {dispatched:,.0f} | {dropped:,.0f} | {attempts:,.0f} |"
        )
    print()
    ok = True
    for name in ("dead", "hung"):
        ratio = medians[name] / medians["none"]
        verdict = "PASS" if ratio <= TARGET else "MISS"
        ok = ok and verdict == "PASS"
        print(
            f"{verdict}: p99 with a {name} webhook {medians[name]:.2f} ms = {ratio:.1%} of "
            f"none ({medians['none']:.2f} ms); target <= {TARGET:.0%}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
