"""`make run`: the gateway serving policies/ and, where installed, a registry that trusts it.

The gateway listens on 127.0.0.1:5001 with its state under .data/ (signing keys are created on
first start). Where Debian's `docker-registry` is installed, a Distribution registry listens on
127.0.0.1:5000 with `auth.token` taken from `registry-gateway registry-config` and the
certificate bundle from `registry-gateway keys bundle`, so that the two cannot disagree. The
registry sends its notifications to the gateway (authenticated by a secret generated once into
.data/notification-secret, mode 0600), so a push shows in the UI on the next page load.

    scripts/run.py [--gateway-port N] [--registry-port N] [--data-dir DIR]
    make run GATEWAY_PORT=N REGISTRY_PORT=N

Ctrl-C or SIGTERM stops both (a graceful stop signal, a wait, then SIGKILL). If either process dies, the other
is stopped and this script exits with status 1 after showing the dead one's last log lines.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import os
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
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"

HOST = "127.0.0.1"
GATEWAY_PORT = 5001
REGISTRY_PORT = 5000
SERVICE = "registry.local"  # the registry's auth.token.service and the tokens' audience
ISSUER = "registry-gateway"
NOTIFICATION_PLACEHOLDER = "<notification_secret>"  # what registry-config prints in its place

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
TAIL_LINES = 30
GATEWAY = [sys.executable, "-m", "gateway"]  # the venv's registry-gateway, whatever PATH says


class StartError(RuntimeError):
    """Something this script prepares before starting the processes failed."""


@dataclass(frozen=True)
class Layout:
    """Where everything of one `make run` lives, and the ports it listens on."""

    data: Path
    gateway_port: int
    registry_port: int

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"

    @property
    def registry_addr(self) -> str:
        return f"{HOST}:{self.registry_port}"

    @property
    def registry_url(self) -> str:
        return f"http://{self.registry_addr}"

    @property
    def audit_log(self) -> Path:
        return self.data / "audit.log"

    @property
    def demo_image(self) -> Path:
        return self.data / "hello-oci"

    @property
    def notification_secret(self) -> Path:
        return self.data / "notification-secret"

    @property
    def registry_dir(self) -> Path:
        return self.data / "registry"

    @property
    def registry_config(self) -> Path:
        return self.registry_dir / "config.yml"

    @property
    def registry_log(self) -> Path:
        return self.registry_dir / "registry.log"

    @property
    def bundle(self) -> Path:
        return self.registry_dir / "bundle.pem"


def say(message: str = "") -> None:
    print(message, file=sys.stderr, flush=True)


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside, for shorter messages."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(ROOT))
    return str(path)


# -- preparing ---------------------------------------------------------------------------


def check_port_free(port: int, what: str, variable: str, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections of a previous run in TIME_WAIT must not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            other = port + 2
            raise StartError(
                f"{HOST}:{port} (the {what} port) is already in use: choose another with "
                f"`make run {variable}={other}` (or scripts/run.py {flag} {other}); "
                f"`ss -ltnp 'sport = :{port}'` shows who listens there"
            ) from None


def gateway_command(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a registry-gateway command to completion; its standard output, or StartError."""
    proc = subprocess.run(
        [*GATEWAY, *args], cwd=ROOT, capture_output=True, text=True, check=False, env=env
    )
    if proc.returncode != 0:
        raise StartError(
            f"registry-gateway {args[0]} failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
        )
    return proc.stdout


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (mode 0600) from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # an older file may have had another mode
        out.write(text)


def notification_secret(layout: Layout) -> str:
    """The secret the registry sends with its notifications: made once, kept in a 0600 file."""
    path = layout.notification_secret
    with contextlib.suppress(FileNotFoundError):
        secret = path.read_text().strip()
        if len(secret) >= 32:
            path.chmod(0o600)
            return secret
    secret = secrets.token_hex(32)
    write_private(path, secret + "\n")
    return secret


def write_registry_config(layout: Layout, secret: str) -> None:
    """The bundle and config.yml for the registry, both from the gateway's own commands."""
    layout.registry_dir.mkdir(mode=0o700, exist_ok=True)
    # Creates the first signing key when there is none yet, as the gateway would.
    gateway_command(
        "keys", "bundle", "-o", str(layout.bundle), "--data-dir", str(layout.data),
        "--issuer", ISSUER,
    )  # fmt: skip
    # With a notification secret set, registry-config prints the notifications endpoint too
    # (the secret itself as a placeholder: it never passes through a command line or output).
    env = {**os.environ, "REGISTRY_GATEWAY_NOTIFICATION_SECRET": "placeholder"}
    printed = gateway_command(
        "registry-config",
        "--service", SERVICE,
        "--issuer", ISSUER,
        "--public-url", layout.gateway_url,
        "--rootcertbundle", str(layout.bundle),
        "--data-dir", str(layout.data),  # signingalgorithms: those of the keys made above
        env=env,
    )  # fmt: skip
    generated = yaml.safe_load(printed)
    notifications = generated["notifications"]
    for endpoint in notifications["endpoints"]:
        endpoint["headers"]["Authorization"] = [
            value.replace(NOTIFICATION_PLACEHOLDER, secret)
            for value in endpoint["headers"]["Authorization"]
        ]
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(layout.registry_dir / "storage")},
            "delete": {"enabled": True},
        },
        # A fresh secret per start only breaks uploads interrupted across a restart.
        "http": {"addr": layout.registry_addr, "secret": secrets.token_hex(16)},
        "health": {"storagedriver": {"enabled": False}},
        "auth": generated["auth"],
        "notifications": notifications,
    }
    header = (
        "# Written by scripts/run.py (make run) on every start: edits here are overwritten.\n"
        "# auth and notifications are `registry-gateway registry-config` for the gateway it\n"
        "# starts; the notification secret is the one in ../notification-secret (mode 0600).\n"
    )
    write_private(layout.registry_config, header + yaml.safe_dump(config, sort_keys=False))


def build_demo_image(layout: Layout) -> bool:
    """A tiny OCI layout (tag 1) to push with skopeo, made by the test suite's image builder."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from support.images import build_image
    except ImportError:
        return False
    finally:
        sys.path.pop(0)
    build_image(layout.demo_image, "1", labels={"org.opencontainers.image.title": "hello"})
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

    def __init__(
        self,
        name: str,
        argv: list[str],
        output: IO[bytes] | int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
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

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        super().__init__("gateway", argv, subprocess.PIPE, env)
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

    def __init__(self, binary: str, layout: Layout) -> None:
        self.path = layout.registry_log
        self.log = self.path.open("ab")
        self.offset = self.log.tell()  # this run's lines start here
        super().__init__("registry", [binary, "serve", str(layout.registry_config)], self.log)

    def last_lines(self) -> str:
        with self.path.open("rb") as log:
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


def banner(
    layout: Layout, registry: bool, revision: str | None, demo_image: bool, ui_status: int
) -> str:
    """What runs where, and what to try."""
    bob = "bob:bob-example-password"
    gateway_url, registry_addr = layout.gateway_url, layout.registry_addr
    token = f"{gateway_url}/auth/token?service={SERVICE}"
    ui_note = "   (not built yet: it answers 404 for now)" if ui_status == 404 else ""
    lines = [
        "",
        "Registry Gateway is running; Ctrl-C stops " + ("both." if registry else "it."),
        f"  gateway     {gateway_url}   policy {shown(POLICIES)}/ (revision {revision}), "
        f'service "{SERVICE}", issuer "{ISSUER}", keys in {shown(layout.data)}/keys/',
    ]
    if registry:
        lines += [
            f"  registry    {layout.registry_url}   config {shown(layout.registry_config)}, "
            f"storage {shown(layout.registry_dir / 'storage')}/",
            f"  registry log {shown(layout.registry_log)}",
            f"  notifications registry -> {gateway_url}/-/notifications, secret in "
            f"{shown(layout.notification_secret)} (mode 0600): a push shows in the UI at once",
        ]
    else:
        lines.append(
            "  registry    not started: docker-registry is not installed "
            "(apt-get install docker-registry)"
        )
    lines += [
        "  gateway log this terminal",
        f"  audit log   {shown(layout.audit_log)}, one JSON line per token request "
        f"(tail -f {shown(layout.audit_log)})",
        f"  web UI      {gateway_url}/{ui_note}",
        "",
        "Example credentials from policies/ (EXAMPLE ONLY: never use them for anything real):",
        "  users   alice (admin), bob, carol, dave   password <name>-example-password",
        "  robots  ci-deploy, release                secret   <name>-example-robot-secret",
        "",
        "Try:",
        f"  curl -s -u {bob} '{token}&scope=repository:bob/hello:pull,push' \\",
        "      | .venv/bin/registry-gateway token decode",
    ]
    if registry:
        source = f"oci:{shown(layout.demo_image)}:1" if demo_image else "oci:LAYOUT:TAG"
        lines += [
            f"  skopeo copy --dest-tls-verify=false --dest-creds {bob} \\",
            f"      {source} docker://{registry_addr}/bob/hello:1",
            f"  echo bob-example-password | docker login {registry_addr} -u bob --password-stdin",
            f"  docker manifest inspect --insecure {registry_addr}/bob/hello:1",
        ]
    lines += [
        "  .venv/bin/registry-gateway explain user:carol repository:platform/api:pull,push",
        "",
    ]
    return "\n".join(lines)


def port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (1-65535)")
    return value


def parse_args(argv: list[str] | None = None) -> Layout:
    parser = argparse.ArgumentParser(
        prog="scripts/run.py",
        description="The gateway serving policies/ and a local registry wired to it (make run).",
    )
    parser.add_argument(
        "--gateway-port", type=port, default=GATEWAY_PORT, metavar="N",
        help="the gateway's port on 127.0.0.1 (make run GATEWAY_PORT=N; default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--registry-port", type=port, default=REGISTRY_PORT, metavar="N",
        help="the registry's port on 127.0.0.1 (make run REGISTRY_PORT=N; default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / ".data", metavar="DIR",
        help="keys, logs, the registry's storage and the notification secret (default .data)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.gateway_port == args.registry_port:
        parser.error(f"the gateway and the registry cannot both listen on {args.gateway_port}")
    return Layout(args.data_dir.resolve(), args.gateway_port, args.registry_port)


def main(argv: list[str] | None = None) -> int:
    layout = parse_args(argv)
    supervisor = Supervisor()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, supervisor.on_signal)

    binary = shutil.which("docker-registry")
    gateway_env = dict(os.environ)
    try:
        check_port_free(layout.gateway_port, "gateway", "GATEWAY_PORT", "--gateway-port")
        if binary:
            check_port_free(layout.registry_port, "registry", "REGISTRY_PORT", "--registry-port")
        layout.data.mkdir(mode=0o700, parents=True, exist_ok=True)  # the gateway's keys live here
        if binary:
            secret = notification_secret(layout)
            write_registry_config(layout, secret)
            # Through the environment, never argv: a command line is readable by every user.
            gateway_env["REGISTRY_GATEWAY_NOTIFICATION_SECRET"] = secret
        else:
            say("run: docker-registry is not installed (apt-get install docker-registry);")
            say("run: serving the gateway alone.")
        demo_image = binary is not None and build_demo_image(layout)
    except (StartError, OSError) as exc:
        say(f"run: {exc}")
        return 1

    gateway_url = layout.gateway_url
    gateway_argv = [
        *GATEWAY, "serve",
        "--policies", str(POLICIES),
        "--data-dir", str(layout.data),
        "--listen", f"{HOST}:{layout.gateway_port}",
        "--service", SERVICE,
        "--issuer", ISSUER,
        "--public-url", gateway_url,
        "--audit-log", str(layout.audit_log),
        "--log-format", "text",
    ]  # fmt: skip
    if binary:
        gateway_argv += [
            "--registry-url", layout.registry_url,
            "--registry-public", layout.registry_addr,
        ]  # fmt: skip

    # Both children start before the log-copying thread: preexec_fn is unsafe once threads run.
    gateway = Gateway(gateway_argv, gateway_env)
    supervisor.children.append(gateway)
    if binary:
        supervisor.children.append(Registry(binary, layout))
    gateway.reader.start()

    health: dict[str, Any] = {}

    def gateway_ready() -> bool:
        status, body = http_status(f"{gateway_url}/healthz")
        if status == 200 and isinstance(body, dict):
            health.update(body)
            return True
        return False

    def registry_ready() -> bool:
        return http_status(f"{layout.registry_url}/v2/")[0] == 401  # token auth is on

    ready = gateway.ready = supervisor.wait_until(gateway, gateway_ready, f"{gateway_url}/healthz")
    if ready and binary:
        registry = supervisor.children[1]
        ready = supervisor.wait_until(
            registry, registry_ready, f"{layout.registry_url}/v2/ with 401"
        )
        registry.ready = ready
    if ready:
        ui_status = http_status(f"{gateway_url}/")[0]
        say(banner(layout, binary is not None, health.get("revision"), demo_image, ui_status))
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
