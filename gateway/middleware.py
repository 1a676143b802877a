"""Request ids and the access log: one JSON line per request, sharing its id with the audit.

`RequestLog` wraps every route, the token endpoint included: it takes the caller's sane
X-Request-ID or makes one, echoes it on the answer, writes the access line, and turns an
unexpected error into the registry's JSON 500 (logged with the request id, never shown).
"""

from __future__ import annotations

import logging
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.audit import now_iso
from gateway.jsontext import cached_ascii_json
from gateway.logs import json_stream, write_json_line
from gateway.responses import send_internal_error

log = logging.getLogger("registry_gateway.access")
errors = logging.getLogger("registry_gateway")
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when it is sane, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if _VALID_ID.fullmatch(text):
                return text
            break
    # An id to find lines by, not a secret: no system call for it on every request.
    return f"{random.getrandbits(128):032x}"


def access_line(scope: Scope, request_id: str, status: int, started: float) -> None:
    """The request's line in the server log (`registry_gateway.access`). `request_id` is
    `request_id(scope)`'s: letters, digits, `.`, `_` and `-`, nothing to escape."""
    client = scope.get("client")
    host = client[0] if client else None
    method, path = scope["method"], scope["path"]
    duration = round((time.perf_counter() - started) * 1000, 3)
    handler = json_stream(log)
    if handler is None:
        log.info(
            f"{method} {path} {status}",
            extra={
                "log": "access",
                "request_id": request_id,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": duration,
                "client": host,
            },
        )
        return
    # `json_line`'s text for the same record, put together without a dict (a line is written
    # for every request): tests/test_logs.py holds the two equal. The method and the path go
    # in twice, as JSON strings' text without their quotes (a path may hold anything).
    m, p = cached_ascii_json(method)[1:-1], cached_ascii_json(path)[1:-1]
    write_json_line(
        handler,
        f'{{"time":"{now_iso()}","level":"info","logger":"{log.name}",'
        f'"message":"{m} {p} {status}","log":"access","request_id":"{request_id}",'
        f'"method":"{m}","path":"{p}","status":{status},"duration_ms":{duration},'
        f'"client":{cached_ascii_json(host)}}}',
    )


class RequestLog:
    """Give every request an id (the caller's X-Request-ID if sane), echo it, log the outcome."""

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        id_header = (b"x-request-id", rid.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                headers.append(id_header)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            errors.exception(
                "unhandled error on %s %s",
                scope["method"],
                scope["path"],
                extra={"request_id": rid},
            )
            status = 500
            await send_internal_error(send, rid)
        finally:
            if self.access_log:
                access_line(scope, rid, status, started)
