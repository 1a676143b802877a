"""`make run` as a newcomer runs it: scripts/run.py starts the gateway and Debian's registry wired
to it, with notifications, on the ports asked for. A push shows in the UI's JSON catalog at once
(the catalog's own re-read is 5 minutes away), the notification secret stays in a 0600 file and
out of the output, and Ctrl-C stops both cleanly."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.binaries import require
from tests.support.catalog import basic, wait_until
from tests.support.clients import Skopeo, ok
from tests.support.gateway import REPO, creds
from tests.support.registry import free_port

RUN = REPO / "scripts" / "run.py"


@dataclass
class Run:
    """scripts/run.py as a process, its output (stdout and stderr) collected line by line."""

    process: subprocess.Popen[bytes]
    data: Path
    gateway_port: int
    registry_port: int
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def collect(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout as output:
            for line in output:
                self.lines.append(line.decode(errors="replace").rstrip("\n"))


def start_run(tmp_path: Path, *args: str) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY_")}
    gateway_port, registry_port = free_port(), free_port()
    data = tmp_path / "data"
    argv = [sys.executable, str(RUN), "--data-dir", str(data),
            "--gateway-port", str(gateway_port), "--registry-port", str(registry_port), *args]  # fmt: skip
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    run = Run(process, data, gateway_port, registry_port)
    run.reader = threading.Thread(target=run.collect, daemon=True)
    run.reader.start()
    return run


def stopped(run: Run, timeout: float = 30) -> int:
    """Wait for the script's exit and its last line."""
    code = run.process.wait(timeout)
    assert run.reader is not None
    run.reader.join(5)
    return code


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Run]:
    require("docker-registry", "docker-registry")
    run = start_run(tmp_path)
    try:
        wait_until(
            lambda: "Registry Gateway is running" in run.output or run.process.poll() is not None,
            timeout=90,
            what="make run's banner",
        )
        assert run.process.poll() is None, run.output
        yield run
    finally:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)
            try:
                stopped(run)
            except subprocess.TimeoutExpired:
                run.process.kill()
                stopped(run)


def repositories(run: Run, user: str) -> set[str]:
    """Every repository the UI's JSON pages list for `user`, namespace by namespace."""

    def get(path: str) -> Any:
        answer = httpx.get(f"{run.gateway}{path}", params={"format": "json"}, auth=basic(user))
        assert answer.status_code == 200, (path, answer.text)
        return answer.json()

    found: set[str] = set()
    for namespace in get("/")["namespaces"]:
        found |= {r["name"] for r in get(f"/n/{namespace['slug']}")["repositories"]}
    return found


def catalog_status(run: Run) -> dict[str, Any]:
    answer = httpx.get(f"{run.gateway}/-/status?format=json", auth=basic("alice"))
    status: dict[str, Any] = answer.json()["catalog"]
    return status


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_push_shows_in_the_ui_at_once_and_ctrl_c_stops_both(running: Run, tmp_path: Path) -> None:
    run = running
    # The ports asked for, in the banner.
    assert f"gateway     {run.gateway}" in run.output
    assert f"registry    http://127.0.0.1:{run.registry_port}" in run.output
    assert f"registry -> {run.gateway}/-/notifications" in run.output

    # The registry notifies this gateway with the secret of a private file, never printed.
    secret_file = run.data / "notification-secret"
    secret = secret_file.read_text().strip()
    assert len(secret) == 64
    config_file = run.data / "registry" / "config.yml"
    for private in (secret_file, config_file):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    (endpoint,) = yaml.safe_load(config_file.read_text())["notifications"]["endpoints"]
    assert endpoint["url"] == f"{run.gateway}/-/notifications"
    assert endpoint["headers"]["Authorization"] == [f"Bearer {secret}"]
    assert secret not in run.output

    # The catalog was read once at start; the next re-read is minutes away.
    status = wait_until(lambda: (s := catalog_status(run))["built"] and s, what="first read")
    assert status["refresh_interval"] >= 60
    assert "bob/hello" not in repositories(run, "bob")

    skopeo = Skopeo(tmp_path / "skopeo")
    layout = run.data / "hello-oci"
    ok(skopeo.copy(f"oci:{layout}:1", f"docker://127.0.0.1:{run.registry_port}/bob/hello:1",
                   creds=creds("bob")))  # fmt: skip
    pushed = time.monotonic()
    wait_until(lambda: "bob/hello" in repositories(run, "bob"), timeout=15, what="bob/hello")
    assert time.monotonic() - pushed < 15
    # A notification did it, not a re-read of the whole registry.
    assert catalog_status(run)["last_refresh"] == status["last_refresh"]

    run.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert stopped(run) == 0, run.output
    assert run.lines[-1] == "run: stopped."
    assert port_free(run.gateway_port) and port_free(run.registry_port)
    assert "Traceback" not in run.output


@pytest.mark.parametrize(
    ("taken", "variable", "flag"),
    [
        ("registry", "REGISTRY_PORT", "--registry-port"),
        ("gateway", "GATEWAY_PORT", "--gateway-port"),
    ],
)
def test_a_port_in_use_is_one_clear_line(
    tmp_path: Path, taken: str, variable: str, flag: str
) -> None:
    require("docker-registry", "docker-registry")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = start_run(tmp_path, flag, str(port))
        assert stopped(run, 60) == 1
    (line,) = [line for line in run.lines if line.strip()]
    assert line.startswith(f"run: 127.0.0.1:{port} (the {taken} port) is already in use")
    assert f"`make run {variable}={port + 2}`" in line
    assert f"scripts/run.py {flag} {port + 2}" in line
    assert not run.data.exists()  # nothing was prepared


def test_make_run_passes_the_ports_on() -> None:
    make = require("make", "make")
    proc = subprocess.run(
        [make, "-n", "run", "GATEWAY_PORT=6101", "REGISTRY_PORT=6100"],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    assert "bash scripts/system-packages.sh run" in lines
    assert ".venv/bin/python scripts/run.py --gateway-port 6101 --registry-port 6100" in lines
    assert lines.index("bash scripts/system-packages.sh run") < len(lines) - 1
    # Only the package is installed for running, never the dev extras.
    assert not [line for line in lines if "[dev]" in line]
