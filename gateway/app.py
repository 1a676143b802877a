"""create_app(settings): the composition root. The services, the routes, the middleware and
the lifespan are wired here, and nothing else happens here."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import background, collector
from gateway.asgi import GatewayApp
from gateway.auth.endpoint import TokenEndpoint
from gateway.config import Settings, load_settings
from gateway.limits import Limits, RequestLimits
from gateway.middleware import RequestLog
from gateway.responses import registry_error
from gateway.services import Services
from gateway.system import system_routes
from ui import ui_routes

log = logging.getLogger("registry_gateway")


def build_services(settings: Settings) -> Services:
    """The service container as a server runs it: each policy is built with the cyclic
    garbage collector paused and frozen out of every later collection once built, since it
    lives until the next reload (a process-wide decision, made here rather than in a
    library: `collector.building`)."""
    return Services(settings, building=collector.building)


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> Starlette:
    """The ASGI application for the given settings (default: from the environment), or for a
    service container that a caller built (and perhaps started) already."""
    if services is None:
        services = build_services(settings or load_settings())
    settings = services.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services.start()
        log.info(
            "serving policy revision %s for service %s",
            services.source.status().revision,
            settings.service,
            extra={"event": "started", "listen": settings.listen},
        )
        tasks = background.start(services)
        services.events.start()
        # Everything built so far lives as long as the server: out of every later collection,
        # so that a full collection walks only what requests leave behind (the caches).
        collector.freeze_survivors()
        try:
            yield
        finally:
            services.draining.set()
            for task in tasks:
                task.cancel()
            await services.events.stop()
            if services.catalog is not None:
                await services.catalog.client.close()
            services.audit.close()

    routes: list[BaseRoute] = [
        # First: the route that carries nearly all the traffic is matched first.
        Route("/auth/token", TokenEndpoint(services.tokens), methods=["GET", "POST"], name="token"),
        *system_routes(services),
        *ui_routes(services),
    ]
    app = GatewayApp(
        routes=routes,
        middleware=[
            Middleware(RequestLog, access_log=settings.access_log),
            Middleware(Limits, limits=RequestLimits.from_settings(settings)),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.services = services
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "NOT_FOUND", 405: "UNSUPPORTED"}
    return registry_error(exc.status_code, codes.get(exc.status_code, "ERROR"), str(exc.detail))
