"""uvicorn's HTTP protocol (httptools), holding requests to the limits an ASGI app cannot see.

An app sees a request once its head (the request line and header fields) has arrived whole:
too late to refuse a head of 64 MB, or one dripped a byte a second. `LimitedHttpToolsProtocol`
is uvicorn's own protocol with these checks added, as `serve` runs it (`ServerConfig` carries
the `RequestLimits` to every connection and, pickled, to every worker process):

- the head's size, counted as its bytes arrive: past `max_header_bytes` the request is
  refused (431; a URL that long, 414), so no more than the limit and one read (256 KiB) is
  ever held for it;
- the header timeout: a head must arrive whole within `header_timeout` of its first byte (of
  the connection, for a new one), or the connection is dropped (408 if a request had begun);
  one timer per process checks every connection (`_sweep`), so a request costs none;
- the connection count (uvicorn's `limit_concurrency`, as `max_connections`): a request on a
  connection beyond it is refused (503);
- malformed requests get the registry's JSON 400 instead of uvicorn's plain text;
- an answer's head and its body go out in one write (`_OneWrite`): one system call and, for
  a token answer, one TCP segment instead of two.

Every refusal is an answer in the registry's JSON format with `Connection: close`, followed by
a lingering close: the gateway stops sending, reads and drops what the client still sends for
up to `LINGER` seconds, then closes, so that the client reads the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from time import monotonic
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from gateway.limits import RequestLimits, refusal

log = logging.getLogger("registry_gateway")

LINGER = 2.0  # seconds to keep reading (and dropping) after a refusal, before closing


class ServerConfig(uvicorn.Config):
    """uvicorn's Config with the gateway's request limits, for `LimitedHttpToolsProtocol`."""

    def __init__(self, app: Any, *, limits: RequestLimits, **options: Any) -> None:
        super().__init__(app, **options)
        self.limits = limits


class _Refused(Exception):
    """Raised in a parser callback to stop parsing: the request is refused with `status`."""

    def __init__(self, status: int, setting: str, limit: float) -> None:
        super().__init__(status)
        self.status = status
        self.body = refusal(status, setting, limit)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head size, header timeout and connection
    limits, and refusals in the registry's JSON format (see the module's docstring)."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = config.limits if isinstance(config, ServerConfig) else RequestLimits()
        self.max_head = limits.head
        self.header_timeout = limits.header_timeout
        self.max_connections = limits.connections
        self.limit_concurrency = None  # uvicorn's check answers in plain text: ours in JSON
        self._in_head = False  # between a head's first byte and its end
        self._head_started = 0.0  # monotonic() at that first byte (of the connection, at first)
        self._head_bytes = 0  # bytes of the head, from the read after the one it began in
        self._begin_read = 0  # the size of the read it began in (some of which was the head)
        self._read = 0  # the size of the read being parsed
        self._closing = False  # refused: what still arrives is dropped

    # -- the connection ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True  # the first head starts with the connection
        self._head_started = monotonic()
        if self.header_timeout > 0:
            _watch(self.server_state, self.loop, self.header_timeout)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head's bytes counted and refusals in JSON."""
        if self._closing:
            return
        self._unset_keepalive_if_required()
        self._read = size = len(data)
        if self._in_head:
            self._head_bytes += size
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.status, refused.body)
            else:
                self._refuse(400, refusal(400))
            return
        if self._in_head and self._head_bytes > self.max_head:
            # Still incomplete, and already past the limit: read no further. (A URL that
            # long was refused by `on_url` as it arrived.)
            self._refuse(431, refusal(431, "max_header_bytes", self.max_head))

    # -- parser callbacks ----------------------------------------------------------------

    # Called for every request: uvicorn's methods are called directly (not through super())
    # and on_url is inlined, each a fraction of a microsecond saved.

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        if not self._in_head:  # the next request on this connection: its head starts now
            self._in_head = True
            self._head_started = monotonic()
            self._head_bytes = 0
            self._begin_read = self._read

    def on_url(self, url: bytes) -> None:
        self.url += url  # uvicorn's on_url
        if len(self.url) > self.max_head:
            raise _Refused(414, "max_header_bytes", self.max_head)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if (
            self._head_bytes + self._begin_read > self.max_head
            and self._head_size() > self.max_head
        ):
            raise _Refused(431, "max_header_bytes", self.max_head)
        if len(self.connections) > self.max_connections or len(self.tasks) >= self.max_connections:
            raise _Refused(503, "max_connections", self.max_connections)
        HttpToolsProtocol.on_headers_complete(self)
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            cycle.transport = _OneWrite(self.transport, cycle)  # type: ignore[assignment]

    def _head_size(self) -> int:
        """The head's size as `METHOD URL HTTP/1.1` and `name: value` lines, CRLF-ended."""
        size = len(self.url) + 20 + 2
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        return size

    # -- refusals ------------------------------------------------------------------------

    def check_head_deadline(self, now: float) -> None:
        """Drop the connection if its head has taken longer than the header timeout."""
        if not self._in_head or self._closing or now - self._head_started <= self.header_timeout:
            return
        if self._head_bytes or self._begin_read:  # a request had begun: tell it why
            self._refuse(408, refusal(408, "header_timeout", self.header_timeout))
        else:  # a connection that never sent a byte
            self._closing = True
            self.transport.close()

    def _refuse(self, status: int, body: bytes) -> None:
        """Answer `status` with `body` (unless another answer is being sent), then close."""
        self._closing = True
        self._in_head = False
        transport = self.transport
        if transport.is_closing():
            return
        client = self.client[0] if self.client else None
        log.info(
            "refused a request before it reached the app: %d",
            status,
            extra={"event": "request_refused", "status": status, "client": client},
        )
        if self.cycle is not None and not self.cycle.response_complete:
            transport.close()  # a pipelined request while another answer is on its way
            return
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(
            b"content-type: application/json\r\ncache-control: no-store\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        transport.write(b"".join(head) + body)
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER, transport.close)


class _OneWrite:
    """A request's view of its connection's transport: the head of an answer with a
    Content-Length of at most `MERGE` bytes is held until the body's first write, and the two
    go out in one `write`. Anything else is written at once: a 100 Continue, a streaming
    (chunked) answer, a large body, the head of an answer to HEAD (which has no body). A held
    head goes out before the connection closes.

    uvicorn writes a head and its body separately: for a token answer that was two system
    calls and two TCP segments where one will do. (The head of an answer whose body the app
    sends later, after awaiting something, waits for it: the client can do nothing with a
    head alone.)"""

    MERGE = 65536

    __slots__ = ("_cycle", "_head", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head = True  # the answer's head is still to come
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:  # the body after a held head: no longer than its Content-Length
            self._held = None
            self._transport.write(held + data)  # (uvicorn refuses a longer one before writing)
            return
        if self._head and self._cycle.response_started:  # the head (uvicorn has read it)
            self._head = False
            cycle = self._cycle
            if (
                cycle.chunked_encoding is False
                and cycle.expected_content_length <= self.MERGE
                and cycle.scope["method"] != "HEAD"  # an answer to HEAD writes no body
            ):
                self._held = bytes(data)
                return
        self._transport.write(data)

    def close(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# The server states whose connections a sweep already watches (one sweep per server).
_WATCHED: weakref.WeakSet[ServerState] = weakref.WeakSet()


def _watch(state: ServerState, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
    """Start the sweep that enforces the header timeout on `state`'s connections, once."""
    if state in _WATCHED:
        return
    _WATCHED.add(state)
    interval = min(1.0, timeout / 4)

    def sweep() -> None:
        now = monotonic()
        for connection in list(state.connections):
            if isinstance(connection, LimitedHttpToolsProtocol):
                connection.check_head_deadline(now)
        loop.call_later(interval, sweep)

    loop.call_later(interval, sweep)
