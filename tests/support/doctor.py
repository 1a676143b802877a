"""Run `registry-gateway doctor` as a user would, with a test gateway's settings; and a clock
that is really off, for a process of ours (libfaketime)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .binaries import require
from .gateway import REPO, Gateway

LIBFAKETIME = "/usr/lib/*/faketime/libfaketime.so.1"  # Debian's faketime, any architecture


@dataclass(frozen=True)
class DoctorRun:
    """What one `doctor` run printed, by check."""

    returncode: int
    stdout: str
    stderr: str

    def line(self, check: str) -> str:
        """The line of one check (`ok    token  ...`)."""
        for line in self.stdout.splitlines():
            words = line.split()
            if len(words) >= 2 and words[1] == check and words[0] in ("ok", "FAIL", "skip"):
                return line
        raise AssertionError(f"doctor printed no {check} line:\n{self.stdout}{self.stderr}")

    def status(self, check: str) -> str:
        return self.line(check).split()[0]

    def statuses(self) -> dict[str, str]:
        checks = ("challenge", "token", "clock", "notifications", "policy", "health")
        return {check: self.status(check) for check in checks}

    def document(self) -> dict[str, Any]:
        """The output of a `--format json` run."""
        data: dict[str, Any] = json.loads(self.stdout)
        return data


def run_doctor(
    gateway: Gateway,
    registry_url: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> DoctorRun:
    """`registry-gateway doctor --registry URL` with the settings `gateway` serves with (its
    flags, and `env` for the rest), and nothing from this process's REGISTRY_GATEWAY_*."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_GATEWAY_")}
    environment.update(env or {})
    command = [
        sys.executable,
        "-m",
        "gateway",
        "doctor",
        "--registry",
        registry_url,
        "--data-dir",
        str(gateway.data_dir),
        "--policies",
        str(gateway.policies),
        "--service",
        gateway.service,
        "--issuer",
        gateway.issuer,
        "--public-url",
        gateway.url,
        "--timeout",
        "5",
        *args,
    ]
    proc = subprocess.run(
        command, capture_output=True, text=True, env=environment, cwd=REPO, timeout=120
    )
    return DoctorRun(proc.returncode, proc.stdout, proc.stderr)


def skewed_clock(seconds: int) -> dict[str, str]:
    """Environment that sets a process's wall clock `seconds` off the host's (libfaketime:
    the monotonic clock is left alone). Python reads the faked time; Go programs do not."""
    require("faketime", "faketime")
    found = sorted(Path("/").glob(LIBFAKETIME.lstrip("/")))
    assert found, f"{LIBFAKETIME} missing: apt-get install -y faketime"
    return {
        "LD_PRELOAD": str(found[0]),
        "FAKETIME": f"{seconds:+d}s",
        "DONT_FAKE_MONOTONIC": "1",
    }
