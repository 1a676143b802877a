"""Token latency with a dead webhook against none, in one run (issue 17's target: p99 with a
dead webhook within 10% of p99 without one).

    .venv/bin/python -m bench.webhooks [--seconds 10] [--rounds 5] [--connections 16]

Run it from the repository root. Starts three `registry-gateway serve` processes on 127.0.0.1,
each pinned to core 0 (`taskset`), serving the example policy:

  none  no webhooks (the floor, measured in the same run);
  dead  a webhook subscribed to every event ('*') whose URL is a closed port: every delivery
        is refused at once and retried (backoff, for 10 minutes), its outbox fills and drops;
  hung  the same, but the port accepts connections and never answers: every try waits out
        `webhook_timeout` (5 s), four at a time.

wrk (pinned to core 1, one thread, `--connections`) sends one anonymous request over and over,
`repository:library/base:pull,push`: a public repository, so pull is granted and push refused,
and every request is a `token.denied` event put on the queue. The cases take turns (another
one first each round), `--rounds` times, each after a 2 s warm-up; the report gives each round's
p99, the median per case, the server's CPU time per request (steadier than latency on a shared
machine), the events the gateways took off their queues and dropped (from /metrics), and PASS
or MISS.
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


def cpu_seconds(gateway: Gateway) -> float:
    """CPU time (user + system) the gateway process has used so far."""
    assert gateway.process is not None
    fields = Path(f"/proc/{gateway.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    """The sum of a counter's samples with these labels, from the gateway's /metrics."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def token_path(tmp: Path, dead_url: str, rounds: int, block: int) -> dict[str, list[float]]:
    """Microseconds per token answer in this process, `TokenService.answer` alone (no HTTP,
    no other process): no webhook; a dead one, suspended; and a subscription whose events are
    all queued and never sent (the sender is not running: every answer puts one event on a
    full queue, which drops its oldest), the hook's most expensive case."""
    from gateway.auth.request import from_query
    from gateway.config import load_settings
    from gateway.services import Services

    query = PATH.partition("?")[2].encode()

    async def run() -> dict[str, list[float]]:
        cases: dict[str, Services] = {}
        for name, url in (("none", None), ("dead", dead_url), ("queued", dead_url)):
            root = tmp / "in-process" / name
            root.mkdir(parents=True)
            settings = load_settings(
                {
                    "policies": str(webhook_policy(root, url)),
                    "data_dir": str(root / "data"),
                    "audit_log": "/dev/null",
                    "watch": "false",
                    "service": SERVICE,
                    "webhook_queue_size": "1000",
                },
                environ={SECRET_ENV: "bench-secret"},
            )
            services = cases[name] = Services(settings)
            services.start()
        dead = cases["dead"].events
        dead.start()
        n = 0

        async def answer(services: Services) -> None:
            nonlocal n
            n += 1
            request = from_query(
                query,
                None,
                request_id=str(n),
                client="127.0.0.1",
                user_agent="bench",
                started=time.perf_counter(),
            )
            await services.tokens.answer(request)

        deadline = time.monotonic() + 30
        while dead.sender.active("dead") and time.monotonic() < deadline:
            await answer(cases["dead"])
            await asyncio.sleep(0.001)  # let the sender fail its requests
        assert not dead.sender.active("dead"), "the dead webhook was not suspended"
        times: dict[str, list[float]] = {name: [] for name in cases}
        names = list(cases)
        for round_ in range(rounds):
            for name in names[round_ % 3 :] + names[: round_ % 3]:
                for _ in range(block // 10):  # warm
                    await answer(cases[name])
                started = time.perf_counter()
                for _ in range(block):
                    await answer(cases[name])
                times[name].append((time.perf_counter() - started) / block * 1e6)
        await dead.stop()
        return times

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--in-process-only",
        action="store_true",
        help="only the in-process token path figures (no servers, no wrk)",
    )
    args = parser.parse_args(argv)

    with socket.socket() as closed:  # a port nobody listens on: a dead receiver
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    hung = socket.socket()  # listens, never accepts or answers: a hung receiver
    hung.bind(("127.0.0.1", 0))
    hung.listen(1024)
    hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}/hook"

    tmp = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    os.environ[SECRET_ENV] = "bench-secret"  # the in-process gateways read it from here
    log("token path in process")
    inproc = token_path(tmp, dead_url, rounds=max(5, args.rounds), block=3000)
    print("Token path in this process (TokenService.answer alone, us per answer, median of")
    print(f"{len(inproc['none'])} interleaved blocks of 3,000; every answer a token.denied):")
    print()
    print("| case | us per answer (median) | per block | vs none |")
    print("|---|---:|---|---:|")
    floor = statistics.median(inproc["none"])
    for name, micros in inproc.items():
        median = statistics.median(micros)
        blocks = ", ".join(f"{t:.1f}" for t in micros)
        print(f"| {name} | {median:.1f} | {blocks} | {median / floor:.1%} |")
    print()
    if args.in_process_only:
        shutil.rmtree(tmp, ignore_errors=True)
        hung.close()
        return 0
    gateways: dict[str, Gateway] = {}
    try:
        for name, url in (("none", None), ("dead", dead_url), ("hung", hung_url)):
            log(f"starting gateway {name!r}")
            gateways[name] = start(tmp / name, url)
        check = httpx.get(gateways["dead"].url + PATH, timeout=10)
        assert check.status_code == 200, check.text
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in gateways}
        cpu: dict[str, list[float]] = {name: [] for name in gateways}
        names = list(gateways)
        for round_ in range(1, args.rounds + 1):
            # A different case goes first each round: drift on a shared machine hits all alike.
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                gateway = gateways[name]
                url = gateway.url + PATH
                load(url, args.warmup, args.connections)
                before = cpu_seconds(gateway)
                rate, p99 = load(url, args.seconds, args.connections)
                used = cpu_seconds(gateway) - before
                results[name].append((rate, p99))
                cpu[name].append(used / (rate * args.seconds) * 1e6)
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
    print("| case | req/s (mean) | p99 ms per round | p99 ms (median) | server CPU us/req |"
          " events dispatched | dropped | webhook requests |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    medians = {}
    for name, runs in results.items():
        medians[name] = statistics.median(p for _, p in runs)
        rounds = ", ".join(f"{p:.2f}" for _, p in runs)
        dispatched, dropped, attempts = events[name]
        print(
            f"| {name} | {statistics.mean(r for r, _ in runs):,.0f} | {rounds} | "
            f"{medians[name]:.2f} | {statistics.median(cpu[name]):.0f} | {dispatched:,.0f} | "
            f"{dropped:,.0f} | {attempts:,.0f} |"
        )
    print()
    ok = True
    best = {name: min(p for _, p in runs) for name, runs in results.items()}
    per_request = {name: statistics.median(values) for name, values in cpu.items()}
    for name in ("dead", "hung"):
        ratio = medians[name] / medians["none"]
        verdict = "PASS" if ratio <= TARGET else "MISS"
        ok = ok and verdict == "PASS"
        print(
            f"{verdict}: p99 with a {name} webhook {medians[name]:.2f} ms = {ratio:.1%} of "
            f"none ({medians['none']:.2f} ms); target <= {TARGET:.0%}"
        )
        print(
            f"  info: best round's p99 {best[name]:.2f} ms = {best[name] / best['none']:.1%} of "
            f"none's best ({best['none']:.2f} ms); server CPU per request "
            f"{per_request[name] / per_request['none']:.1%} of none's"
        )
    spread = max(p for _, p in results["none"]) / min(p for _, p in results["none"])
    if spread > 1.5:
        print(
            f"WARNING: none's p99 varied {spread:.1f}x between rounds: other processes took the "
            "cores; the CPU per request is the steadier figure, run again on a quiet machine"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
