"""Debian's nginx as a load balancer on loopback, everything it writes kept in a temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .binaries import require
from .registry import free_port

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# A replica that refuses, resets, times out or answers 502/503 is skipped; with
# non_idempotent, POSTs (the token endpoint's OAuth2 form) are retried too.
NEXT_UPSTREAM = "error timeout http_502 http_503 non_idempotent"


class NginxStartError(RuntimeError):
    pass


def nginx_binary() -> str:
    """Debian's nginx (in /usr/sbin, which a non-root PATH may lack); fails the test if absent."""
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    return found or require("nginx", "nginx")


def config_text(
    root: Path,
    port: int,
    backends: list[str],
    *,
    next_upstream: str = NEXT_UPSTREAM,
    workers: int = 1,
) -> str:
    """An nginx.conf load-balancing 127.0.0.1:`port` over `backends` (HOST:PORT)."""
    temp = {
        name: root / "temp" / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    }
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    # As root the workers would run as nobody, who cannot enter the test's private temp dir.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    servers = "\n".join(f"        server {b} max_fails=1 fail_timeout=2s;" for b in backends)
    return f"""\
daemon off;
{user}worker_processes {workers};
pid {root}/nginx.pid;
error_log {root}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};

    map $http_x_request_id $req_id {{
        default $http_x_request_id;
        "" $request_id;
    }}
    log_format lb '$remote_addr "$request" $status req=$req_id '
                  'upstream=$upstream_addr upstream_status=$upstream_status';
    access_log {root}/access.log lb;

    upstream gateway {{
        zone gateway 64k;
{servers}
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Request-ID $req_id;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_connect_timeout 1s;
        proxy_read_timeout 30s;
        proxy_next_upstream {next_upstream};
        proxy_next_upstream_tries {len(backends)};

        location / {{
            proxy_pass http://gateway;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.root / "nginx.conf"

    def logs(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> list[str]:
        path = self.root / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def start(self) -> None:
        binary = nginx_binary()
        with (self.root / "stderr.log").open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-p", str(self.root), "-e", str(self.root / "error.log"),
                 "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NginxStartError(
                    f"nginx exited with {self.process.returncode}:\n{self.logs()}"
                )
            try:
                httpx.get(f"{self.url}/nginx-not-a-path", timeout=1)
                return  # any HTTP answer: nginx is listening
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise NginxStartError(f"nginx did not listen on {self.url}:\n{self.logs()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # fast shutdown
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        self.process = None


def start_nginx(
    root: Path, backends: list[str], *, port: int | None = None, **options: object
) -> Nginx:
    """Write a config under `root` and start nginx in the foreground; see `config_text`."""
    root.mkdir(parents=True, exist_ok=True)
    nginx = Nginx(root, port or free_port())
    nginx.config_path.write_text(config_text(root, nginx.port, backends, **options))  # type: ignore[arg-type]
    nginx.start()
    return nginx
