"""Parallel guessing against real servers: 60 sign-ins for one name at once (59 wrong, 1 right)
from one address get at most the limit checked, whether the counts live in one process, in
the SQLite file two workers share, or in Redis shared by two replicas."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from gateway.auth.lockout import BACKOFF_CAP, EPOCH_INTERVAL

from tests.support.catalog import wait_until
from tests.support.gateway import PASSWORDS, Gateway, start_gateway
from tests.support.redis import RedisServer

LIMIT = 10  # lockout_failures, the default
ATTACKER = "203.0.113.5"  # sent as X-Forwarded-For, which the gateway trusts from loopback


def guess_at_once(gateways: list[Gateway], user: str = "dave") -> list[int]:
    """60 sign-ins for `user` released together, spread over `gateways`; their statuses."""
    passwords = [f"guess-{i}" for i in range(59)] + [PASSWORDS[user]]
    start = threading.Barrier(len(passwords))

    def one(i: int) -> int:
        gateway = gateways[i % len(gateways)]
        start.wait()
        return httpx.get(
            f"{gateway.url}/auth/token",
            params={"service": gateway.service},
            auth=(user, passwords[i]),
            headers={"X-Forwarded-For": ATTACKER},
            timeout=60,
        ).status_code

    with ThreadPoolExecutor(len(passwords)) as pool:
        return list(pool.map(one, range(len(passwords))))


def assert_at_most_the_limit_checked(answers: list[int]) -> None:
    checked = answers.count(401) + answers.count(200)
    assert 1 <= checked <= LIMIT, answers
    assert answers.count(429) == len(answers) - checked, answers


def test_one_process(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path / "gw")
    try:
        assert_at_most_the_limit_checked(guess_at_once([gateway]))
    finally:
        gateway.stop()


def test_two_workers_share_their_counts(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path / "gw", args=["--workers", "2"])
    try:
        assert_at_most_the_limit_checked(guess_at_once([gateway]))
        assert (gateway.data_dir / "lockout.sqlite3").exists()
        assert "lockout store" not in gateway.logs()
    finally:
        gateway.stop()


def test_two_replicas_share_their_counts_through_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # No backoff pauses: the reservations alone keep the checks to the limit, and the guessing
    # below reaches the lockout without waiting out pauses of 1, 2, 4 ... seconds.
    env = {"REGISTRY_GATEWAY_REDIS_URL": redis_server.url, "REGISTRY_GATEWAY_LOCKOUT_BACKOFF": "0"}
    replicas = [start_gateway(tmp_path / name, env=env) for name in ("one", "two")]
    try:
        answers = guess_at_once(replicas)
        assert_at_most_the_limit_checked(answers)
        # If the right password was among those checked, it cleared dave's count from this
        # address (a success does): the guessing goes on, on one replica, until the lockout
        # (a 429 with a pause's short Retry-After is not one: after it, the right password is
        # rightly let in).
        for attempt in range(2 * LIMIT):
            guess = httpx.get(
                f"{replicas[0].url}/auth/token",
                params={"service": replicas[0].service},
                auth=("dave", f"more-{attempt}"),
                headers={"X-Forwarded-For": ATTACKER},
                timeout=30,
            )
            if guess.status_code == 429 and int(guess.headers["retry-after"]) > BACKOFF_CAP:
                break
        else:
            raise AssertionError(f"dave was never locked out: {answers}, then {guess.text}")
        # A replica that checked dave's right password remembers it until it reads the shared
        # lockout epoch again (every EPOCH_INTERVAL; tests/realworld/test_redis_lockout.py
        # measures that bound): after that, the lock holds there too. Here the bound is
        # looser, as CI's two cores run other tests meanwhile.
        time.sleep(4 * EPOCH_INTERVAL)
        # The attacker's address is refused dave on both; dave, elsewhere, is not.
        for replica in replicas:

            def refused_there(replica: Gateway = replica) -> bool:
                answer = httpx.get(
                    f"{replica.url}/auth/token",
                    params={"service": replica.service},
                    auth=("dave", PASSWORDS["dave"]),
                    headers={"X-Forwarded-For": ATTACKER},
                    timeout=30,
                )
                return answer.status_code == 429

            wait_until(refused_there, timeout=5, what="dave locked out of the attacker's address")
            assert replica.token("dave").status_code == 200  # from 127.0.0.1
    finally:
        for replica in replicas:
            replica.stop()
