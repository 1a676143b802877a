"""Lockout counted in a real Redis shared by replicas: failing on one locks on every one."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support.gateway import PASSWORDS, SERVICE, start_gateway
from tests.support.nginx import start_nginx
from tests.support.redis import RedisServer
from tests.support.replicas import make_keys, start_replicas

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


def test_a_lockout_on_one_replica_ends_replays_on_every_replica_within_a_second(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Three replicas behind nginx share Redis. bob's answer is replayed on each of them (the
    same request, asked again); wrong passwords to one replica lock bob; then each replica,
    asked directly with bob's right password, refuses him within a second: the lockout's
    epoch, read from Redis every quarter second, ends the replays and remembered sign-ins.
    Before, each replica replayed bob's answer for up to 30 s."""
    keys = make_keys(tmp_path / "keys", tmp_path / "bundle.pem")
    env = {"REGISTRY_GATEWAY_REDIS_URL": redis_server.url}
    replicas = start_replicas(tmp_path / "replicas", 3, keys=keys, args=LOCKOUT, env=env)
    nginx = start_nginx(tmp_path / "nginx", [f"127.0.0.1:{r.port}" for r in replicas])
    try:
        for replica in replicas:
            for _ in range(3):  # kept from the second sighting, replayed from the third
                assert sign_in(replica.url, SERVICE, "bob", PASSWORDS["bob"]).status_code == 200
        # The failures reach one replica only: the other two learn of them through Redis alone
        # (through nginx, each replica might count one and end its replays by itself).
        for attempt in range(3):
            assert sign_in(replicas[0].url, SERVICE, "bob", f"wrong-{attempt}").status_code == 401
        locked_at = time.monotonic()
        # Each replica in turn, until each refuses: when did the last request it still
        # granted start? (Not when its first refusal came back: asked one after another on a
        # busy machine, the third replica's refusal would count the first two's waits.)
        last_granted = [0.0, 0.0, 0.0]
        refused = [False, False, False]
        while not all(refused):
            assert time.monotonic() - locked_at < 5, f"still granted: {refused}"
            for n, replica in enumerate(replicas):
                if refused[n]:
                    continue
                asked = time.monotonic() - locked_at
                status = sign_in(replica.url, SERVICE, "bob", PASSWORDS["bob"]).status_code
                if status == 429:
                    refused[n] = True
                else:
                    last_granted[n] = asked
            time.sleep(0.05)
        print(f"bob last granted {[f'{t:.2f}' for t in last_granted]} s after the lock")
        assert max(last_granted) < 1.0
        # The replays end for bob alone: carol's go on (no new failure, no new epoch).
        assert sign_in(nginx.url, SERVICE, "carol", PASSWORDS["carol"]).status_code == 200
    finally:
        nginx.stop()
        for replica in replicas:
            replica.stop()


def test_while_redis_is_unreachable_nothing_is_replayed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Fail closed: a replica that cannot read the epoch checks every sign-in afresh."""
    gateway = start_gateway(
        tmp_path / "gw", args=LOCKOUT, env={"REGISTRY_GATEWAY_REDIS_URL": redis_server.url}
    )
    try:
        for _ in range(3):
            assert sign_in(gateway.url, SERVICE, "bob", PASSWORDS["bob"]).status_code == 200
        assert [r.get("reused") for r in gateway.audit()][-1] is True  # replayed while it could
        redis_server.stop()
        time.sleep(1.5)  # the last epoch read is stale now
        for _ in range(3):
            assert sign_in(gateway.url, SERVICE, "bob", PASSWORDS["bob"]).status_code == 200
        assert [r.get("reused") for r in gateway.audit()][-3:] == [None, None, None]
    finally:
        gateway.stop()
