"""Request limits against a real `registry-gateway serve`, over raw sockets: what a hostile
client can make the process hold (its peak RSS, from /proc) and for how long."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, start_gateway

SECRET = "notification-secret-for-limits"
HEADER_TIMEOUT = 2.0
MAX_CONNECTIONS = 20
MB = 1 << 20


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    started = start_gateway(
        tmp_path_factory.mktemp("limits"),
        args=[
            "--header-timeout",
            str(HEADER_TIMEOUT),
            "--max-connections",
            str(MAX_CONNECTIONS),
            "--drain-seconds",
            "0",
        ],
        env={"REGISTRY_GATEWAY_NOTIFICATION_SECRET": SECRET},
    )
    yield started
    started.stop()


def memory(gateway: Gateway) -> dict[str, int]:
    """The gateway's VmRSS and VmHWM (peak RSS), in bytes."""
    assert gateway.process is not None
    found = {}
    for line in Path(f"/proc/{gateway.process.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def reset_peak(gateway: Gateway) -> int:
    """Start measuring the peak RSS afresh (`clear_refs` 5); the RSS now."""
    assert gateway.process is not None
    Path(f"/proc/{gateway.process.pid}/clear_refs").write_text("5")
    return memory(gateway)["VmRSS"]


def connect(gateway: Gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes (or resets) the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def drain(sock: socket.socket) -> tuple[bytes, bool]:
    """What the gateway sent on `sock`, and whether it has closed it."""
    sock.settimeout(0.5)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except OSError:  # reset
        pass
    return data, True


def stream(gateway: Gateway, head: bytes, piece: bytes, total: int) -> tuple[bytes, float]:
    """Send `head`, then `piece` until `total` bytes or the gateway stops reading, while
    another thread reads the answer; (the answer, seconds until it came)."""
    answer: list[bytes] = []
    came: list[float] = []
    with closing(connect(gateway)) as sock:

        def reader() -> None:
            data = sock.recv(65536)
            came.append(time.perf_counter())
            answer.append(data + read_all(sock))

        thread = threading.Thread(target=reader)
        thread.start()
        started = time.perf_counter()
        try:
            sock.sendall(head)
            sent = 0
            while sent < total and not came:
                sock.sendall(piece)
                sent += len(piece)
        except OSError:
            pass  # the gateway closed the connection
        thread.join(30)
    assert answer and came, "no answer"
    return answer[0], came[0] - started


def status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    parsed: dict[str, Any] = json.loads(body)
    return status, parsed


def code(body: dict[str, Any]) -> str:
    found: str = body["errors"][0]["code"]
    return found


def test_a_64_mb_header_is_refused_without_the_memory_growing(gateway: Gateway) -> None:
    before = reset_peak(gateway)
    answer, seconds = stream(
        gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 65536, 64 * MB
    )
    status, body = status_and_body(answer)
    assert status == 431 and code(body) == "HEADERS_TOO_LARGE"
    assert body["errors"][0]["detail"] == {"setting": "max_header_bytes", "limit": 32768}
    grown = memory(gateway)["VmHWM"] - before
    assert grown < 8 * MB, f"peak RSS grew by {grown / MB:.1f} MB"
    assert seconds < 2
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/-/notifications", f"Authorization: Bearer {SECRET}\r\n"),
        ("/-/login", "Content-Type: application/x-www-form-urlencoded\r\n"),
        ("/auth/token", "Content-Type: application/x-www-form-urlencoded\r\n"),
    ],
)
def test_a_chunked_50_mb_body_gets_a_413_quickly(gateway: Gateway, path: str, headers: str) -> None:
    before = reset_peak(gateway)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Transfer-Encoding: chunked\r\n\r\n"
    piece = b"10000\r\n" + b"a" * 65536 + b"\r\n"
    answer, seconds = stream(gateway, head.encode(), piece, 50 * MB)
    status, body = status_and_body(answer)
    assert status == 413 and code(body) == "REQUEST_TOO_LARGE"
    assert b"connection: close" in answer.lower()
    assert seconds < 1, f"the 413 took {seconds:.2f} s"
    grown = memory(gateway)["VmHWM"] - before
    assert grown < 8 * MB, f"peak RSS grew by {grown / MB:.1f} MB"


def test_a_client_dripping_its_headers_is_dropped_after_the_timeout(gateway: Gateway) -> None:
    with closing(connect(gateway)) as sock:
        started = time.perf_counter()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        for line in range(40):  # one header line every half second: 20 s if never dropped
            try:
                sock.sendall(b"X-Drip-%d: 1\r\n" % line)
            except OSError:
                break
            sock.settimeout(0.5)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if data:
                answer = data + read_all(sock)
            break
        dropped = time.perf_counter() - started
    assert HEADER_TIMEOUT <= dropped < HEADER_TIMEOUT + 2, f"dropped after {dropped:.1f} s"
    status, body = status_and_body(answer)
    assert status == 408 and code(body) == "REQUEST_TIMEOUT"


def test_partial_requests_and_silent_connections_are_closed(gateway: Gateway) -> None:
    socks = [connect(gateway) for _ in range(200)]
    try:
        for sock in socks[:100]:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        time.sleep(HEADER_TIMEOUT + 1.5)
        drained = [drain(sock) for sock in socks]
        assert [closed for _, closed in drained] == [True] * 200
        assert [status_and_body(data)[0] for data, _ in drained[:100]] == [408] * 100
        assert [data for data, _ in drained[100:]] == [b""] * 100  # never sent a byte
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200


def test_connections_beyond_the_limit_get_a_503(gateway: Gateway) -> None:
    idle = [connect(gateway) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)  # accepted
        with closing(connect(gateway)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, body = status_and_body(read_all(sock))
        assert status == 503 and code(body) == "UNAVAILABLE"
        assert body["errors"][0]["detail"]["setting"] == "max_connections"
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"NOT HTTP\r\n\r\n", 400, "INVALID_REQUEST"),
        (b"GET /healthz?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URI_TOO_LONG"),
        (b"GET /healthz?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URI_TOO_LONG"),
    ],
    ids=["malformed", "100-kb-query", "20-kb-query"],
)
def test_bad_requests_are_answered_in_the_registry_format(
    gateway: Gateway, request_bytes: bytes, status: int, error: str
) -> None:
    with closing(connect(gateway)) as sock:
        sock.sendall(request_bytes)
        got, body = status_and_body(read_all(sock))
    assert (got, code(body)) == (status, error)
