"""Start the real gateway (`registry-gateway serve`) as a process, as users run it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .registry import Registry, TokenAuth, free_port, start_registry

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_POLICIES = REPO / "policies"
SERVICE = "test-registry"
ISSUER = "test-gateway"

PASSWORDS = {name: f"{name}-example-password" for name in ("alice", "bob", "carol", "dave")}
PASSWORDS.update({name: f"{name}-example-robot-secret" for name in ("ci-deploy", "release")})


def creds(name: str) -> str:
    """`name:password` of an example user or robot, for skopeo and friends."""
    return f"{name}:{PASSWORDS[name]}"


class GatewayStartError(RuntimeError):
    pass


@dataclass
class Gateway:
    root: Path
    policies: Path
    port: int
    process: subprocess.Popen[bytes] | None
    service: str = SERVICE
    issuer: str = ISSUER
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def audit_path(self) -> Path:
        return self.root / "audit.log"

    @property
    def log_path(self) -> Path:
        return self.root / "gateway.log"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--policies",
            str(self.policies),
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--service",
            self.service,
            "--issuer",
            self.issuer,
            "--public-url",
            self.url,
            "--audit-log",
            str(self.audit_path),
            *self.args,
        ]

    def start(self) -> None:
        # No drain on SIGTERM unless a test asks for one (--drain-seconds or this variable):
        # every stop would otherwise wait the default 5 s, minutes over the suite.
        env = {"REGISTRY_GATEWAY_DRAIN_SECONDS": "0", **os.environ, **self.env}
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=log, env=env, cwd=REPO
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise GatewayStartError(
                    f"gateway exited with {self.process.returncode}:\n{self.logs()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise GatewayStartError(f"gateway did not become healthy:\n{self.logs()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a `registry-gateway` command with this gateway's data dir."""
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )

    def write_bundle(self, path: Path) -> Path:
        proc = self.cli("keys", "bundle", "--data-dir", str(self.data_dir), "-o", str(path))
        assert proc.returncode == 0, proc.stderr
        return path

    def token(self, user: str | None = None, *scopes: str, **params: str) -> httpx.Response:
        """GET /auth/token as an example user or robot (None: anonymous)."""
        auth = (user, PASSWORDS[user]) if user else None
        return httpx.get(
            f"{self.url}/auth/token",
            params=[("service", self.service), *(("scope", s) for s in scopes), *params.items()],
            auth=auth,
            timeout=30,
        )


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWT, unverified (the registry does the verifying)."""

    def part(text: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return data

    header, claims, _ = token.split(".")
    return part(header), part(claims)


def start_gateway(
    root: Path,
    *,
    policies: Path | None = None,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Gateway:
    """A gateway serving a private copy of `policies` (default: the example policy)."""
    root.mkdir(parents=True, exist_ok=True)
    copy = root / "policies"
    if not copy.exists():
        shutil.copytree(policies or EXAMPLE_POLICIES, copy)
    gateway = Gateway(root, copy, free_port(), None, env=env or {}, args=args or [])
    gateway.start()
    return gateway


@dataclass
class Stack:
    gateway: Gateway
    registry: Registry
    bundle: Path

    @property
    def host(self) -> str:
        return self.registry.host

    def ref(self, repository: str) -> str:
        return f"docker://{self.registry.host}/{repository}"

    def stop(self) -> None:
        self.registry.stop()
        self.gateway.stop()


NOTIFICATION_SECRET = "notification-secret-for-tests"


def start_stack(root: Path, *, catalog: bool = False, **gateway_options: Any) -> Stack:
    """A gateway and a real registry that trusts it; with `catalog`, each knows the other."""
    registry_port = free_port()
    notifications = None
    if catalog:
        args = gateway_options.setdefault("args", [])
        args += ["--registry-url", f"http://127.0.0.1:{registry_port}"]
        env = gateway_options.setdefault("env", {})
        env["REGISTRY_GATEWAY_NOTIFICATION_SECRET"] = NOTIFICATION_SECRET
    gateway = start_gateway(root / "gateway", **gateway_options)
    bundle = gateway.write_bundle(root / "bundle.pem")
    auth = TokenAuth(
        realm=f"{gateway.url}/auth/token",
        service=gateway.service,
        issuer=gateway.issuer,
        rootcertbundle=bundle,
    )
    if catalog:
        notifications = [
            {
                "name": "gateway",
                "url": f"{gateway.url}/-/notifications",
                "headers": {"Authorization": [f"Bearer {NOTIFICATION_SECRET}"]},
                "timeout": "2s",
                "threshold": 3,
                "backoff": "1s",
            }
        ]
    try:
        registry = start_registry(
            root / "registry", token=auth, notifications=notifications, port=registry_port
        )
    except Exception:
        gateway.stop()
        raise
    return Stack(gateway, registry, bundle)


def refused(proc: subprocess.CompletedProcess[str]) -> bool:
    """Whether a client failed because the registry refused it (not for another reason)."""
    text = (proc.stdout + proc.stderr).lower()
    words = ("unauthorized", "denied", "authentication required")
    return proc.returncode != 0 and any(word in text for word in words)
