"""`make run`: the gateway serving policies/ and, where installed, a registry that trusts it.

The gateway listens on 127.0.0.1:5001 with its state under .data/ (signing keys are created on
first start). Where Debian's `docker-registry` is installed, a Distribution registry listens on
127.0.0.1:5000 with `auth.token` taken from `registry-gateway registry-config` and the
certificate bundle from `registry-gateway keys bundle`, so that the two cannot disagree.

Ctrl-C or SIGTERM stops both (a graceful stop signal, a wait, then SIGKILL). If either process dies, the other
is stopped and this script exits with status 1 after showing the dead one's last log lines.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
DATA = ROOT / ".data"
AUDIT_LOG = DATA / "audit.log"
DEMO_IMAGE = DATA / "hello-oci"
REGISTRY_DIR = DATA / "registry"
REGISTRY_CONFIG = REGISTRY_DIR / "config.yml"
REGISTRY_LOG = REGISTRY_DIR / "registry.log"
BUNDLE = REGISTRY_DIR / "bundle.pem"

HOST = "127.0.0.1"
GATEWAY_PORT = 5001
REGISTRY_PORT = 5000
GATEWAY_URL = f"http://{HOST}:{GATEWAY_PORT}"
REGISTRY_ADDR = f"{HOST}:{REGISTRY_PORT}"
REGISTRY_URL = f"http://{REGISTRY_ADDR}"
SERVICE = "registry.local"  # the registry's auth.token.service and the tokens' audience
ISSUER = "registry-gateway"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
TAIL_LINES = 30
GATEWAY = [sys.executable, "-m", "gateway"]  # the venv's registry-gateway, whatever PATH says


class StartError(RuntimeError):
    """Something this script prepares before starting the processes failed."""


def say(message: str = "") -> None:
    print(message, file=sys.stderr, flush=True)


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside, for shorter messages."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(ROOT))
    return str(path)


# -- preparing ---------------------------------------------------------------------------


def check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections of a previous run in TIME_WAIT must not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise StartError(
                f"{HOST}:{port} (for the {what}) is already in use: is another `make run` "
                f"running? `ss -ltnp 'sport = :{port}'` shows who listens there"
            ) from None


def gateway_command(*args: str) -> str:
    """Run a registry-gateway command to completion; its standard output, or StartError."""
    proc = subprocess.run([*GATEWAY, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StartError(
            f"registry-gateway {args[0]} failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
        )
    return proc.stdout


def write_registry_config() -> None:
    """The bundle and config.yml for the registry, both from the gateway's own commands."""
    REGISTRY_DIR.mkdir(exist_ok=True)
    # Creates the first signing key when there is none yet, as the gateway would.
    gateway_command(
        "keys", "bundle", "-o", str(BUNDLE), "--data-dir", str(DATA), "--issuer", ISSUER
    )
    printed = gateway_command(
        "registry-config",
        "--service", SERVICE,
        "--issuer", ISSUER,
        "--public-url", GATEWAY_URL,
        "--rootcertbundle", str(BUNDLE),
    )  # fmt: skip
    auth = yaml.safe_load(printed)["auth"]
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(REGISTRY_DIR / "storage")},
            "delete": {"enabled": True},
        },
        # A fresh secret per start only breaks uploads interrupted across a restart.
        "http": {"addr": REGISTRY_ADDR, "secret": secrets.token_hex(16)},
        "health": {"storagedriver": {"enabled": False}},
        "auth": auth,
    }
    header = (
        "# Written by scripts/run.py (make run) on every start: edits here are overwritten.\n"
        "# The auth section is `registry-gateway registry-config` for the gateway it starts.\n"
    )
    REGISTRY_CONFIG.write_text(header + yaml.safe_dump(config, sort_keys=False))


def build_demo_image() -> bool:
    """A tiny OCI layout (tag 1) to push with skopeo, made by the test suite's image builder."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from support.images import build_image
    except ImportError:
        return False
    finally:
        sys.path.pop(0)
    build_image(DEMO_IMAGE, "1", labels={"org.opencontainers.image.title": "hello"})
    return True


# -- the processes -----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In a child before exec: have Linux send it SIGTERM if this script dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 is PR_SET_PDEATHSIG


class Child:
    """A child in its own session: the terminal's Ctrl-C reaches this script, which stops it."""

    stop_signal = signal.SIGTERM
    ready = False  # answered its health check

    def __init__(self, name: str, argv: list[str], output: IO[bytes] | int) -> None:
        self.name = name
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # no threads exist yet: both children start first
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, forced: threading.Event) -> None:
        """`stop_signal`, wait up to STOP_TIMEOUT (less after a second Ctrl-C), then SIGKILL."""
        if not self.running():
            return
        self.process.send_signal(self.stop_signal if self.ready else signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.running() and time.monotonic() < deadline and not forced.is_set():
            time.sleep(0.05)
        if self.running():
            say(f"run: {self.name} did not stop in time; killing it")
            self.process.kill()
        self.process.wait()

    def last_lines(self) -> str:
        raise NotImplementedError


class Gateway(Child):
    """The gateway, its log copied to the terminal line by line and its last lines kept."""

    # Once serving, SIGINT as Ctrl-C would: a graceful stop without the load-balancer drain that
    # SIGTERM starts. While still importing, SIGTERM: SIGINT would print a KeyboardInterrupt.
    stop_signal = signal.SIGINT

    def __init__(self, argv: list[str]) -> None:
        super().__init__("gateway", argv, subprocess.PIPE)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.reader = threading.Thread(target=self._copy, name="gateway-log", daemon=True)

    def _copy(self) -> None:
        assert self.process.stdout is not None
        out = sys.stderr.buffer
        for line in self.process.stdout:
            out.write(line)
            out.flush()
            self.tail.append(line.decode(errors="replace").rstrip("\n"))

    def last_lines(self) -> str:
        self.reader.join(timeout=2)
        return "\n".join(self.tail)


class Registry(Child):
    """docker-registry, logging to .data/registry/registry.log."""

    def __init__(self, binary: str) -> None:
        self.log = REGISTRY_LOG.open("ab")
        self.offset = self.log.tell()  # this run's lines start here
        super().__init__("registry", [binary, "serve", str(REGISTRY_CONFIG)], self.log)

    def last_lines(self) -> str:
        with REGISTRY_LOG.open("rb") as log:
            log.seek(self.offset)
            lines = log.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-TAIL_LINES:])


def http_status(url: str) -> tuple[int, Any]:
    """The status and JSON body (or None) of a GET; (0, None) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - fixed http URL
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except OSError:
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


# -- running -----------------------------------------------------------------------------


class Supervisor:
    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stopping = threading.Event()  # a signal asked us to stop
        self.forced = threading.Event()  # a second signal: do not wait for a clean stop
        self.signal_name = ""

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping.is_set():
            self.forced.set()
            return
        self.signal_name = signal.Signals(signum).name
        self.stopping.set()

    def dead(self) -> Child | None:
        return next((child for child in self.children if not child.running()), None)

    def wait_until(self, child: Child, ready: Callable[[], bool], what: str) -> bool:
        """Poll `ready()` until true; False when stopped, a child died or the time ran out."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self.stopping.is_set() and self.dead() is None:
            if ready():
                return True
            if time.monotonic() > deadline:
                say(f"run: the {child.name} did not answer {what} within {START_TIMEOUT:.0f}s")
                say(child.last_lines())
                return False
            time.sleep(0.1)
        return False

    def stop_all(self) -> None:
        # The registry first: it is the one clients talk to, and it needs the gateway.
        for child in reversed(self.children):
            child.stop(self.forced)

    def announce_death(self, child: Child) -> None:
        code = child.process.returncode
        how = f"exited with status {code}"
        if code < 0:
            with contextlib.suppress(ValueError):
                how = f"was killed by {signal.Signals(-code).name}"
        others = [c.name for c in self.children if c is not child and c.running()]
        then = f"; stopping the {' and the '.join(others)}" if others else ""
        say(f"\nrun: the {child.name} {how}{then}.")


def banner(registry: bool, revision: str | None, demo_image: bool, ui_status: int) -> str:
    """What runs where, and what to try."""
    bob = "bob:bob-example-password"
    token = f"{GATEWAY_URL}/auth/token?service={SERVICE}"
    ui_note = "   (not built yet: it answers 404 for now)" if ui_status == 404 else ""
    lines = [
        "",
        "Registry Gateway is running; Ctrl-C stops " + ("both." if registry else "it."),
        f"  gateway     {GATEWAY_URL}   policy {shown(POLICIES)}/ (revision {revision}), "
        f'service "{SERVICE}", issuer "{ISSUER}", keys in {shown(DATA)}/keys/',
    ]
    if registry:
        lines.append(
            f"  registry    {REGISTRY_URL}   config {shown(REGISTRY_CONFIG)}, "
            f"storage {shown(REGISTRY_DIR / 'storage')}/"
        )
        lines.append(f"  registry log {shown(REGISTRY_LOG)}")
    else:
        lines.append(
            "  registry    not started: docker-registry is not installed "
            "(apt-get install docker-registry)"
        )
    lines += [
        "  gateway log this terminal",
        f"  audit log   {shown(AUDIT_LOG)}, one JSON line per token request "
        f"(tail -f {shown(AUDIT_LOG)})",
        f"  web UI      {GATEWAY_URL}/{ui_note}",
        "",
        "Example credentials from policies/ (EXAMPLE ONLY: never use them for anything real):",
        "  users   alice (admin), bob, carol, dave   password <name>-example-password",
        "  robots  ci-deploy, release                secret   <name>-example-robot-secret",
        "",
        "Try:",
        f"  curl -s -u {bob} '{token}&scope=repository:bob/hello:pull,push'",
    ]
    if registry:
        source = f"oci:{shown(DEMO_IMAGE)}:1" if demo_image else "oci:LAYOUT:TAG"
        lines += [
            f"  skopeo copy --dest-tls-verify=false --dest-creds {bob} \\",
            f"      {source} docker://{REGISTRY_ADDR}/bob/hello:1",
            f"  docker login {REGISTRY_ADDR} -u bob   "
            "(password bob-example-password; needs no Docker engine)",
            f"  docker manifest inspect --insecure {REGISTRY_ADDR}/bob/hello:1",
        ]
    lines += [
        "  .venv/bin/registry-gateway explain user:carol repository:platform/api:pull,push",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    supervisor = Supervisor()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, supervisor.on_signal)

    binary = shutil.which("docker-registry")
    try:
        check_port_free(GATEWAY_PORT, "gateway")
        DATA.mkdir(mode=0o700, exist_ok=True)  # the gateway's keys live here
        if binary:
            check_port_free(REGISTRY_PORT, "registry")
            write_registry_config()
        else:
            say("run: docker-registry is not installed (apt-get install docker-registry);")
            say("run: serving the gateway alone.")
        demo_image = binary is not None and build_demo_image()
    except (StartError, OSError) as exc:
        say(f"run: {exc}")
        return 1

    gateway_argv = [
        *GATEWAY, "serve",
        "--policies", str(POLICIES),
        "--data-dir", str(DATA),
        "--listen", f"{HOST}:{GATEWAY_PORT}",
        "--service", SERVICE,
        "--issuer", ISSUER,
        "--public-url", GATEWAY_URL,
        "--audit-log", str(AUDIT_LOG),
        "--log-format", "text",
    ]  # fmt: skip
    if binary:
        gateway_argv += ["--registry-url", REGISTRY_URL, "--registry-public", REGISTRY_ADDR]

    # Both children start before the log-copying thread: preexec_fn is unsafe once threads run.
    gateway = Gateway(gateway_argv)
    supervisor.children.append(gateway)
    if binary:
        supervisor.children.append(Registry(binary))
    gateway.reader.start()

    health: dict[str, Any] = {}

    def gateway_ready() -> bool:
        status, body = http_status(f"{GATEWAY_URL}/healthz")
        if status == 200 and isinstance(body, dict):
            health.update(body)
            return True
        return False

    def registry_ready() -> bool:
        return http_status(f"{REGISTRY_URL}/v2/")[0] == 401  # token auth is on

    ready = gateway.ready = supervisor.wait_until(gateway, gateway_ready, f"{GATEWAY_URL}/healthz")
    if ready and binary:
        registry = supervisor.children[1]
        ready = supervisor.wait_until(registry, registry_ready, f"{REGISTRY_URL}/v2/ with 401")
        registry.ready = ready
    if ready:
        ui_status = http_status(f"{GATEWAY_URL}/")[0]
        say(banner(binary is not None, health.get("revision"), demo_image, ui_status))
        while not supervisor.stopping.is_set() and supervisor.dead() is None:
            time.sleep(0.2)

    dead = supervisor.dead()
    if supervisor.stopping.is_set() and dead is None:
        say(
            f"\nrun: {supervisor.signal_name}: stopping "
            + ", ".join(child.name for child in reversed(supervisor.children))
        )
        supervisor.stop_all()
        say("run: stopped.")
        return 0
    if dead is not None:
        supervisor.announce_death(dead)
    supervisor.stop_all()
    if dead is not None:
        say(f"run: the last lines the {dead.name} logged:\n{dead.last_lines() or '(none)'}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
