"""UI sign-out across real replicas sharing their keys and a real Redis: a cookie saved before
`POST /-/logout` on one replica is refused by every replica; a gateway for another service
that shares the keys refuses the cookie from the start."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.support.catalog import csrf_of
from tests.support.gateway import EXAMPLE_POLICIES, PASSWORDS, Gateway
from tests.support.redis import RedisServer
from tests.support.registry import free_port
from tests.support.replicas import make_keys, start_replicas

COOKIE = "rg_session"


def sign_in(url: str, user: str) -> str:
    """A new UI session of `user` on the gateway at `url`: its cookie's value."""
    with httpx.Client(base_url=url, follow_redirects=False, timeout=30) as client:
        form = client.get("/-/login")
        data = {"username": user, "password": PASSWORDS[user], "csrf": csrf_of(form.text)}
        assert client.post("/-/login", data=data).status_code == 303
        return client.cookies[COOKIE]


def sign_out(url: str, cookie: str) -> None:
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    page = httpx.get(f"{url}/", headers=headers, timeout=30)
    answer = httpx.post(
        f"{url}/-/logout", data={"csrf": csrf_of(page.text)}, headers=headers, timeout=30
    )
    assert answer.status_code == 303


def signed_in(url: str, cookie: str) -> bool:
    page = httpx.get(f"{url}/?format=json", headers={"Cookie": f"{COOKIE}={cookie}"}, timeout=30)
    assert page.status_code == 200, page.text
    return bool(page.json()["viewer"]["signed_in"])


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Gateway]]:
    """Two replicas of one service and a gateway of another service, all sharing the keys
    and Redis (started once: each test makes sessions of its own)."""
    root = tmp_path_factory.mktemp("sessions")
    keys = make_keys(root / "keys", root / "bundle.pem")
    redis_server = RedisServer(root / "redis")
    started: list[Gateway] = []
    try:
        env = {"REGISTRY_GATEWAY_REDIS_URL": redis_server.url}
        started += start_replicas(root / "replicas", 2, keys=keys, args=[], env=env)
        other_root = root / "other"
        (other_root / "data").mkdir(parents=True)
        shutil.copytree(keys, other_root / "data" / "keys")
        shutil.copytree(EXAMPLE_POLICIES, other_root / "policies")
        other = Gateway(
            other_root, other_root / "policies", free_port(), None, service="other-registry",
            env=env, args=[],
        )  # fmt: skip
        started.append(other)
        other.start()
        yield started
    finally:
        for gateway in started:
            gateway.stop()
        redis_server.stop()


def test_sign_out_on_one_replica_ends_the_session_on_every_replica(
    gateways: list[Gateway],
) -> None:
    first, second, _ = gateways
    cookie = sign_in(first.url, "bob")
    assert signed_in(first.url, cookie) and signed_in(second.url, cookie)
    sign_out(first.url, cookie)
    assert not signed_in(first.url, cookie)
    assert not signed_in(second.url, cookie)
    # A new sign-in on the other replica is a new session, unaffected.
    again = sign_in(second.url, "bob")
    assert signed_in(first.url, again) and signed_in(second.url, again)


def test_a_gateway_for_another_service_refuses_the_cookie(gateways: list[Gateway]) -> None:
    first, _, other = gateways
    cookie = sign_in(first.url, "alice")
    assert signed_in(first.url, cookie)
    assert not signed_in(other.url, cookie)
    assert signed_in(other.url, sign_in(other.url, "alice"))  # its own sessions work
