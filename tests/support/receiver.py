"""A real webhook receiver on 127.0.0.1, in the test process (a thread): it checks every
request's signature and timestamp the way docs/events.md's example receiver does (its own
HMAC code, not the gateway's), records what it got, and can be told to fail first."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE = 300  # seconds


@dataclass(frozen=True)
class Received:
    """One request the receiver took."""

    headers: dict[str, str]
    body: bytes
    verified: bool  # the signature matched and the timestamp was fresh
    status: int  # what the receiver answered

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def signature_ok(secret: bytes, headers: dict[str, str], body: bytes, now: float) -> bool:
    """The receiver's check, written as a receiver would: HMAC-SHA256 of `timestamp.body`."""
    timestamp = headers.get("x-registry-gateway-timestamp", "")
    given = headers.get("x-registry-gateway-signature", "")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > TOLERANCE:
        return False
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given, "sha256=" + expected)


class Receiver:
    """Answers `fail_first` requests with `fail_status`, then 204 to each verified request
    (401 to one whose signature does not check)."""

    def __init__(self, secret: bytes, *, fail_first: int = 0, fail_status: int = 500) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests: list[Received] = []
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified = signature_ok(receiver.secret, headers, body, time.time())
                with receiver._lock:
                    if len(receiver.requests) < receiver.fail_first:
                        status = receiver.fail_status
                    else:
                        status = 204 if verified else 401
                    receiver.requests.append(Received(headers, body, verified, status))
                    receiver._lock.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def taken(self) -> list[Received]:
        """The requests answered 2xx, in order."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until `count` requests were taken (2xx); the taken ones, however many."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len([r for r in self.requests if 200 <= r.status < 300]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
        return self.taken()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
