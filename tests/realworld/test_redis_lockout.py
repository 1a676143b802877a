"""Lockout counted in a real Redis shared by replicas: failing on one locks on every one."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.gateway import PASSWORDS, start_gateway
from tests.support.redis import RedisServer

LOCKOUT = [
    "--lockout-failures",
    "3",
    "--lockout-window",
    "60s",
    "--lockout-duration",
    "30s",
    "--lockout-backoff",
    "0",
]


def sign_in(url: str, service: str, user: str, password: str) -> httpx.Response:
    return httpx.get(
        f"{url}/auth/token", params={"service": service}, auth=(user, password), timeout=30
    )


def test_failures_on_one_replica_lock_the_name_on_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {"REGISTRY_GATEWAY_REDIS_URL": redis_server.url}
    first = start_gateway(tmp_path / "one", args=LOCKOUT, env=env)
    second = start_gateway(tmp_path / "two", args=LOCKOUT, env=env)
    try:
        for attempt in range(3):
            answer = sign_in(first.url, first.service, "carol", f"wrong-{attempt}")
            assert answer.status_code == 401
        locked = sign_in(second.url, second.service, "carol", PASSWORDS["carol"])
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) > 0
        assert locked.json()["errors"][0]["code"] == "TOO_MANY_REQUESTS"
        # Another user from the same (loopback) address is not affected by carol's lock.
        assert sign_in(second.url, second.service, "bob", PASSWORDS["bob"]).status_code == 200
    finally:
        first.stop()
        second.stop()


def test_without_redis_counts_are_per_replica(tmp_path: Path) -> None:
    first = start_gateway(tmp_path / "one", args=LOCKOUT)
    second = start_gateway(tmp_path / "two", args=LOCKOUT)
    try:
        for attempt in range(3):
            sign_in(first.url, first.service, "carol", f"wrong-{attempt}")
        assert sign_in(first.url, first.service, "carol", PASSWORDS["carol"]).status_code == 429
        assert sign_in(second.url, second.service, "carol", PASSWORDS["carol"]).status_code == 200
    finally:
        first.stop()
        second.stop()


def test_a_redis_outage_does_not_lock_anyone_out(tmp_path: Path, redis_server: RedisServer) -> None:
    gateway = start_gateway(
        tmp_path / "gw", args=LOCKOUT, env={"REGISTRY_GATEWAY_REDIS_URL": redis_server.url}
    )
    try:
        redis_server.stop()
        assert sign_in(gateway.url, gateway.service, "carol", "wrong").status_code == 401
        assert sign_in(gateway.url, gateway.service, "carol", PASSWORDS["carol"]).status_code == 200
        assert "lockout store unreachable" in gateway.logs()
    finally:
        gateway.stop()
