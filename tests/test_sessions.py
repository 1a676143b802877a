"""UI sessions that end: sign-out revokes the session id, and a cookie is bound to its service.

Across replicas with Redis: tests/realworld/test_sessions.py.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import Any, cast

import pytest
from itsdangerous import URLSafeTimedSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.testclient import TestClient

from gateway.policy.model import Subject
from ui.session import (
    COOKIE,
    LIFETIME,
    MemoryRevocations,
    RedisRevocations,
    SessionCodec,
    new_session,
)

from tests.test_ui_views import attribute, one, running, sign_in, soup


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    return Path(shutil.copytree("policies", tmp_path / "policies"))


def signed_in(client: TestClient, cookie: str) -> bool:
    """Whether a request carrying exactly this cookie is signed in."""
    client.cookies.clear()
    client.cookies.set(COOKIE, cookie)
    viewer: dict[str, Any] = client.get("/", params={"format": "json"}).json()["viewer"]
    return bool(viewer["signed_in"])


def sign_out(client: TestClient) -> None:
    page = client.get("/")
    csrf = attribute(one(soup(page), "form[action='/-/logout'] input[name=csrf]"), "value")
    assert client.post("/-/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303


def test_a_saved_cookie_is_refused_after_sign_out(tmp_path: Path, policies: Path) -> None:
    with running(tmp_path, policies) as (client, _, _):
        assert sign_in(client, "bob").status_code == 303
        saved = client.cookies[COOKIE]
        assert signed_in(client, saved)
        sign_out(client)
        assert not signed_in(client, saved)
        assert client.get("/r/bob/tool").status_code == 404
        audit = (tmp_path / "audit.log").read_text()
        assert '"event":"ui_logout"' in audit.replace(" ", "")
        # Signing in again starts a new session, which works.
        client.cookies.clear()
        assert sign_in(client, "bob").status_code == 303
        assert client.cookies[COOKIE] != saved
        assert signed_in(client, client.cookies[COOKIE])


def test_a_cookie_minted_for_another_service_is_refused(tmp_path: Path, policies: Path) -> None:
    """Gateways sharing the key directory: the same service accepts, another refuses."""
    shared = {"data_dir": str(tmp_path / "data")}
    for name in "abc":
        (tmp_path / name).mkdir()
    with running(tmp_path / "a", policies, service="registry-a", **shared) as (first, _, _):
        sign_in(first, "bob")
        cookie = first.cookies[COOKIE]
        with running(tmp_path / "b", policies, service="registry-a", **shared) as (twin, _, _):
            assert signed_in(twin, cookie)
        with running(tmp_path / "c", policies, service="registry-b", **shared) as (other, _, _):
            assert not signed_in(other, cookie)
            assert other.get("/r/bob/tool").status_code == 404  # (the cookie is still set)


def test_without_redis_another_replica_accepts_a_signed_out_cookie(
    tmp_path: Path, policies: Path
) -> None:
    """What docs/ui.md says: without Redis a sign-out is known to its own process only."""
    shared = {"data_dir": str(tmp_path / "data")}
    for name in "abc":
        (tmp_path / name).mkdir()
    with running(tmp_path / "a", policies, **shared) as (first, _, _):
        sign_in(first, "bob")
        cookie = first.cookies[COOKIE]
        with running(tmp_path / "b", policies, **shared) as (second, _, _):
            sign_out(first)
            assert not signed_in(first, cookie)
            assert signed_in(second, cookie)


def test_a_signed_in_cookie_without_a_session_id_is_refused() -> None:
    codec = SessionCodec(b"k" * 32, secure=False, service="s")
    serializer = URLSafeTimedSerializer(b"k" * 32, salt="ui-session\0s")
    old = serializer.dumps({"c": "x", "s": "user:bob", "g": [], "f": None, "v": None})
    assert codec.loads(old) is None
    assert codec.loads(serializer.dumps({"c": "x"})) is not None  # anonymous: only a CSRF token
    session = codec.loads(codec.dumps(new_session(new_session().subject)))
    assert session is not None and session.sid is None
    bob = codec.loads(codec.dumps(new_session(Subject.parse("user:bob"))))
    assert bob is not None and bob.sid and bob.signed_in
    assert bob.issued is not None and LIFETIME - 5 < bob.remaining() <= LIFETIME


def test_memory_revocations_expire_and_stay_bounded() -> None:
    revoked = MemoryRevocations(size=3)
    asyncio.run(revoked.revoke("a", 60))
    assert asyncio.run(revoked.revoked("a")) and not asyncio.run(revoked.revoked("b"))
    revoked.add("gone", -1e6)  # expired long ago (past the clock slack too)
    assert not revoked.known("gone")
    for sid in "bcde":
        revoked.add(sid, 60)
    assert len(revoked) == 3 and not revoked.known("a") and revoked.known("e")
    alone = MemoryRevocations()
    alone.add("gone", -1e6)  # expired at once, and the only one: forgotten, nothing breaks
    assert len(alone) == 0 and not alone.known("gone")


class _DownRedis:
    """A Redis client whose server cannot be reached."""

    async def set(self, *args: object, **kwargs: object) -> None:
        raise RedisConnectionError("Connection refused")

    async def exists(self, *args: object) -> int:
        raise RedisConnectionError("Connection refused")


def test_an_unreachable_redis_signs_nobody_out_and_keeps_local_sign_outs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    revocations = RedisRevocations(cast(Any, _DownRedis()), "p:")
    with caplog.at_level(logging.ERROR, logger="registry_gateway.ui"):
        asyncio.run(revocations.revoke("mine", 60))
        assert asyncio.run(revocations.revoked("mine"))  # this process knows
        assert not asyncio.run(revocations.revoked("other"))  # not signed out by an outage
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "session store unreachable (ConnectionError)" in lines[0]
    assert time.monotonic() - revocations._logged < 60  # logged once a minute at most
