"""Request limits: what one request may hold, and the ASGI layer that holds requests to it.

The limits are the operator's (`max_*_bytes`, `max_headers`, `header_timeout`,
`max_connections`; docs/configuration.md, "Limits"). Two parts enforce them:

- `Limits`, an ASGI layer inside `RequestLog` on every route: too many header fields (431),
  a query too long (414), a body too large (413: at once for a `Content-Length` over the
  limit, as it arrives for a chunked one). It works under any ASGI server.
- `gateway/protocol.py`, uvicorn's HTTP protocol as `serve` runs it: the head's size (the
  request line and headers, counted as the bytes arrive, before anything is buffered past
  the limit), the header timeout and the connection count, none of which an ASGI app can
  see; and malformed requests answered in the registry's JSON format.

On a GET or HEAD (nearly every request: token GETs) the layer costs two comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import Settings
from gateway.responses import BodyTooLarge, error_body, send_json

CLOSE = (b"connection", b"close")


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The limits, in bytes and seconds (`header_timeout` 0: none)."""

    body: int = 1048576
    head: int = 32768
    headers: int = 100
    query: int = 16384
    header_timeout: float = 10.0
    connections: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(
            body=settings.max_body_bytes,
            head=settings.max_header_bytes,
            headers=settings.max_headers,
            query=settings.max_query_bytes,
            header_timeout=settings.header_timeout,
            connections=settings.max_connections,
        )


def refusal(status: int, setting: str | None = None, limit: float = 0) -> bytes:
    """The registry-format body of a refusal, naming the limit's setting if there is one."""
    code, what = REFUSALS[status]
    if setting is None:
        return error_body(code, what)
    return error_body(code, f"{what} (the limit is {limit})", {"setting": setting, "limit": limit})


REFUSALS = {
    400: ("INVALID_REQUEST", "malformed HTTP request"),
    408: ("REQUEST_TIMEOUT", "the request's headers did not arrive in time"),
    413: ("REQUEST_TOO_LARGE", "the request body is too large"),
    414: ("URI_TOO_LONG", "the request URL or its query is too long"),
    431: ("HEADERS_TOO_LARGE", "the request's header fields are too large or too many"),
    503: ("UNAVAILABLE", "too many connections; try again"),
}


class Limits:
    """The ASGI layer: header count, query length and body size of every request."""

    def __init__(self, app: ASGIApp, limits: RequestLimits | None = None) -> None:
        self.app = app
        self.limits = limits = limits or RequestLimits()
        self.max_headers = limits.headers
        self.max_query = limits.query
        self.max_body = limits.body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope["headers"]) > self.max_headers:
            await _refuse(send, 431, "max_headers", self.max_headers)
            return
        if len(scope["query_string"]) > self.max_query:
            await _refuse(send, 414, "max_query_bytes", self.max_query)
            return
        method = scope["method"]
        if method == "GET" or method == "HEAD":  # no body that anything reads
            await self.app(scope, receive, send)
            return
        await self._with_body(scope, receive, send)

    async def _with_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        limit = self.max_body
        if length is not None:
            # The server reads no further than Content-Length: only its value needs checking.
            if not length.isdigit():
                await send_json(send, 400, error_body("INVALID_REQUEST", "bad Content-Length"))
            elif int(length) > limit:
                await _refuse(send, 413, "max_body_bytes", limit)
            else:
                await self.app(scope, receive, send)
            return
        if not chunked:
            await self.app(scope, receive, send)
            return
        # A chunked body: counted as it arrives.
        received = 0
        complete = False

        async def counted() -> Message:
            nonlocal received, complete
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            return message

        started = False

        async def closing(message: Message) -> None:
            # An answer given before the body was read to its end closes the connection:
            # the server would otherwise read what is left, however much that is.
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not complete:
                    message["headers"] = [*message.get("headers", ()), CLOSE]
            await send(message)

        try:
            await self.app(scope, counted, closing)
        except BodyTooLarge:
            if started:
                raise
            await _refuse(send, 413, "max_body_bytes", limit)


async def _refuse(send: Send, status: int, setting: str, limit: int) -> None:
    await send_json(send, status, refusal(status, setting, limit), (CLOSE,))
