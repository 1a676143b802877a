"""GET and POST /auth/token over HTTP: read the request, ask the token service, send the answer.

One raw ASGI endpoint for the router's `token` route: the registry's clients ask for a token
before nearly every push and pull, and a plain ASGI callable skips the per-request objects
(Request, Response) that the framework would build around a function endpoint. The request
id and access log come from `gateway.middleware.RequestLog`, as for every route.
"""

from __future__ import annotations

import time

from starlette.types import Receive, Scope, Send

from gateway.auth.request import (
    MAX_FORM,
    BadRequest,
    TokenRequest,
    from_form,
    from_query,
)
from gateway.auth.service import TokenService
from gateway.responses import BodyTooLarge, error_body, read_body, send_json

FORM_TYPE = b"application/x-www-form-urlencoded"


class TokenEndpoint:
    """`GET /auth/token` (Docker token auth) and `POST /auth/token` (the OAuth2 form)."""

    def __init__(self, service: TokenService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method = scope["method"]
        if method == "GET":
            request = self._get(scope, started)
        elif method == "POST":
            request = await self._post(scope, receive, started)
        else:  # HEAD, which the router lets through with GET
            body = error_body("UNSUPPORTED", "/auth/token answers GET and POST")
            await send_json(send, 405, body, ((b"allow", b"GET, POST"),))
            return
        answer = await self.service.answer(request)
        await send_json(send, answer.status, answer.body(time.time()), answer.headers)

    @staticmethod
    def _get(scope: Scope, started: float) -> TokenRequest:
        authorization = agent = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"user-agent":
                agent = value
        client = scope.get("client")
        return from_query(
            scope["query_string"],
            authorization,
            request_id=scope["state"]["request_id"],
            client=client[0] if client else None,
            user_agent=agent.decode("latin-1")[:200] if agent else "",
            started=started,
        )

    @staticmethod
    async def _post(scope: Scope, receive: Receive, started: float) -> TokenRequest:
        agent = content_type = length = None
        for name, value in scope["headers"]:
            if name == b"user-agent":
                agent = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
        client = scope.get("client")
        request_id: str = scope["state"]["request_id"]
        host = client[0] if client else None
        user_agent = agent.decode("latin-1")[:200] if agent else ""
        try:
            if length is not None and (not length.isdigit() or int(length) > MAX_FORM):
                raise _too_large()
            if not (content_type or b"").startswith(FORM_TYPE):
                raise BadRequest(
                    "UNSUPPORTED",
                    "POST /auth/token takes an application/x-www-form-urlencoded form",
                )
            body = await read_body(receive, MAX_FORM)
        except BodyTooLarge:
            problem = _too_large()
            return TokenRequest("POST", request_id, host, user_agent, started, problem=problem)
        except BadRequest as exc:
            return TokenRequest("POST", request_id, host, user_agent, started, problem=exc)
        return from_form(
            body, request_id=request_id, client=host, user_agent=user_agent, started=started
        )


def _too_large() -> BadRequest:
    return BadRequest("REQUEST_TOO_LARGE", f"the form is larger than {MAX_FORM} bytes", 413)
