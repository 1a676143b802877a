"""Request ids and the access log: one JSON line per request, sharing its id with the audit.

`TokenFront` answers `GET /auth/token` ahead of the rest of the stack (the registry's clients
ask for a token before nearly every push and pull, so it is the one route where the
framework's per-request layers show); `RequestLog` does the same bookkeeping for every other
route.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.logs import info_fast

if TYPE_CHECKING:
    from gateway.auth.endpoint import TokenService

log = logging.getLogger("registry_gateway.access")
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
TOKEN_PATH = "/auth/token"


def request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when it is sane, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _VALID_ID.fullmatch(text):
                return text
            break
    # An id to find lines by, not a secret: no system call for it on every request.
    return f"{random.getrandbits(128):032x}"


def access_line(scope: Scope, request_id: str, status: int, started: float) -> None:
    client = scope.get("client")
    method, path = scope["method"], scope["path"]
    info_fast(
        log,
        f"{method} {path} {status}",
        {
            "log": "access",
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "client": client[0] if client else None,
        },
    )


async def internal_error(scope: Scope, send: Send, rid: str) -> None:
    """A registry-format 500, if the response has not started yet."""
    from gateway.auth.endpoint import disconnected, registry_error

    response = registry_error(
        500,
        "INTERNAL",
        "internal error; the server log has the details",
        headers={"X-Request-ID": rid},
    )
    # RuntimeError: the response had already started; uvicorn closes the connection.
    with contextlib.suppress(RuntimeError):
        await response(scope, disconnected, send)


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
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                access_line(scope, rid, status, started)


class TokenFront:
    """`GET /auth/token` straight to the token service; everything else to the Starlette app.

    The outermost layer: Starlette's own entry and error middleware would each add a call per
    message to the route that carries nearly all the traffic. An unexpected error here is
    logged and answered like Starlette's (a JSON 500 in the registry's format, no traceback).
    """

    def __init__(self, app: Starlette, tokens: TokenService, access_log: bool = True) -> None:
        self.app = app
        self.tokens = tokens
        self.access_log = access_log

    def __getattr__(self, name: str) -> Any:
        # state, routes, url_path_for ...: the Starlette app's, for callers that hold this one.
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            root = scope.get("root_path")
            if root and path.startswith(root):
                path = path[len(root) :]
            if path == TOKEN_PATH:
                started = time.perf_counter()
                rid = request_id(scope)
                status = 500
                try:
                    status = await self.tokens.handle_get(scope, send, rid, started)
                except Exception:
                    logging.getLogger("registry_gateway").exception(
                        "unhandled error on GET %s", TOKEN_PATH, extra={"request_id": rid}
                    )
                    await internal_error(scope, send, rid)
                finally:
                    if self.access_log:
                        access_line(scope, rid, status, started)
                return
        await self.app(scope, receive, send)
