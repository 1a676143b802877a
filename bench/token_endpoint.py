"""Benchmark the gateway's GET /auth/token against two floors, with wrk, on pinned cores.

Each case gets its own server on a free 127.0.0.1 port (its own temp --data-dir and --audit-log
file), pinned to one core with `taskset`; the load generator (wrk, with a Lua script that builds
every request, so a path can differ per request) runs pinned to another core. After a warm-up,
one measured run gives requests/s and p50/p99 latency. The floors are a tiny Starlette app
(bench/floors.py) served by uvicorn with the gateway's own settings (httptools, the gateway's
event loop, `--event-loop`, asyncio by default; one worker, uvicorn's access log off).

The cases run in `--rounds` rounds (3 by default): each round runs every selected case once,
floors included, in the listed order in odd rounds and reversed in even ones. A shared VM's speed
drifts by tens of percent over a minute or two, while runs a few seconds apart agree, so every
ratio to a floor is taken within a round (the case against that round's floor) and the median
over rounds is reported; the tables show each case's median round.

    .venv/bin/python -m bench.token_endpoint              # everything, 3 rounds, about 9 minutes
    .venv/bin/python -m bench.token_endpoint --cases robot-distinct,floor-sign --seconds 5
    .venv/bin/python -m bench.token_endpoint --rounds 1   # one run per case, about 3 minutes
    .venv/bin/python -m bench.token_endpoint --list       # the cases

Run it from the repository root.

Progress goes to stderr, the results table to stdout. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SERVICE = "registry.bench.local"
PLACEHOLDER = "__N__"  # replaced per request by a number unique to the run

ROBOT = ("ci-deploy", "ci-deploy-example-robot-secret")
USER = ("bob", "bob-example-password")

# The cases issue 3 names (and its floors): the p99 target applies to these. The other cases
# change one setting from its default (no auth cache, a cheap hash, no logs) to show its cost.
ISSUE_CASES = frozenset(
    {"floor-bare", "floor-sign", "anonymous", "robot-distinct", "robot-repeat", "user-5-scopes"}
)

# Targets: issue 3 ("Speed"), raised by issue 11 ("What must hold") for distinct requests.
DISTINCT_VS_SIGN = 0.70
REPEAT_VS_BARE = 0.50
P99_LIMIT_MS = 20.0


def _query(*scopes: str) -> str:
    pairs = [("service", SERVICE)] + [("scope", s) for s in scopes]
    return urllib.parse.urlencode(pairs)


# How each kind of server is started: the policy (the example one, or a bench-only copy where
# bob's hash is bcrypt cost 4), where the audit goes, and extra `serve` flags.
SERVERS: dict[str, dict[str, Any]] = {
    "floors": {},
    "gateway": {"policy": "example", "audit": "file", "flags": ()},
    "gateway-no-auth-cache": {
        "policy": "example",
        "audit": "file",
        "flags": ("--auth-cache-ttl", "0"),
    },
    "gateway-bcrypt4-no-auth-cache": {
        "policy": "bcrypt4",
        "audit": "file",
        "flags": ("--auth-cache-ttl", "0"),
    },
    "gateway-audit-null": {"policy": "example", "audit": "null", "flags": ()},
    "gateway-no-logs": {
        "policy": "example",
        "audit": "null",
        "flags": ("--log-level", "warning"),
    },
}

USER_SCOPES = (
    f"repository:platform/app-{PLACEHOLDER}:pull,push",
    "repository:platform/base:pull",
    "repository:library/alpine:pull",
    f"repository:bob/tools-{PLACEHOLDER}:pull,push",
    "repository:qa/runner:pull",
)
USER_GRANTS = (("pull", "push"), ("pull",), ("pull",), ("pull", "push"), ("pull",))
DISTINCT = f"/auth/token?{_query(f'repository:platform/svc-{PLACEHOLDER}:pull,push')}"
REPEAT = f"/auth/token?{_query('repository:platform/svc-1:pull,push')}"


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    server: str  # a key of SERVERS
    path: str  # may contain PLACEHOLDER
    credentials: tuple[str, str] | None
    expect: tuple[tuple[str, ...], ...]  # granted actions per access entry, in order
    note: str = ""


CASES: tuple[Case, ...] = (
    Case(
        "floor-bare",
        "floor (a): bare Starlette JSON",
        "floors",
        "/bare",
        None,
        (),
        "fixed small JSON, no work",
    ),
    Case(
        "floor-sign",
        "floor (b): Basic + scope + ES256 sign",
        "floors",
        f"/sign?{_query(f'repository:platform/svc-{PLACEHOLDER}:pull,push')}",
        ROBOT,
        (("pull", "push"),),
        "PyJWT ES256 with kid + x5c; distinct each request",
    ),
    Case(
        "anonymous",
        "1. anonymous pull, public repo",
        "gateway",
        f"/auth/token?{_query('repository:library/alpine:pull')}",
        None,
        (("pull",),),
        "identical requests",
    ),
    Case(
        "robot-distinct",
        "2. robot, 1 scope, distinct repos",
        "gateway",
        DISTINCT,
        ROBOT,
        (("pull", "push"),),
        "ci-deploy, every request a new repository",
    ),
    Case(
        "robot-repeat",
        "3. robot, same request repeated",
        "gateway",
        REPEAT,
        ROBOT,
        (("pull", "push"),),
        "ci-deploy, as docker push does",
    ),
    Case(
        "user-5-scopes",
        "4. user, 5 scopes (auth cache on)",
        "gateway",
        f"/auth/token?{_query(*USER_SCOPES)}",
        USER,
        USER_GRANTS,
        "bob (argon2id m=64MiB t=3 p=4) with the default --auth-cache-ttl: one hash, then cached",
    ),
    Case(
        "user-5-scopes-no-auth-cache",
        "4'. user, 5 scopes, auth cache off",
        "gateway-no-auth-cache",
        f"/auth/token?{_query(*USER_SCOPES)}",
        USER,
        USER_GRANTS,
        "bob's argon2id, --auth-cache-ttl 0: concurrent asks share one in-flight check",
    ),
    Case(
        "user-5-scopes-bcrypt4",
        "4b. user, 5 scopes, bcrypt-4, no cache",
        "gateway-bcrypt4-no-auth-cache",
        f"/auth/token?{_query(*USER_SCOPES)}",
        USER,
        USER_GRANTS,
        "bench-only policy: bob's hash is bcrypt cost 4 (~1 ms), --auth-cache-ttl 0",
    ),
    Case(
        "robot-distinct-audit-null",
        "2'. as 2, --audit-log /dev/null",
        "gateway-audit-null",
        DISTINCT,
        ROBOT,
        (("pull", "push"),),
        "what writing the audit file costs",
    ),
    Case(
        "robot-repeat-audit-null",
        "3'. as 3, --audit-log /dev/null",
        "gateway-audit-null",
        REPEAT,
        ROBOT,
        (("pull", "push"),),
        "what writing the audit file costs",
    ),
    Case(
        "robot-distinct-no-logs",
        "2''. as 2', and --log-level warning",
        "gateway-no-logs",
        DISTINCT,
        ROBOT,
        (("pull", "push"),),
        "audit to /dev/null and --log-level warning: no request log line either",
    ),
    Case(
        "robot-repeat-no-logs",
        "3''. as 3', and --log-level warning",
        "gateway-no-logs",
        REPEAT,
        ROBOT,
        (("pull", "push"),),
        "audit to /dev/null and --log-level warning: no request log line either",
    ),
)
BY_NAME = {c.name: c for c in CASES}

# wrk: every request comes from request(); each __N__ in a path becomes a number unique to the run
# (run tag, thread, counter), so no cache can answer two of them alike. done() prints one JSON line.
LUA = r"""
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

local parts, static, tag
local counter = 0
function init(args)
  local template, auth = args[1], args[2]
  tag = args[3] .. "t" .. tostring(tid) .. "n"
  if auth ~= "" then wrk.headers["Authorization"] = "Basic " .. auth end
  parts = {}
  local pos = 1
  while true do
    local s, e = string.find(template, "__N__", pos, true)
    if not s then
      table.insert(parts, template:sub(pos))
      break
    end
    table.insert(parts, template:sub(pos, s - 1))
    pos = e + 1
  end
  if #parts == 1 then static = wrk.format("GET", template) end
end

function request()
  if static then return static end
  counter = counter + 1
  return wrk.format("GET", table.concat(parts, tag .. counter))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def _multi(template: str, tag: str) -> str:
    """Every PLACEHOLDER of a path replaced by `tag`, as the Lua script does per request."""
    return template.replace(PLACEHOLDER, tag)


@dataclass
class Result:
    case: Case
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    non2xx: int = 0
    errors: int = 0
    rss_mib: float | None = None
    server_cpu: float | None = None  # share of one core the server used while measured
    client_cpu: float | None = None  # same for the load generator
    other_server_core: float | None = None  # other processes on the server's core
    other_client_core: float | None = None  # other processes on the load generator's core
    steal: float | None = None  # hypervisor steal on the two cores, mean
    attempts: int = 1  # runs made of this case in its round (the least disturbed one is kept)
    round: int = 1
    audit_lines: int | None = None
    granted: str = ""
    failure: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


# Never through a proxy from the environment: every request goes to 127.0.0.1 directly.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    audit_path: Path | None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _bcrypt4_policy(source: Path, target: Path) -> Path:
    """A copy of the example policy where bob's password is a bcrypt hash of cost 4."""
    import bcrypt
    import yaml

    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".git"))
    hashed = bcrypt.hashpw(USER[1].encode(), bcrypt.gensalt(4)).decode()
    for path in sorted(target.glob("*.y*ml")):
        data = yaml.safe_load(path.read_text())
        users = data.get("users") if isinstance(data, dict) else None
        if isinstance(users, dict) and USER[0] in users:
            users[USER[0]]["password"] = hashed
            path.write_text(
                "# bench-only copy of the example policy: bob has a bcrypt cost-4 hash\n"
                + yaml.safe_dump(data, sort_keys=False)
            )
            return target
    raise SystemExit(f"bench.token_endpoint: no user {USER[0]!r} in {source}")


def server_command(
    kind: str, run_dir: Path, port: int, *, policies: Path, event_loop: str
) -> tuple[list[str], Path | None]:
    """The command serving `kind` (a key of SERVERS) on 127.0.0.1:`port` from `run_dir`, and
    the audit file it writes (None for the floors and an audit to /dev/null)."""
    if kind == "floors":
        # Served from a copy in the run's directory: floors.py alone on --app-dir.
        shutil.copy2(BENCH_DIR / "floors.py", run_dir / "floors.py")
        return [
            sys.executable, "-m", "uvicorn", "floors:app",
            "--app-dir", str(run_dir),
            "--host", "127.0.0.1", "--port", str(port),
            "--loop", event_loop, "--http", "httptools", "--workers", "1",
            "--no-access-log", "--no-server-header", "--log-level", "warning",
        ], None  # fmt: skip
    setup = SERVERS[kind]
    if setup["policy"] == "bcrypt4":
        policies = _bcrypt4_policy(policies, run_dir / "policy")
    audit_path = None if setup["audit"] == "null" else run_dir / "audit.log"
    return [
        sys.executable, "-m", "gateway", "serve",
        "--policies", str(policies),
        "--data-dir", str(run_dir / "data"),
        "--listen", f"127.0.0.1:{port}",
        "--public-url", f"http://127.0.0.1:{port}",
        "--service", SERVICE,
        "--workers", "1",
        "--event-loop", event_loop,
        "--audit-log", str(audit_path or "/dev/null"),
        *setup["flags"],
    ], audit_path  # fmt: skip


def start_server(kind: str, args: argparse.Namespace, tmp: Path, pin: bool) -> Server:
    port = free_port()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=tmp))
    log_path = run_dir / "server.log"
    cmd, audit_path = server_command(
        kind, run_dir, port, policies=args.policies, event_loop=args.event_loop
    )
    if pin:
        cmd = ["taskset", "-c", str(args.server_cpu), *cmd]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("REGISTRY_GATEWAY_")}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(kind, port, proc, log_path, audit_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited ({proc.returncode}):\n{log_tail(log_path)}")
        try:
            with _DIRECT.open(f"{server.base}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"{kind} server not healthy within 60 s:\n{log_tail(log_path)}")


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def peak_rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        # SIGINT: uvicorn's graceful shutdown at once (SIGTERM would first drain for 5 s).
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


# -- one request, to check the answer before loading the server -------------------------------


def basic(credentials: tuple[str, str] | None) -> str:
    if credentials is None:
        return ""
    return base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()


def check_once(server: Server, case: Case) -> str:
    """GET the case's request once (its own repository names); the granted access, or raise."""
    request = urllib.request.Request(server.base + _multi(case.path, "check"))
    if case.credentials:
        request.add_header("Authorization", f"Basic {basic(case.credentials)}")
    try:
        with _DIRECT.open(request, timeout=60) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"check request got {exc.code}: {exc.read()[:300]!r}") from None
    if not case.expect:
        return "-"
    payload = body["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    access = claims.get("access", [])
    got = tuple(tuple(a["actions"]) for a in access)
    if got != case.expect:
        raise RuntimeError(f"check request granted {access}, expected actions {case.expect}")
    return "; ".join(f"{a['name']}:{','.join(a['actions'])}" for a in access)


# -- load generators ---------------------------------------------------------------------------


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    server: Server,
    case: Case,
    seconds: int,
    tag: str,
    args: argparse.Namespace,
    pin: bool,
    timeout: int,
) -> dict[str, Any]:
    script = Path(args.tmp) / "token.lua"
    script.write_text(LUA)
    cmd = [
        args.wrk, "-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds}s",
        "--timeout", f"{timeout}s", "-s", str(script), server.base,
        "--", case.path, basic(case.credentials), tag,
    ]  # fmt: skip
    if pin:
        cmd = ["taskset", "-c", str(args.client_cpu), *cmd]
    return _bench_line(subprocess.run(cmd, capture_output=True, text=True, check=False), cmd)


def _bench_line(done: subprocess.CompletedProcess[str], cmd: list[str]) -> dict[str, Any]:
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            stats: dict[str, Any] = json.loads(line[len("BENCH ") :])
            return stats
    raise RuntimeError(
        f"load generator failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    )


def run_httpx(
    server: Server,
    case: Case,
    seconds: int,
    tag: str,
    args: argparse.Namespace,
    pin: bool,
    timeout: int,
) -> dict[str, Any]:
    config = {
        "base": server.base,
        "template": case.path,
        "auth": basic(case.credentials),
        "tag": tag,
        "connections": args.connections,
        "seconds": seconds,
        "timeout": timeout,
    }
    cmd = [sys.executable, "-m", "bench.token_endpoint", "--httpx-worker", json.dumps(config)]
    if pin:
        cmd = ["taskset", "-c", str(args.client_cpu), *cmd]
    return _bench_line(
        subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO), cmd
    )


async def _httpx_load(config: dict[str, Any]) -> dict[str, Any]:
    import httpx

    connections = config["connections"]
    headers = {"Authorization": f"Basic {config['auth']}"} if config["auth"] else {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    counter = itertools.count()
    async with httpx.AsyncClient(
        base_url=config["base"],
        headers=headers,
        limits=limits,
        timeout=config["timeout"],
        trust_env=False,  # never a proxy: only 127.0.0.1
    ) as client:
        deadline = time.perf_counter() + config["seconds"]

        async def worker() -> None:
            while time.perf_counter() < deadline:
                path = config["template"].replace(PLACEHOLDER, f"{config['tag']}n{next(counter)}")
                started = time.perf_counter()
                try:
                    answer = await client.get(path)
                except httpx.TimeoutException:
                    errors["timeout"] += 1
                    continue
                except httpx.HTTPError:
                    errors["read"] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if answer.status_code > 399:
                    errors["status"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        duration = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> int:
        if not latencies:
            return 0
        return int(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6)

    return {
        "requests": len(latencies),
        "duration_us": int(duration * 1e6),
        **errors,
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "max_us": int(latencies[-1] * 1e6) if latencies else 0,
        "mean_us": sum(latencies) / len(latencies) * 1e6 if latencies else 0.0,
    }


# -- who used the CPUs while a case was measured ------------------------------------------------

HZ = os.sysconf("SC_CLK_TCK")


def core_jiffies() -> dict[int, tuple[int, int, int]]:
    """Per core: (busy, steal, total) jiffies from /proc/stat."""
    found: dict[int, tuple[int, int, int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if not (name.startswith("cpu") and name[3:].isdigit()):
                continue
            v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            # Interrupt time is left out of "busy": loopback networking runs there on behalf of
            # the server and wrk, and it is not some other process's load.
            busy = v[0] + v[1] + v[2]
            found[int(name[3:])] = (busy, v[7], sum(v))
    return found


def process_seconds(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a process has used."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    return None


def wait_until_quiet(limit: float, cores: tuple[int, ...], threshold: float = 0.10) -> float:
    """Wait (at most `limit` s) until the benchmark's cores are idle; the busiest share seen last."""
    deadline = time.monotonic() + limit
    told = False
    while True:
        before = core_jiffies()
        time.sleep(1.0)
        after = core_jiffies()
        busiest = 0.0
        for core in cores:
            if core in before and core in after:
                busy, _, total = (a - b for a, b in zip(after[core], before[core], strict=True))
                busiest = max(busiest, busy / total if total else 0.0)
        if busiest <= threshold or time.monotonic() >= deadline:
            return busiest
        if not told:
            log(f"  other processes keep a benchmark core {busiest:.0%} busy; waiting for quiet")
            told = True


def settle(pid: int, limit: float = 60.0) -> None:
    """Wait until the server has finished what the warm-up left in flight (its CPU goes idle)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = process_seconds(pid)
        time.sleep(0.3)
        after = process_seconds(pid)
        if before is None or after is None or after - before < 0.3 * 0.05:
            return


def children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuWatch:
    """CPU use of the server, the load generator and everybody else over one measured run."""

    def __init__(self, server_pid: int, server_core: int, client_core: int) -> None:
        self.pid, self.server_core, self.client_core = server_pid, server_core, client_core
        self.wall = time.monotonic()
        self.cores = core_jiffies()
        self.server = process_seconds(server_pid)
        self.children = children_seconds()

    def finish(self, result: Result, pinned: bool) -> None:
        wall = time.monotonic() - self.wall
        cores, server = core_jiffies(), process_seconds(self.pid)
        if server is not None and self.server is not None and wall > 0:
            result.server_cpu = (server - self.server) / wall
        if wall > 0:
            result.client_cpu = (children_seconds() - self.children) / wall
        if not pinned:
            return

        def used(core: int) -> tuple[float, float] | None:
            if core not in cores or core not in self.cores:
                return None
            busy, steal, total = (a - b for a, b in zip(cores[core], self.cores[core], strict=True))
            return (busy / total, steal / total) if total else None

        on_server, on_client = used(self.server_core), used(self.client_core)
        if on_server and result.server_cpu is not None:
            result.other_server_core = max(0.0, on_server[0] - result.server_cpu)
        if on_client and result.client_cpu is not None:
            result.other_client_core = max(0.0, on_client[0] - result.client_cpu)
        if on_server and on_client:
            result.steal = (on_server[1] + on_client[1]) / 2


# -- the run -----------------------------------------------------------------------------------


def count_lines(path: Path | None) -> int | None:
    if path is None:
        return None
    with contextlib.suppress(OSError), path.open("rb") as f:
        return sum(1 for _ in f)
    return None


def run_case(case: Case, args: argparse.Namespace, pin: bool, prefix: str, tag: str) -> Result:
    """One run of a case on a fresh server; `tag` makes its repository names its own."""
    result = Result(case)
    load = run_wrk if args.generator == "wrk" else run_httpx
    server: Server | None = None
    try:
        if args.quiet_wait > 0 and pin:
            busy = wait_until_quiet(args.quiet_wait, (args.server_cpu, args.client_cpu))
            if busy > 0.10:
                log(f"{prefix} still {busy:.0%} busy after {args.quiet_wait} s; going on")
        server = start_server(case.server, args, Path(args.tmp), pin)
        log(f"{prefix} {case.server} server up on 127.0.0.1:{server.port}")
        result.granted = check_once(server, case)
        seconds, timeout, warmup = args.seconds, args.timeout, args.warmup
        log(f"{prefix} check ok (granted {result.granted}); warm-up {warmup} s")
        if warmup > 0:
            load(server, case, warmup, f"w{tag}", args, pin, timeout)
            settle(server.proc.pid)
        log(f"{prefix} measuring {seconds} s at {args.connections} connections")
        watch = CpuWatch(server.proc.pid, args.server_cpu, args.client_cpu)
        raw = load(server, case, seconds, f"r{tag}", args, pin, timeout)
        watch.finish(result, pin)
        result.raw = raw
        result.requests = raw["requests"]
        result.seconds = raw["duration_us"] / 1e6
        result.rps = result.requests / result.seconds if result.seconds else 0.0
        result.p50, result.p90 = raw["p50_us"] / 1000, raw["p90_us"] / 1000
        result.p99, result.max = raw["p99_us"] / 1000, raw["max_us"] / 1000
        result.non2xx = raw["status"]
        result.errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
        result.rss_mib = peak_rss_mib(server.proc.pid)
        log(
            f"{prefix} {result.rps:,.0f} req/s, p50 {result.p50:.2f} ms, p99 {result.p99:.2f} ms"
            + (f", {result.non2xx} non-2xx" if result.non2xx else "")
            + (f", {result.errors} socket errors/timeouts" if result.errors else "")
        )
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        result.failure = str(exc)
        log(f"{prefix} FAILED: {exc}")
    finally:
        if server is not None:
            stop_server(server)
            result.audit_lines = count_lines(server.audit_path)
    return result


def describe_hash(stored: str) -> str:
    if stored.startswith("$argon2"):
        parts = stored.split("$")
        return f"{parts[1]} {parts[3]}" if len(parts) > 3 else "argon2"
    if stored.startswith("$2"):
        return f"bcrypt cost {int(stored.split('$')[2])}"
    return "unknown hash"


def hash_costs(policies: Path, names: list[str]) -> dict[str, tuple[str, float]]:
    """Per user case: the hash's kind and the median CPU time of one check in this process."""
    import bcrypt
    import yaml

    from gateway.auth.identity import verify_password

    stored = None
    for path in sorted(policies.glob("*.y*ml")):
        data = yaml.safe_load(path.read_text())
        users = data.get("users") if isinstance(data, dict) else None
        if isinstance(users, dict) and isinstance(users.get(USER[0]), dict):
            stored = users[USER[0]].get("password")
    found: dict[str, tuple[str, float]] = {}

    def timed(hashed: str, runs: int) -> float:
        times = []
        for _ in range(runs):
            # CPU time (all threads: argon2 runs its lanes in threads), not wall time, so that
            # other processes on the machine do not count.
            started = time.process_time()
            if not verify_password(USER[1], hashed):
                raise RuntimeError(f"the bench password does not match {describe_hash(hashed)}")
            times.append(time.process_time() - started)
        return statistics.median(times)

    if "user-5-scopes-no-auth-cache" in names and isinstance(stored, str):
        found["user-5-scopes-no-auth-cache"] = (describe_hash(stored), timed(stored, 3))
    if "user-5-scopes-bcrypt4" in names:
        cheap = bcrypt.hashpw(USER[1].encode(), bcrypt.gensalt(4)).decode()
        found["user-5-scopes-bcrypt4"] = (describe_hash(cheap), timed(cheap, 101))
    return found


def versions() -> str:
    names = ("starlette", "uvicorn", "uvloop", "httptools", "PyJWT", "cryptography")
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def wrk_version(path: str) -> str:
    done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


NOISY = 0.05  # other processes' share of a benchmark core above which a run counts as disturbed


def disturbance(r: Result) -> float:
    """The largest share of a benchmark core that other processes (or steal) took."""
    return max(r.other_server_core or 0, r.other_client_core or 0, r.steal or 0)


def cpu_per_request(r: Result) -> float | None:
    """Server CPU seconds per completed request."""
    if r.server_cpu is None or not r.requests:
        return None
    return r.server_cpu * r.seconds / r.requests


def fmt_ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


# -- rounds ------------------------------------------------------------------------------------

Round = dict[str, Result]  # one round's runs by case name, in the order they ran


def runs_by_case(rounds: list[Round]) -> dict[str, list[Result]]:
    """Each case's runs, one per round that ran it, in round order."""
    found: dict[str, list[Result]] = {}
    for one in rounds:
        for name, r in one.items():
            found.setdefault(name, []).append(r)
    return found


def median_run(runs: list[Result]) -> Result:
    """What the tables show for a case: the run whose req/s is the median over the rounds (the
    lower middle one for an even count), with the median req/s itself and every round's attempts;
    the first failed run if none succeeded."""
    done = sorted((r for r in runs if not r.failure), key=lambda r: r.rps)
    if not done:
        return runs[0]
    middle = done[(len(done) - 1) // 2]
    return dataclasses.replace(
        middle,
        rps=statistics.median(r.rps for r in done),
        attempts=sum(r.attempts for r in runs),
    )


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def median_cpu(runs: list[Result]) -> float | None:
    """The median over the rounds of the server's CPU seconds per request."""
    return _median([None if r.failure else cpu_per_request(r) for r in runs])


@dataclass(frozen=True)
class Ratio:
    """A case against a reference run in the same round, round by round (None where one of the
    two failed or completed no request): req/s over req/s, and the reference's server CPU per
    request over the case's (so above 100% means the case is the cheaper in both)."""

    by_rps: list[float | None]
    by_cpu: list[float | None]

    @property
    def rps(self) -> float | None:
        return _median(self.by_rps)

    @property
    def cpu(self) -> float | None:
        return _median(self.by_cpu)


def ratio_of(rounds: list[Round], name: str, reference: str) -> Ratio:
    by_rps: list[float | None] = []
    by_cpu: list[float | None] = []
    for one in rounds:
        a, f = one.get(name), one.get(reference)
        if not (a and f and not a.failure and not f.failure and a.requests and f.requests):
            by_rps.append(None)
            by_cpu.append(None)
            continue
        by_rps.append(a.rps / f.rps if f.rps else None)
        mine, theirs = cpu_per_request(a), cpu_per_request(f)
        by_cpu.append(theirs / mine if mine and theirs else None)
    return Ratio(by_rps, by_cpu)


def by_round(values: list[float | None]) -> str:
    return " ".join("-" if v is None else f"{v:.1%}" for v in values)


FLOORS = ("floor-bare", "floor-sign")
# The ratio targets: (case, floor, least share of the floor's req/s).
RATIO_TARGETS = (
    ("robot-distinct", "floor-sign", DISTINCT_VS_SIGN),
    ("robot-repeat", "floor-bare", REPEAT_VS_BARE),
)


def all_ratios(rounds: list[Round]) -> dict[str, Ratio]:
    """Every case against both floors (and the signing floor against the bare one), by round."""
    names = list(runs_by_case(rounds))
    found: dict[str, Ratio] = {}
    for name in names:
        for floor in FLOORS:
            if floor in names and name not in (floor, "floor-bare"):
                found[f"{name}/{floor}"] = ratio_of(rounds, name, floor)
    return found


def report(
    rounds: list[Round],
    args: argparse.Namespace,
    pin: bool,
    hashes: dict[str, tuple[str, float]],
) -> list[str]:
    """Print the table, ratios and targets to stdout; the list of missed targets."""
    out: list[str] = []
    p = out.append
    runs = runs_by_case(rounds)
    results = [median_run(case_runs) for case_runs in runs.values()]
    several = len(rounds) > 1
    cpus = os.cpu_count() or 0
    p(f"Registry Gateway token benchmark, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    p(f"machine: {cpus} CPUs ({cpu_model()}), Python {platform.python_version()}; {versions()}")
    p(
        f"server:  one per case, uvicorn with httptools + {args.event_loop}, 1 worker, "
        "uvicorn's access log off (the gateway writes its own); "
        + (
            f"pinned to CPU {args.server_cpu} (taskset -c {args.server_cpu})"
            if pin
            else "NOT pinned"
        )
    )
    gen = (
        f"{wrk_version(args.wrk)}, {args.threads} thread(s), Lua request() per request"
        if args.generator == "wrk"
        else "httpx/asyncio fallback (wrk not found: figures are limited by the client)"
    )
    p(
        f"load:    {gen}, {args.connections} connections; "
        + (
            f"pinned to CPU {args.client_cpu} (taskset -c {args.client_cpu})"
            if pin
            else "NOT pinned"
        )
    )
    p(
        f"runs:    {args.warmup} s warm-up, then {args.seconds} s measured; audit to a temp file "
        f"unless the case says /dev/null; service={SERVICE}"
    )
    if several:
        p(
            f"rounds:  {len(rounds)}, each running every case once (listed order in odd rounds, "
            "reversed in even ones); ratios are taken within a round, then the median over rounds"
        )
    p("")
    header = (
        f"{'case':<40} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'non2xx':>6} {'err':>4} {'RSS MiB':>8}"
    )
    p(header)
    p("-" * len(header))
    for r in results:
        if r.failure:
            p(f"{r.case.title:<40} FAILED: {r.failure.splitlines()[0]}")
            continue
        rss = f"{r.rss_mib:.0f}" if r.rss_mib is not None else "-"
        p(
            f"{r.case.title:<40} {r.rps:>9,.0f} {fmt_ms(r.p50):>8} {fmt_ms(r.p90):>8} "
            f"{fmt_ms(r.p99):>8} {fmt_ms(r.max):>8} {r.non2xx:>6} {r.errors:>4} {rss:>8}"
        )
    if several:
        p(
            f"req/s: the median over the {len(rounds)} rounds; the other columns: the round whose "
            "req/s is the median (the lower middle one for an even count); the p99 targets below "
            "use the median of the rounds' p99"
        )
    for case_runs in runs.values():
        for r in case_runs:
            if r.failure and any(not other.failure for other in case_runs):
                p(f"{r.case.title:<40} FAILED in round {r.round}: {r.failure.splitlines()[0]}")
    p("")
    p(
        "CPU while measured (share of one core; 'other' = other processes on that core; "
        "server CPU per request = server CPU time / requests; runs = attempts, the least "
        "disturbed kept"
        + (
            "; the median round's figures as above, but srv us/req is the median over the "
            "rounds and runs counts every round's attempts):"
            if several
            else "):"
        )
    )
    header = (
        f"{'case':<40} {'server':>7} {'wrk':>6} {'other@srv':>9} {'other@wrk':>9} "
        f"{'steal':>6} {'srv us/req':>10} {'runs':>4}"
    )
    p(header)
    p("-" * len(header))

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    for r in results:
        if r.failure or not r.requests:
            continue
        us = median_cpu(runs[r.case.name])
        us_text = f"{us * 1e6:,.0f}" if us is not None else "-"
        p(
            f"{r.case.title:<40} {pct(r.server_cpu):>7} {pct(r.client_cpu):>6} "
            f"{pct(r.other_server_core):>9} {pct(r.other_client_core):>9} {pct(r.steal):>6} "
            f"{us_text:>10} {r.attempts:>4}"
        )
    noisy = [
        f"{r.case.name} (round {r.round})" if several else r.case.name
        for case_runs in runs.values()
        for r in case_runs
        if not r.failure and r.requests and disturbance(r) > NOISY
    ]
    if noisy:
        p(
            f"WARNING: other processes (or the hypervisor) took over 5% of a benchmark core during "
            f"{', '.join(noisy)}: their req/s are lower and their tails longer than on a quiet "
            "machine; 'srv us/req' is the steadier figure."
        )
    if several:
        p("")
        p("req/s by round, in brackets server CPU us/request (a drift shows in the floors too):")
        for case_runs in runs.values():
            cells = [
                "failed"
                if r.failure
                else f"{r.rps:>7,.0f} [{(cpu_per_request(r) or 0) * 1e6:>5,.0f}]"
                for r in case_runs
            ]
            p(f"  {case_runs[0].case.name:<28} {'   '.join(cells)}")
    p("")
    p("what each case sent (and the access granted to its check request):")
    for r in results:
        p(f"  {r.case.name:<28} {r.case.note}")
        p(
            f"  {'':<28} GET {r.case.path}"
            + (f"  [Basic {r.case.credentials[0]}]" if r.case.credentials else "")
        )
        if r.granted and r.granted != "-":
            p(f"  {'':<28} granted: {r.granted}")
        if r.audit_lines is not None:
            p(
                f"  {'':<28} audit lines written: {r.audit_lines:,} ({r.requests:,} measured requests)"
                + (f" in round {r.round}" if several else "")
            )

    ok = {r.case.name: r for r in results if not r.failure and r.requests}
    bare, sign = ok.get("floor-bare"), ok.get("floor-sign")
    p("")
    p(
        "ratios: req/s of the case / req/s of the floor; in brackets the same from server CPU "
        "per request (floor us / case us), which other load on the machine disturbs less"
        + (
            f"; each the median over the {len(rounds)} rounds of the case against the same "
            "round's floor:"
            if several
            else ":"
        )
    )

    def ratio_text(name: str, floor: str, label: str) -> str:
        ratio = ratio_of(rounds, name, floor)
        if ratio.rps is None:
            return f"{'-':>6} of {label}"
        text = f"{ratio.rps:6.1%} of {label}"
        if ratio.cpu is not None:
            text += f" [{ratio.cpu:6.1%}]"
        return text

    for r in results:
        if r.case.name not in ok or r.case.server == "floors":
            continue
        parts = []
        if bare:
            parts.append(ratio_text(r.case.name, "floor-bare", "bare"))
        if sign:
            parts.append(ratio_text(r.case.name, "floor-sign", "signing"))
        p(f"  {r.case.title:<40} {'   '.join(parts) or 'no floor measured'}")
    if bare and sign:
        p(f"  {'signing floor vs bare floor':<40} {ratio_text('floor-sign', 'floor-bare', 'bare')}")
    if several:
        for name, floor, _ in RATIO_TARGETS:
            if name not in ok or floor not in ok:
                continue
            ratio = ratio_of(rounds, name, floor)
            p(
                f"  {name} / {floor} by round: {by_round(ratio.by_rps)}, median {ratio.rps:.1%}"
                + (
                    f"; by server CPU per request: {by_round(ratio.by_cpu)}, median {ratio.cpu:.1%}"
                    if ratio.cpu is not None
                    else ""
                )
            )
    logs_seen = False
    for name, variant, what in (
        ("robot-distinct", "robot-distinct-audit-null", "audit file -> /dev/null"),
        ("robot-repeat", "robot-repeat-audit-null", "audit file -> /dev/null"),
        ("robot-distinct-audit-null", "robot-distinct-no-logs", "request log line off"),
        ("robot-repeat-audit-null", "robot-repeat-no-logs", "request log line off"),
        ("robot-distinct", "robot-distinct-no-logs", "both"),
        ("robot-repeat", "robot-repeat-no-logs", "both"),
    ):
        a, b = ok.get(name), ok.get(variant)
        gain = ratio_of(rounds, variant, name).rps
        if not (a and b) or gain is None:
            continue
        if not logs_seen:
            p("")
            p(
                "what the logs cost (the same case with less logging"
                + ("; the change is the median over rounds of each round's):" if several else "):")
            )
            logs_seen = True
        diff = gain - 1
        text = f"  {name:<25} {what:<23} {a.rps:>7,.0f} -> {b.rps:>7,.0f} req/s ({diff:+.1%}" + (
            ", large)" if abs(diff) > 0.10 else ", small)"
        )
        mine, theirs = median_cpu(runs[name]), median_cpu(runs[variant])
        if mine and theirs:
            text += f"; server CPU {mine * 1e6:,.0f} -> {theirs * 1e6:,.0f} us/request"
        p(text)

    users = [r for r in results if r.case.credentials == USER and not r.failure]
    if users:
        p("")
        p(
            "users with passwords (case 4): the hash, alone and under load"
            + (" (the median round)" if several else "")
        )
    for r in users:
        pad = " " * (len(r.case.name) + 2)
        cost = hashes.get(r.case.name)
        per_request = cpu_per_request(r)
        if cost is None:
            p(
                f"  {r.case.name}: the hash ran once (the check request); later requests were "
                "answered from the verified-credential cache"
            )
            p(
                f"  {pad}measured {r.rps:,.0f} req/s, p50 {fmt_ms(r.p50)} ms, "
                f"p99 {fmt_ms(r.p99)} ms"
                + (f", server CPU {per_request * 1e6:,.0f} us/request" if per_request else "")
            )
            continue
        kind, alone = cost
        p(f"  {r.case.name}: {kind}; one check alone: {alone * 1000:,.2f} ms of CPU")
        if r.requests:
            p(
                f"  {pad}measured {r.rps:,.1f} req/s (the hash alone allows "
                f"{1 / alone:,.1f}/s on one core), p50 {fmt_ms(r.p50)} ms, p99 {fmt_ms(r.p99)} ms"
            )
        else:
            p(
                f"  {pad}no request completed in {r.seconds:.0f} s "
                f"({args.connections} connections; the hash alone allows {1 / alone:,.1f}/s)"
            )
        if per_request is not None:
            p(
                f"  {pad}server CPU per request {per_request * 1e6:,.0f} us, one check "
                f"{alone * 1e6:,.0f} us: requests asking at the same time share one in-flight "
                f"check, so at most one request in {alone / per_request:,.1f} paid for a hash"
                if per_request < alone
                else f"  {pad}server CPU per request {per_request * 1e6:,.0f} us: one check "
                f"{alone * 1e6:,.0f} us + everything else {(per_request - alone) * 1e6:,.0f} us"
                " (if every request paid a check)"
            )
        if r.rss_mib is not None:
            p(f"  {pad}server peak RSS {r.rss_mib:,.0f} MiB")

    missed: list[str] = []
    p("")
    p("targets (issues 3 and 11):")

    def target(label: str, passed: bool | None, detail: str) -> None:
        verdict = "n/a " if passed is None else ("PASS" if passed else "MISS")
        if passed is False:
            missed.append(label)
        p(f"  {verdict}  {label}: {detail}")

    for (name, floor, least), (what, floor_name) in zip(
        RATIO_TARGETS,
        (
            ("distinct robot requests", "signing floor"),
            ("repeated identical requests", "bare floor"),
        ),
        strict=True,
    ):
        a, f = ok.get(name), ok.get(floor)
        ratio = ratio_of(rounds, name, floor)
        if not (a and f) or ratio.rps is None:
            target(f"{what} vs {floor_name}", None, "not measured")
            continue
        counted = sum(v is not None for v in ratio.by_rps)
        if not several:
            detail = f"{a.rps:,.0f} / {f.rps:,.0f} req/s = {ratio.rps:.1%}"
            mine, theirs = median_cpu(runs[name]), median_cpu(runs[floor])
            if ratio.cpu is not None and mine and theirs:
                detail += (
                    f" (by server CPU per request: {theirs * 1e6:,.0f} / {mine * 1e6:,.0f} us"
                    f" = {ratio.cpu:.1%})"
                )
        else:
            detail = f"median of the req/s ratios of {counted} round(s): {ratio.rps:.1%}" + (
                f" (by server CPU per request, median {ratio.cpu:.1%})"
                if ratio.cpu is not None
                else ""
            )
        target(f"{what} >= {least:.0%} of the {floor_name}", ratio.rps >= least, detail)
    for r in results:
        if r.failure:
            continue
        extra = ""
        if r.case.name == "user-5-scopes-no-auth-cache":
            extra = " (the policy's argon2id hash, auth cache off)"
        done = [run for run in runs[r.case.name] if not run.failure]
        answered = [run for run in done if run.requests]
        if not answered:
            target(
                f"p99 < {P99_LIMIT_MS:.0f} ms, {r.case.name}",
                False,
                f"no request completed in {r.seconds:.0f} s{extra}",
            )
            continue
        p99 = statistics.median(run.p99 for run in answered)
        non2xx = sum(run.non2xx for run in done)
        errors = sum(run.errors for run in done)
        silent = len(done) - len(answered)
        passed = p99 < P99_LIMIT_MS and non2xx == 0 and errors == 0 and not silent
        detail = (
            f"p99 {fmt_ms(p99)} ms"
            + (
                f" (median of {len(answered)} rounds: "
                + " ".join(fmt_ms(run.p99) for run in answered)
                + ")"
                if len(answered) > 1
                else ""
            )
            + (f", {non2xx} non-2xx" if non2xx else "")
            + (f", {errors} errors" if errors else "")
            + (f", no request completed in {silent} round(s)" if silent else "")
            + extra
        )
        if r.case.name in ISSUE_CASES:
            target(f"p99 < {P99_LIMIT_MS:.0f} ms, {r.case.name}", passed, detail)
        else:  # a variant with a setting off its default, to show what that setting costs
            verdict = "info" if passed else "info (over)"
            p(f"  {verdict}  p99 < {P99_LIMIT_MS:.0f} ms, {r.case.name} (a variant): {detail}")
    for case_runs in runs.values():
        for r in case_runs:
            if r.failure:
                missed.append(f"{r.case.name} failed" + (f" in round {r.round}" if several else ""))
    p(
        f"  note: with {args.connections} connections kept busy, the mean latency is connections / "
        f"throughput (Little's law), so a mean under {P99_LIMIT_MS:.0f} ms needs more than "
        f"{args.connections / (P99_LIMIT_MS / 1000):,.0f} req/s; and each run's p99 includes the "
        "first moments of its fresh connections (a longer --seconds dilutes those)"
    )
    p("")
    p(
        "summary: "
        + (
            "all targets met"
            if not missed
            else f"{len(missed)} target(s) missed: " + "; ".join(missed)
        )
    )
    print("\n".join(out), flush=True)
    return missed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Benchmark registry-gateway's GET /auth/token (requests/s, p50/p99 latency) against "
            "a bare Starlette floor and an ES256 signing floor, server and load generator pinned "
            "to separate cores, in interleaved rounds (ratios to a floor taken within a round, "
            "the median over rounds reported). Progress on stderr, results on stdout."
        ),
        epilog="cases: " + ", ".join(c.name for c in CASES),
    )
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (64)")
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per case (10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per case (2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="run the selected cases this many times, round by round: each round runs every "
        "case once, floors included, in the listed order in odd rounds and reversed in even "
        "ones, so a slow drift of the machine's speed weighs on cases and floors alike; each "
        "ratio to a floor is taken within a round and the median over rounds reported, and the "
        "tables show each case's median round (default 3: about 3 times as long as one round)",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1: it has one core)")
    parser.add_argument("--timeout", type=int, default=30, help="per-request timeout, seconds (30)")
    parser.add_argument("--server-cpu", type=int, default=0, help="core for servers (0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for the load generator (1)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop for every server, floors included (default asyncio, the gateway's "
        "default; see docs/deploy.md)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="run a case again (up to this many times) when other processes took over 5%% of a "
        "benchmark core during it, and keep the least disturbed run; within its round, so "
        "with --rounds each round keeps its own least disturbed run of each case (default 2)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each case, wait up to this long for other processes to leave the two "
        "cores idle (for shared machines; default 0: do not wait)",
    )
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="load generator: wrk (preferred), httpx fallback, or auto (wrk if installed)",
    )
    parser.add_argument(
        "--cases", default="all", help="comma-separated case names, or all (see --list)"
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument(
        "--policies",
        type=Path,
        default=REPO / "policies",
        help="policy directory for the gateway (default: the example policy)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, audit)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--httpx-worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def json_row(r: Result) -> dict[str, Any]:
    cost = cpu_per_request(r)
    return {
        "case": r.case.name,
        "title": r.case.title,
        "round": r.round,
        "rps": r.rps,
        "p50_ms": r.p50,
        "p90_ms": r.p90,
        "p99_ms": r.p99,
        "max_ms": r.max,
        "non2xx": r.non2xx,
        "errors": r.errors,
        "rss_mib": r.rss_mib,
        "server_cpu": r.server_cpu,
        "server_cpu_us_per_request": cost * 1e6 if cost is not None else None,
        "client_cpu": r.client_cpu,
        "other_server_core": r.other_server_core,
        "other_client_core": r.other_client_core,
        "steal": r.steal,
        "attempts": r.attempts,
        "failure": r.failure,
        "raw": r.raw,
    }


def json_document(rounds: list[Round], missed: list[str]) -> dict[str, Any]:
    """results: each case's median round, as the table shows it (rps the median, p99_ms_median
    the median of the rounds' p99); ratios: by round and their medians; runs: every round's
    results in the order they ran."""
    results = []
    for case_runs in runs_by_case(rounds).values():
        answered = [r for r in case_runs if not r.failure and r.requests]
        results.append(
            {
                **json_row(median_run(case_runs)),
                "rps_by_round": [None if r.failure else r.rps for r in case_runs],
                "p99_ms_median": statistics.median(r.p99 for r in answered) if answered else None,
                "server_cpu_us_per_request_median": (
                    cost * 1e6 if (cost := median_cpu(case_runs)) is not None else None
                ),
            }
        )
    ratios = {
        pair: {
            "rps": ratio.rps,
            "rps_by_round": ratio.by_rps,
            "cpu": ratio.cpu,
            "cpu_by_round": ratio.by_cpu,
        }
        for pair, ratio in all_ratios(rounds).items()
    }
    return {
        "rounds": len(rounds),
        "results": results,
        "ratios": ratios,
        "runs": [[json_row(r) for r in one.values()] for one in rounds],
        "missed": missed,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.httpx_worker:
        stats = asyncio.run(_httpx_load(json.loads(args.httpx_worker)))
        print("BENCH " + json.dumps(stats), flush=True)
        return 0
    if args.list:
        for c in CASES:
            print(f"{c.name:<28} {c.title}: {c.note}")
        return 0
    if args.rounds < 1:
        print("bench.token_endpoint: --rounds must be at least 1", file=sys.stderr)
        return 2
    if args.cases == "all":
        cases = list(CASES)
    else:
        names = [n.strip() for n in args.cases.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            print(f"bench.token_endpoint: unknown case(s) {unknown}; see --list", file=sys.stderr)
            return 2
        cases = [BY_NAME[n] for n in dict.fromkeys(names)]  # each once, in the order given

    args.wrk = wrk_path()
    if args.generator == "auto":
        args.generator = "wrk" if args.wrk else "httpx"
    if args.generator == "wrk" and not args.wrk:
        print("bench.token_endpoint: wrk not found (apt-get install -y wrk)", file=sys.stderr)
        return 2
    if args.generator == "httpx":
        log("wrk not used: falling back to an httpx/asyncio generator, which saturates first")

    pin = not args.no_pin
    if pin:
        cpus = os.sched_getaffinity(0)
        if shutil.which("taskset") is None or not {args.server_cpu, args.client_cpu} <= cpus:
            log(f"cannot pin to CPUs {args.server_cpu} and {args.client_cpu}; running unpinned")
            pin = False
        elif args.server_cpu == args.client_cpu:
            log("server and load generator share a core: figures will be lower")
        else:
            # This script's own checks and bookkeeping stay off the server's core.
            os.sched_setaffinity(0, {args.client_cpu})

    hashes: dict[str, tuple[str, float]] = {}
    if any(c.credentials == USER for c in cases):
        log("timing one password check of each user case's hash, alone")
        hashes = hash_costs(args.policies, [c.name for c in cases if c.credentials == USER])

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Stopped with SIGTERM: still stop the server and remove the temp dir.
    signal.signal(signal.SIGTERM, interrupted)
    args.tmp = tempfile.mkdtemp(prefix="gateway-bench-")
    rounds: list[Round] = []
    started = time.monotonic()
    try:
        for number in range(1, args.rounds + 1):
            # Odd rounds in the listed order, even ones reversed: a drift of the machine's speed
            # across a round favours the first cases in one round and the last in the next.
            order = cases if number % 2 else cases[::-1]
            this: Round = {}
            round_started = time.monotonic()
            for i, case in enumerate(order, 1):
                where = f"round {number}/{args.rounds}, " if args.rounds > 1 else ""
                prefix = f"[{where}{i}/{len(cases)}] {case.name}:"
                tag = f"{number}x{i}"
                result = run_case(case, args, pin, prefix, tag)
                for attempt in range(2, args.retries + 2):
                    if result.failure or disturbance(result) <= NOISY:
                        break
                    log(
                        f"{prefix} other load took {disturbance(result):.0%} of a core; again "
                        f"(attempt {attempt} of {args.retries + 1})"
                    )
                    wait_until_quiet(max(args.quiet_wait, 30), (args.server_cpu, args.client_cpu))
                    again = run_case(case, args, pin, prefix, tag)
                    again.attempts = result.attempts + 1
                    if again.failure is None and disturbance(again) < disturbance(result):
                        result = again
                    else:
                        result.attempts = again.attempts
                result.round = number
                this[case.name] = result
            rounds.append(this)
            if args.rounds > 1:
                log(
                    f"round {number} of {args.rounds} done in {time.monotonic() - round_started:.0f} s"
                )
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if args.keep:
            log(f"kept {args.tmp}")
        else:
            shutil.rmtree(args.tmp, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    missed = report(rounds, args, pin, hashes)
    if args.json:
        args.json.write_text(json.dumps(json_document(rounds, missed), indent=2) + "\n")
    if any(r.failure for one in rounds for r in one.values()):
        return 1
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
