"""An htpasswd file mounted the Kubernetes way: a Secret or ConfigMap volume swaps a
directory under a symlink (`htpasswd -> ..data/htpasswd`, `..data` renamed to a new
directory), and a user removed that way is refused at once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import bcrypt
import httpx

from tests.support.gateway import SERVICE, start_gateway

PASSWORDS = {"hana": "hana-htpasswd-password", "ivo": "ivo-htpasswd-password"}


def htpasswd_line(name: str) -> str:
    return f"{name}:{bcrypt.hashpw(PASSWORDS[name].encode(), bcrypt.gensalt(4)).decode()}\n"


def publish(volume: Path, version: str, names: list[str]) -> None:
    """What kubelet's atomic writer does: a new directory, a temporary link, a rename."""
    data = volume / f"..{version}"
    data.mkdir()
    (data / "htpasswd").write_text("".join(htpasswd_line(n) for n in names))
    (volume / "..data_tmp").symlink_to(data.name)
    os.replace(volume / "..data_tmp", volume / "..data")


def status(url: str, user: str, scope: str) -> int:
    answer = httpx.get(
        f"{url}/auth/token",
        params={"service": SERVICE, "scope": scope},
        auth=(user, PASSWORDS[user]),
        timeout=30,
    )
    return answer.status_code


def test_a_user_removed_by_a_secret_volume_swap_is_refused(tmp_path: Path) -> None:
    volume = tmp_path / "secret"
    volume.mkdir()
    publish(volume, "2026_12_02_10_00_00.1", ["hana", "ivo"])
    (volume / "htpasswd").symlink_to("..data/htpasswd")
    gateway = start_gateway(
        tmp_path / "gw",
        args=["--htpasswd", str(volume / "htpasswd")],
    )
    try:
        scope = "repository:hana/app:pull"
        for _ in range(3):  # the third is a replay: the swap must end that too
            assert status(gateway.url, "hana", scope) == 200
        publish(volume, "2026_12_02_10_05_00.2", ["ivo"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and status(gateway.url, "hana", scope) != 401:
            time.sleep(0.2)
        assert status(gateway.url, "hana", scope) == 401
        assert status(gateway.url, "ivo", "repository:ivo/app:pull") == 200
        health = httpx.get(f"{gateway.url}/healthz", timeout=30).json()
        assert health["sign_in"]["htpasswd"]["users"] == 1
    finally:
        gateway.stop()
