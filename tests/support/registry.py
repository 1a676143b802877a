"""Start and stop a real Distribution registry (Debian's `docker-registry` 2.8) for a test."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .binaries import require

START_TIMEOUT = 15.0  # seconds until GET /v2/ must answer
STOP_TIMEOUT = 5.0
LOG_TAIL_LINES = 40
_ALARM = "level=fatal"


class RegistryStartError(RuntimeError):
    """The registry process exited or did not answer GET /v2/ in time."""


@dataclass(frozen=True)
class TokenAuth:
    """The registry's `auth.token` section: where clients get tokens and how they are checked."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(
    root: Path,
    port: int,
    token: TokenAuth | None,
    notifications: list[dict[str, Any]] | None,
    token_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        "health": {"storagedriver": {"enabled": False}},
    }
    if token is not None:
        config["auth"] = {
            "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": str(token.rootcertbundle),
                **(token_options or {}),
            }
        }
    if notifications is not None:
        config["notifications"] = {"endpoints": notifications}
    return config


@dataclass
class Registry:
    """A running `docker-registry serve` process listening on plain HTTP on 127.0.0.1."""

    host: str
    url: str
    port: int
    root: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def _spawn(self) -> None:
        binary = require("docker-registry", "docker-registry")
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [binary, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )

    def _wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                self.stop()
                raise RegistryStartError(
                    f"docker-registry exited with {code} before answering on {self.url}/v2/;"
                    f" last log lines:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                if error.code == 401:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RegistryStartError(
                    f"docker-registry did not answer {self.url}/v2/ within {timeout:.0f}s;"
                    f" last log lines:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL); safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        """Stop and start again with the same config file and port (re-reads rootcertbundle)."""
        self.stop()
        self._spawn()
        self._wait_ready()

    def logs(self) -> str:
        """Everything the registry has logged so far."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The log's panic and fatal lines, then its last `lines` lines."""
        all_lines = self.logs().splitlines()
        alarms = [line for line in all_lines if line.startswith("panic:") or _ALARM in line]
        tail = all_lines[-lines:]
        return "\n".join([*alarms, "...", *tail] if alarms else tail)


def start_registry(
    root: Path,
    *,
    token: TokenAuth | None = None,
    notifications: list[dict[str, Any]] | None = None,
    port: int | None = None,
    token_options: dict[str, Any] | None = None,
) -> Registry:
    """Write a config under `root` and start a registry with filesystem storage and deletes on.

    `notifications` is the list under `notifications.endpoints`, passed through as written;
    `token_options` are more keys of `auth.token` (such as `signingalgorithms`), as written.
    Without `port` a free one is chosen (and another tried if it was taken meanwhile).
    """
    root.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        config_path = root / "config.yml"
        log_path = root / "registry.log"
        log_path.unlink(missing_ok=True)
        # JSON is YAML: no YAML library is needed to write the registry's config file.
        config_path.write_text(
            json.dumps(_config(root, chosen, token, notifications, token_options), indent=2) + "\n"
        )
        registry = Registry(
            host=f"127.0.0.1:{chosen}",
            url=f"http://127.0.0.1:{chosen}",
            port=chosen,
            root=root,
            config_path=config_path,
            log_path=log_path,
        )
        registry._spawn()
        try:
            registry._wait_ready()
        except RegistryStartError:
            if attempt + 1 < attempts and "address already in use" in registry.logs():
                continue
            raise
        return registry
    raise AssertionError("unreachable")
