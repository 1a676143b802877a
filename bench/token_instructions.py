"""CPU instructions per request of GET /auth/token against the signing floor, with callgrind.

bench/token_endpoint.py measures requests/s against its floors, but this VM's speed drifts by
tens of percent over a minute, so its ratios are noisy. This gives a steady companion figure:
the CPU instructions (valgrind's callgrind, event `Ir`) one request costs the server, for the
gateway answering distinct robot token requests (token_endpoint's `robot-distinct` case) and
for the signing floor (its `floor-sign` case, bench/floors.py), measured in the same run, and
their ratio against issue 11's target (distinct requests within 1/0.70 of the signing floor).

Both servers run at once, each under `valgrind --tool=callgrind --cache-sim=no` (one worker,
the same settings as token_endpoint's servers, each on a free 127.0.0.1 port with its own temp
--data-dir and --audit-log file). Once a server answers /healthz (under valgrind that takes
half a minute or so), one request is checked for the granted access, then 800 warm-up requests
go through 4 keep-alive connections (http.client, one thread each, every request a new
repository `platform/svc-...`, robot Basic credentials). Once the server is idle,
`callgrind_control -z` zeroes the counters; the measured requests go the same way; once it is
idle again, `callgrind_control -d` dumps the counters, and the dump's `summary:` instruction
count divided by the requests is the figure. About a minute.

    .venv/bin/python -m bench.token_instructions                  # 2000 measured requests each
    .venv/bin/python -m bench.token_instructions --requests 1200 --json
    .venv/bin/python -m bench.token_instructions --help

Run it from the repository root. It needs valgrind (Debian package `valgrind`, which brings
`callgrind_control`). Progress goes to stderr, the figures to stdout. Only 127.0.0.1 is ever
contacted.

An instruction count is not disturbed by other load on the machine, and is nearly the same run
after run; but it is not time: it does not see cache misses, system calls or the kernel's work
(sockets, the audit file's writes), and it counts whatever else the process does while measured
(the gateway's background timers: little next to the requests). The issue's own measure is the
requests/s of bench/token_endpoint.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.token_endpoint import (
    BY_NAME,
    DISTINCT_VS_SIGN,
    PLACEHOLDER,
    REPO,
    Case,
    Server,
    basic,
    check_once,
    free_port,
    log,
    log_tail,
    server_command,
    settle,
)

FLOOR = BY_NAME["floor-sign"]
GATEWAY = BY_NAME["robot-distinct"]
CONNECTIONS = 4
HEALTHY_WITHIN = 300.0  # seconds; under valgrind the gateway starts in 20-30 s on a 2-core VM
DUMP_WITHIN = 120.0  # seconds for callgrind's dump file to be complete
REQUEST_TIMEOUT = 120.0
TOOLS = ("valgrind", "callgrind_control")
PACKAGE = "valgrind"


@dataclass(frozen=True)
class Measurement:
    case: Case
    requests: int
    instructions: int  # the dump's `summary:` (or `totals:`) Ir, counted from the zeroing
    healthy_after: float  # seconds from start to the first 200 from /healthz

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """The servers started, each in its own process group, so all can be killed on any exit.
    Once closed (by a failure in either measurement, or on exit), no server is started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._closed = False

    def start(self, cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY_")}
        env["PYTHONUNBUFFERED"] = "1"
        with self._lock:
            if self._closed:
                raise RuntimeError("stopping: no new server")
            with log_path.open("wb") as out:
                proc = subprocess.Popen(
                    cmd,
                    cwd=REPO,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            self._procs.append(proc)
            return proc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            procs = list(self._procs)
        for proc in procs:
            kill(proc)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's group (the counters needed are dumped already), and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def callgrind(out_dir: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--cache-sim=no",
        f"--callgrind-out-file={out_dir}/out.%p",
    ]


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_healthy(server: Server) -> float:
    """Seconds until /healthz answers 200; raise if the server exits or takes too long."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < HEALTHY_WITHIN:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.kind} exited ({server.proc.returncode}):\n{log_tail(server.log_path)}"
            )
        if healthy(server.port):
            return elapsed
        time.sleep(1)
    raise RuntimeError(
        f"{server.kind} not healthy within {HEALTHY_WITHIN:.0f} s:\n{log_tail(server.log_path)}"
    )


# -- requests ----------------------------------------------------------------------------------


def one_connection(port: int, case: Case, count: int, tag: str) -> None:
    """`count` requests on one keep-alive connection, each for a repository of its own."""
    headers = {"Authorization": f"Basic {basic(case.credentials)}"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        for i in range(count):
            path = case.path.replace(PLACEHOLDER, f"{tag}x{i}")
            conn.request("GET", path, headers=headers)
            answer = conn.getresponse()
            body = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{case.name}: GET {path} got {answer.status}: {body[:300]!r}")
    finally:
        conn.close()


def send(port: int, case: Case, total: int, tag: str) -> None:
    """`total` distinct requests over CONNECTIONS connections, one thread each."""
    shares = [total // CONNECTIONS + (k < total % CONNECTIONS) for k in range(CONNECTIONS)]
    with concurrent.futures.ThreadPoolExecutor(CONNECTIONS) as pool:
        futures = [
            pool.submit(one_connection, port, case, share, f"{tag}{k}")
            for k, share in enumerate(shares)
        ]
        for future in futures:
            future.result()


# -- callgrind ---------------------------------------------------------------------------------


def control(option: str, pid: int) -> None:
    """`callgrind_control -z` or `-d`: it exits 0 even when it found no such run, so its answer
    is checked for `OK`."""
    cmd = ["callgrind_control", option, str(pid)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or "OK" not in done.stdout:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout}{done.stderr}"
        )


def dump_instructions(path: Path) -> int | None:
    """The Ir of a dump file's `summary:` line (else its `totals:`); None until the file is
    complete (`totals:` comes last). Not `totals:` first: after a `callgrind_control -z` it
    carries a constant extra (13.6 M instructions for the floor, 29.5 M for the gateway, with 600
    or 1200 measured requests alike), while `summary:` grows with the requests alone."""
    summary: int | None = None
    totals: int | None = None
    with path.open(errors="replace") as lines:
        for line in lines:
            if line.startswith("summary:"):
                summary = int(line.split()[1])
            elif line.startswith("totals:"):
                totals = int(line.split()[1])
    if totals is None:
        return None
    return totals if summary is None else summary


def read_dump(server: Server, out_dir: Path) -> tuple[Path, int]:
    """The dump `callgrind_control -d` asked for (out.PID.N), once it is complete."""
    deadline = time.monotonic() + DUMP_WITHIN
    while time.monotonic() < deadline:
        dumps = sorted(out_dir.glob(f"out.{server.proc.pid}.*"), key=lambda p: p.stat().st_mtime)
        if dumps and (instructions := dump_instructions(dumps[-1])) is not None:
            return dumps[-1], instructions
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.kind} exited before its dump was complete")
        time.sleep(0.5)
    raise RuntimeError(f"no complete callgrind dump in {out_dir} within {DUMP_WITHIN:.0f} s")


# -- one server --------------------------------------------------------------------------------


def measure(case: Case, args: argparse.Namespace, tmp: Path, processes: Processes) -> Measurement:
    """Start the case's server under callgrind, warm it up, count the measured requests."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{case.name}-", dir=tmp))
    port = free_port()
    command, _ = server_command(
        case.server, run_dir, port, policies=REPO / "policies", event_loop="asyncio"
    )
    cmd = [*callgrind(run_dir), *command]
    log(f"{case.name}: starting under callgrind on port {port}")
    log_path = run_dir / "server.log"
    server = Server(case.server, port, processes.start(cmd, log_path), log_path, None)
    try:
        healthy_after = wait_healthy(server)
        log(f"{case.name}: healthy after {healthy_after:.0f} s")
        check_once(server, case)
        log(f"{case.name}: warming up, {args.warmup} requests")
        send(port, case, args.warmup, "w")
        settle(server.proc.pid)  # zeroed and dumped idle: nothing half done is counted
        control("-z", server.proc.pid)
        log(f"{case.name}: measuring, {args.requests} requests")
        send(port, case, args.requests, "m")
        settle(server.proc.pid)
        control("-d", server.proc.pid)
        dump, instructions = read_dump(server, run_dir)
    finally:
        kill(server.proc)
    log(f"{case.name}: dumped {dump.name}, {instructions:,} instructions")
    return Measurement(case, args.requests, instructions, healthy_after)


def measure_both(
    args: argparse.Namespace, tmp: Path, processes: Processes
) -> tuple[Measurement, Measurement]:
    """The floor and the gateway at once, one thread each (the machine has two cores); when
    either fails, both servers are killed at once."""
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        floor = pool.submit(measure, FLOOR, args, tmp, processes)
        gateway = pool.submit(measure, GATEWAY, args, tmp, processes)
        done, _ = concurrent.futures.wait(
            (floor, gateway), return_when=concurrent.futures.FIRST_EXCEPTION
        )
        for future in done:  # the first failure, without waiting for the other run to end
            if (error := future.exception()) is not None:
                raise error
        return floor.result(), gateway.result()
    except BaseException:
        processes.close()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- report ------------------------------------------------------------------------------------


def valgrind_version() -> str:
    done = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def verdict(ratio: float) -> str:
    return "PASS" if ratio >= DISTINCT_VS_SIGN else "MISS"


def report(floor: Measurement, gateway: Measurement, args: argparse.Namespace) -> str:
    ratio = floor.per_request / gateway.per_request
    rows = [
        f"  {m.case.name:<16} {m.case.title:<40} {m.per_request:>12,.0f}"
        f"   ({m.instructions:,} over {m.requests:,})"
        for m in (floor, gateway)
    ]
    return "\n".join(
        [
            f"CPU instructions per request (callgrind Ir, {valgrind_version()}): "
            f"{args.requests:,} distinct requests each after {args.warmup:,} warm-up, "
            f"{CONNECTIONS} connections",
            *rows,
            f"  ratio floor/gateway: {ratio:.3f}",
            f"{verdict(ratio)}  instructions: {GATEWAY.name} within 1/{DISTINCT_VS_SIGN:.2f} of "
            f"{FLOOR.name} (ratio {ratio:.3f}, target >= {DISTINCT_VS_SIGN:.2f})",
            "note: instructions, not time (no cache misses, system calls or kernel work); the "
            "issue's own measure is the requests/s of bench.token_endpoint",
        ]
    )


def as_json(m: Measurement) -> dict[str, Any]:
    return {
        "case": m.case.name,
        "title": m.case.title,
        "requests": m.requests,
        "instructions": m.instructions,
        "instructions_per_request": m.per_request,
        "healthy_after_s": round(m.healthy_after, 1),
    }


def json_document(floor: Measurement, gateway: Measurement, args: argparse.Namespace) -> str:
    ratio = floor.per_request / gateway.per_request
    return json.dumps(
        {
            "measure": "CPU instructions per request (callgrind Ir), not time",
            "valgrind": valgrind_version(),
            "requests": args.requests,
            "warmup": args.warmup,
            "connections": CONNECTIONS,
            "floor": as_json(floor),
            "gateway": as_json(gateway),
            "ratio_floor_gateway": ratio,
            "target": DISTINCT_VS_SIGN,
            "verdict": verdict(ratio),
        }
    )


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Count the CPU instructions (valgrind's callgrind, Ir) one GET /auth/token costs the "
            f"gateway ({GATEWAY.name}: robot credentials, every request a new repository) and "
            f"one signing request costs the floor ({FLOOR.name}, bench/floors.py), both servers "
            "under callgrind at once, and their ratio floor/gateway against the target "
            f">= {DISTINCT_VS_SIGN:.2f}. An instruction count is deterministic: other load on "
            "the machine does not change it, unlike the requests/s of bench.token_endpoint "
            "(the issue's own measure). It does not see cache misses, system calls or the "
            "kernel's work. Needs valgrind; about a minute. Progress on stderr, figures on "
            "stdout; exit status 0 whether PASS or MISS."
        ),
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="measured requests per server (2000)"
    )
    parser.add_argument(
        "--warmup", type=int, default=800, help="warm-up requests per server, not counted (800)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, dumps)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0:
        parser.error("--requests must be at least 1 and --warmup at least 0")
    return args


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if missing := missing_tools():
        print(
            f"bench.token_instructions: {' and '.join(missing)} not found: "
            f"install the Debian package {PACKAGE} (apt-get install -y {PACKAGE})",
            file=sys.stderr,
        )
        return 2
    # Stopped with SIGTERM: still kill the servers and remove the temp dir.
    signal.signal(signal.SIGTERM, interrupted)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-instructions-"))
    processes = Processes()
    started = time.monotonic()
    try:
        floor, gateway = measure_both(args, tmp, processes)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (RuntimeError, OSError, http.client.HTTPException) as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        processes.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    print(json_document(floor, gateway, args) if args.json else report(floor, gateway, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
