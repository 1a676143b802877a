"""`GatewayApp`: Starlette as the gateway runs it, with less work on every request.

Three differences from a plain `Starlette`, each a layer over Starlette's own code:

- **No error layer outside the middleware.** `RequestLog` (gateway/middleware.py), the
  outermost middleware, already turns an unexpected error into the registry's JSON 500 with
  the request id, so Starlette's `ServerErrorMiddleware` would only add a call and a `send`
  wrapper to every request.
- **Exception handlers at the cost of a `try`.** Starlette's `ExceptionMiddleware` builds a
  `Request` and wraps `send` on every request, to know whether an answer had started when an
  exception arrives; here the handler is looked up (by Starlette's code) only when an
  exception does arrive, and if the answer had started, sending another fails in the server,
  which closes the connection (RequestLog logs it).
- **Static paths by dictionary.** The router's leading routes without path parameters are
  found by their path in a dict; anything else (a parameter, a mount, a method a route does
  not take, a root path) goes to Starlette's scan in order, as before. The token route comes
  first in `create_app`'s list, so its requests never scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.applications import Starlette
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send


class GatewayApp(Starlette):
    """Starlette with the three differences above; takes Starlette's arguments."""

    def __init__(self, *, routes: Sequence[BaseRoute], **options: Any) -> None:
        super().__init__(routes=routes, **options)
        self.router = _StaticFirstRouter(routes, lifespan=options.get("lifespan"))

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = _Handlers(self.router, handlers=self.exception_handlers)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


class _StaticFirstRouter(Router):
    """Starlette's router, with the leading parameterless routes found by path."""

    def __init__(self, routes: Sequence[BaseRoute], **options: Any) -> None:
        super().__init__(routes, **options)
        self.static: dict[str, Route] = {}
        for route in self.routes:  # only those no earlier route can match first
            if not isinstance(route, Route) or route.param_convertors or not route.methods:
                break
            self.static.setdefault(route.path, route)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            route = self.static.get(scope["path"])
            if route is not None and route.methods and scope["method"] in route.methods:
                # What Router.app and Route.matches put in the scope for a full match.
                scope.setdefault("router", self)
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = dict(scope.get("path_params", {}))
                await route.app(scope, receive, send)
                return
        await super().app(scope, receive, send)


class _Handlers(ExceptionMiddleware):
    """Starlette's exception layer; on the way in, only the handlers are put in the scope."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["starlette.exception_handlers"] = (self._exception_handlers, self._status_handlers)
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            # Starlette's own handling, of the exception that arrived: its handler's answer,
            # or the exception again when no handler takes it.
            handle = wrap_app_handling_exceptions(_raising(exc), Request(scope, receive, send))
            await handle(scope, receive, send)


def _raising(exc: Exception) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise exc

    return app
