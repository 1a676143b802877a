"""Answers in the registry's JSON format, for Starlette routes and raw ASGI endpoints alike,
and the one way to read a request body (with a limit).

The registry's clients read errors as `{"errors": [{"code", "message", "detail"}]}` (the
distribution spec's error format), on the token endpoint as on the registry itself.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Receive, Send

JSON_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
)


def error_body(code: str, message: str, detail: Any = None) -> bytes:
    """The registry's error body for one error."""
    body = {"errors": [{"code": code, "message": message, "detail": detail}]}
    return json.dumps(body, separators=(",", ":")).encode()


def registry_error(
    status: int,
    code: str,
    message: str,
    *,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in the registry's format, as a Starlette response."""
    body = {"errors": [{"code": code, "message": message, "detail": detail}]}
    return JSONResponse(body, status_code=status, headers=headers)


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """A JSON answer sent as raw ASGI messages: what JSONResponse sends, without building one."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *JSON_HEADERS, *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_internal_error(send: Send, request_id: str) -> None:
    """A registry-format 500 that gives nothing away, if the answer has not started yet."""
    body = error_body("INTERNAL", "internal error; the server log has the details")
    # RuntimeError: the response had already started; the server closes the connection.
    with contextlib.suppress(RuntimeError):
        await send_json(send, 500, body, ((b"x-request-id", request_id.encode()),))


class BodyTooLarge(Exception):
    """A request body longer than its route (or the gateway's `max_body_bytes`) takes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


async def read_body(receive: Receive, limit: int) -> bytes:
    """The request body, chunked or not; BodyTooLarge as soon as it passes `limit` bytes
    (what was read is dropped, the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
