"""Request limits: the ASGI layer through the app, and uvicorn's protocol fed bytes in-process.

tests/realworld/test_limits.py does the same against a real `registry-gateway serve` over
sockets (memory, timing); here no socket is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from httpx2 import Response  # what starlette.testclient answers with
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.server import ServerState

from gateway.app import create_app
from gateway.config import load_settings
from gateway.limits import RequestLimits
from gateway.protocol import LimitedHttpToolsProtocol, ServerConfig
from gateway.responses import read_body, send_json

SERVICE = "unit-registry"
SECRET = "notification-secret"


@contextlib.contextmanager
def app_client(tmp_path: Path, **settings: str) -> Iterator[TestClient]:
    policies = shutil.copytree("policies", tmp_path / "policies")
    loaded = load_settings(
        {
            "policies": str(policies),
            "data_dir": str(tmp_path / "data"),
            "service": SERVICE,
            "audit_log": str(tmp_path / "audit.log"),
            "watch": "false",
            **settings,
        },
        environ={
            "REGISTRY_GATEWAY_NOTIFICATION_SECRET": SECRET,
            "REGISTRY_GATEWAY_RELOAD_SECRET": SECRET,
        },
    )
    with TestClient(create_app(loaded)) as test_client:
        yield test_client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """Small limits: 4 KiB bodies, 1 KiB queries, 20 header fields."""
    limits = {"max_body_bytes": "4096", "max_query_bytes": "1024", "max_headers": "20"}
    with app_client(tmp_path, **limits) as test_client:
        yield test_client


def error(answer: Response) -> dict[str, Any]:
    found: dict[str, Any] = answer.json()["errors"][0]
    return found


def chunks(size: int, piece: int = 1000) -> Iterator[bytes]:
    """A body of `size` bytes sent chunked (no Content-Length)."""
    for start in range(0, size, piece):
        yield b"a" * min(piece, size - start)


BEARER = {"authorization": f"Bearer {SECRET}"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


# -- the ASGI layer ------------------------------------------------------------------------


def test_too_many_header_fields_are_a_431(client: TestClient) -> None:
    headers = {f"x-field-{i}": "1" for i in range(25)}
    answer = client.get("/healthz", headers=headers)
    assert answer.status_code == 431
    assert error(answer)["code"] == "HEADERS_TOO_LARGE"
    assert error(answer)["detail"] == {"setting": "max_headers", "limit": 20}
    assert answer.headers["connection"] == "close" and "x-request-id" in answer.headers


@pytest.mark.parametrize("path", ["/auth/token", "/", "/healthz"])
def test_a_query_too_long_is_a_414_in_the_registry_format(client: TestClient, path: str) -> None:
    answer = client.get(path, params={"service": SERVICE, "q": "a" * 2000})
    assert answer.status_code == 414
    assert error(answer)["code"] == "URI_TOO_LONG"
    assert error(answer)["detail"] == {"setting": "max_query_bytes", "limit": 1024}


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/-/notifications", BEARER),
        ("/-/reload", BEARER),
        ("/-/login", FORM),
        ("/-/logout", FORM),
        ("/auth/token", FORM),
    ],
)
def test_every_post_route_refuses_a_body_over_the_limit(
    client: TestClient, path: str, headers: dict[str, str]
) -> None:
    sized = client.post(path, content=b"a" * 5000, headers=headers)
    chunked = client.post(path, content=chunks(50_000), headers=headers)
    for answer in (sized, chunked):
        assert answer.status_code == 413, (answer.status_code, answer.text)
        assert error(answer)["code"] == "REQUEST_TOO_LARGE"
        assert answer.headers["connection"] == "close"


def test_a_chunked_body_within_the_limit_is_read_whole(client: TestClient) -> None:
    envelope = json.dumps({"events": []}).encode()
    answer = client.post(
        "/-/notifications", content=iter([envelope[:5], envelope[5:]]), headers=BEARER
    )
    assert answer.status_code == 200 and answer.json() == {"accepted": 0, "ignored": 0}
    assert "connection" not in answer.headers  # read to its end: the connection may stay


def test_the_token_form_keeps_its_own_smaller_limit(tmp_path: Path) -> None:
    """16 KiB whatever max_body_bytes says; refused as an answer of the token service
    (so audited), chunked or not."""
    with app_client(tmp_path, max_body_bytes="1048576") as client:
        form = b"grant_type=password&service=" + SERVICE.encode() + b"&scope=" + b"a" * 20000
        sized = client.post("/auth/token", content=form, headers=FORM)
        chunked = client.post("/auth/token", content=iter([form[:9000], form[9000:]]), headers=FORM)
    for answer in (sized, chunked):
        assert answer.status_code == 413 and error(answer)["code"] == "REQUEST_TOO_LARGE"
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(line["status"], line["outcome"]) for line in lines] == [(413, "rejected")] * 2


def test_a_bad_content_length_is_a_400(client: TestClient) -> None:
    answer = client.post("/-/reload", content=b"x", headers={**BEARER, "content-length": "1x"})
    assert answer.status_code == 400
    assert error(answer) == {
        "code": "INVALID_REQUEST",
        "message": "bad Content-Length",
        "detail": None,
    }


# -- uvicorn's protocol, fed bytes ---------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """What the protocol writes and whether it closed; reads are always on."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes = 0  # calls of write()
        self.closed = False
        self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data
        self.writes += 1

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 5001)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def status(self) -> int | None:
        """The status of the first answer written, if any."""
        if not self.written.startswith(b"HTTP/1.1 "):
            return None
        return int(self.written[9:12])

    def body(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(bytes(self.written).partition(b"\r\n\r\n")[2])
        return found


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await send_json(send, 200, b'{"ok":true}')


LIMITS = RequestLimits(head=4096, header_timeout=5.0, connections=4)


def protocol(
    limits: RequestLimits = LIMITS, state: ServerState | None = None, app: ASGIApp = hello
) -> tuple[LimitedHttpToolsProtocol, FakeTransport]:
    config = ServerConfig(app, limits=limits, log_config=None, lifespan="off")
    made = LimitedHttpToolsProtocol(config, state or ServerState(), {}, asyncio.get_running_loop())
    transport = FakeTransport()
    made.connection_made(transport)
    return made, transport


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_request_within_the_limits_is_served() -> None:
    async def run() -> None:
        made, transport = protocol()
        made.data_received(
            b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Fill: " + b"a" * 3000 + b"\r\n\r\n"
        )
        await settle()
        assert transport.status() == 200 and not transport.closed

    asyncio.run(run())


def test_a_head_over_the_limit_is_refused_as_it_arrives() -> None:
    """One header, 1 KiB at a time: refused once 4 KiB are in (not after 1 MiB, by when a
    server without the limit has buffered all of it), and what follows is dropped."""

    async def run() -> None:
        made, transport = protocol()
        made.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        fed = 0
        while transport.status() is None and fed < 1 << 20:
            made.data_received(b"a" * 1024)
            fed += 1024
        assert fed <= 4096 + 1024
        assert transport.status() == 431 and transport.eof  # answered, then no more sending
        assert transport.body()["errors"][0]["detail"] == {
            "setting": "max_header_bytes",
            "limit": 4096,
        }
        written = len(transport.written)
        made.data_received(b"a" * 65536)  # lingering: read and dropped, never parsed
        assert len(transport.written) == written

    asyncio.run(run())


def test_a_head_over_the_limit_in_one_read_is_refused() -> None:
    async def run() -> None:
        made, transport = protocol()
        made.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        await settle()
        assert transport.status() == 431

    asyncio.run(run())


def test_a_url_over_the_limit_is_a_414() -> None:
    async def run() -> None:
        made, transport = protocol()
        made.data_received(b"GET /?q=" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")
        assert transport.status() == 414
        assert transport.body()["errors"][0]["code"] == "URI_TOO_LONG"

    asyncio.run(run())


def test_a_malformed_request_gets_the_registry_format() -> None:
    async def run() -> None:
        made, transport = protocol()
        made.data_received(b"NOT HTTP AT ALL\r\n\r\n")
        assert transport.status() == 400
        assert transport.body() == {
            "errors": [
                {"code": "INVALID_REQUEST", "message": "malformed HTTP request", "detail": None}
            ]
        }

    asyncio.run(run())


def test_a_head_that_takes_too_long_is_dropped() -> None:
    async def run() -> None:
        dripping, answered = protocol()
        dripping.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
        idle, silent = protocol()
        now = time.monotonic()
        for made in (dripping, idle):
            made.check_head_deadline(now + 4.0)  # within the timeout
        assert answered.status() is None and not silent.closed
        for made in (dripping, idle):
            made.check_head_deadline(now + 6.0)
        assert answered.status() == 408 and answered.eof
        assert silent.closed and not silent.written  # never sent a byte: closed quietly

    asyncio.run(run())


def test_the_timeout_runs_from_each_request_s_first_byte() -> None:
    """A kept-alive connection is not timed from its first request."""

    async def run() -> None:
        made, transport = protocol()
        made.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        made.check_head_deadline(time.monotonic() + 60)  # between requests: the keep-alive's
        assert not transport.closed
        made.data_received(b"GET / HTTP/1.1\r\n")
        made.check_head_deadline(time.monotonic() + 4.0)
        assert not transport.closed
        made.check_head_deadline(time.monotonic() + 6.0)
        assert transport.written.count(b"HTTP/1.1 408") == 1

    asyncio.run(run())


def test_a_sweep_enforces_the_timeout() -> None:
    async def run() -> None:
        limits = RequestLimits(head=4096, header_timeout=0.2, connections=4)
        made, transport = protocol(limits)
        made.data_received(b"GET / HTTP/1.1\r\n")
        await asyncio.sleep(0.5)
        assert transport.status() == 408

    asyncio.run(run())


def test_connections_beyond_the_limit_get_a_503() -> None:
    async def run() -> None:
        state = ServerState()
        for _ in range(4):
            protocol(state=state)
        made, transport = protocol(state=state)  # the fifth
        made.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert transport.status() == 503
        assert transport.body()["errors"][0]["detail"]["setting"] == "max_connections"

    asyncio.run(run())


def test_kept_alive_and_pipelined_requests_are_measured_alone() -> None:
    """Each request's head counts from its own first byte, not the connection's."""

    async def run() -> None:
        made, transport = protocol()
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Fill: " + b"a" * 3000 + b"\r\n\r\n"
        for _ in range(3):  # kept alive, one read each
            made.data_received(head)
            await settle()
        made.data_received(head * 2)  # pipelined in one read
        for _ in range(5):
            await settle()
        for part in (head[:1500], head[1500:2600], head[2600:]):  # kept alive, in three reads
            made.data_received(part)
        await settle()
        assert transport.written.count(b"HTTP/1.1 200") == 6 and not transport.closed

    asyncio.run(run())


# -- an answer in one write ------------------------------------------------------------------


def test_an_answer_s_head_and_body_go_out_in_one_write() -> None:
    """One system call (and one TCP segment) per token answer, not one for the head and
    one for the body."""

    async def run() -> None:
        made, transport = protocol()
        for _ in range(3):  # kept alive: every answer alike
            made.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await settle()
        assert transport.written.count(b"HTTP/1.1 200") == 3
        assert transport.writes == 3

    asyncio.run(run())


def test_a_streaming_answer_s_head_is_not_held_back() -> None:
    """A chunked answer's head goes out when it is sent, before any of its body."""
    go_on = asyncio.Event()

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await go_on.wait()
        await send({"type": "http.response.body", "body": b"later", "more_body": False})

    async def run() -> None:
        made, transport = protocol(app=streaming)
        made.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        assert transport.status() == 200 and b"later" not in transport.written
        go_on.set()
        await settle()
        assert transport.written.endswith(b"5\r\nlater\r\n0\r\n\r\n")

    asyncio.run(run())


def test_the_head_of_an_answer_to_head_is_sent() -> None:
    """A HEAD answer has a Content-Length and no body: its head is not held for one."""

    async def run() -> None:
        made, transport = protocol()
        made.data_received(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        assert transport.status() == 200 and transport.written.endswith(b"\r\n\r\n")
        made.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # kept alive
        await settle()
        assert transport.written.count(b"HTTP/1.1 200") == 2

    asyncio.run(run())


def test_a_100_continue_is_not_held_back() -> None:
    """The client waits for 100 Continue before it sends the body: it must go out alone."""

    async def reading(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive, 100)
        await send_json(send, 200, body)

    async def run() -> None:
        made, transport = protocol(app=reading)
        made.data_received(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        await settle()
        assert transport.written == b"HTTP/1.1 100 Continue\r\n\r\n"
        made.data_received(b"{}")
        await settle()
        assert transport.written.endswith(b"\r\n\r\n{}") and transport.writes == 2

    asyncio.run(run())


def test_a_held_head_waits_for_its_body_or_goes_out_before_the_close() -> None:
    """An answer with a Content-Length whose body comes later: one write when it comes; and
    an app that fails after the head still gets the head out before the connection closes."""
    go_on = asyncio.Event()

    async def late(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await go_on.wait()
        if scope["path"] == "/fail":
            raise RuntimeError("the app failed after the head")
        await send({"type": "http.response.body", "body": b"later", "more_body": False})

    async def run() -> None:
        made, transport = protocol(app=late)
        made.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        assert transport.writes == 0
        go_on.set()
        await settle()
        assert transport.writes == 1 and transport.written.endswith(b"\r\n\r\nlater")

        go_on.clear()
        made.data_received(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        go_on.set()
        await settle()
        assert transport.writes == 2 and transport.closed
        assert transport.written.endswith(b"content-length: 5\r\n\r\n")

    asyncio.run(run())
