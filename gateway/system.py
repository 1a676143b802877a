"""The gateway's system routes: health, readiness, keys, metrics, and the two hooks that
other systems call (a CI asking for a reload, the registry's notifications)."""

from __future__ import annotations

import asyncio
import hmac
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import background, metrics
from gateway.catalog.index import EnvelopeError, Event, read_envelope
from gateway.config import Secret
from gateway.health import health
from gateway.responses import BodyTooLarge, read_body, registry_error
from gateway.services import Services

log = logging.getLogger("registry_gateway.catalog")


def bearer_matches(request: Request, secret: Secret | None) -> bool:
    """Whether the request carries `Authorization: Bearer <secret>` (constant time); never
    when no secret is configured."""
    if not secret:
        return False
    given = request.headers.get("authorization", "").encode()
    return hmac.compare_digest(given, f"Bearer {secret.reveal()}".encode())


class SystemViews:
    """The system routes' endpoints, over one service container."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._updates: set[asyncio.Task[None]] = set()  # repositories being re-read

    async def healthz(self, request: Request) -> Response:
        """Liveness: 200 while a valid policy is in force, even when a newer one was rejected."""
        body = health(self.services)
        return JSONResponse(body, status_code=200 if body["revision"] else 503)

    async def readyz(self, request: Request) -> Response:
        """Readiness: 503 while draining or without a policy; degraded still serves the last good."""
        body = health(self.services)
        ready = bool(body["revision"]) and not self.services.draining.is_set()
        return JSONResponse({"ready": ready, **body}, status_code=200 if ready else 503)

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(self.services.keys.jwks(), headers={"Cache-Control": "max-age=60"})

    async def metrics(self, request: Request) -> Response:
        """The Prometheus text format, every worker's samples added up."""
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

    async def reload(self, request: Request) -> Response:
        """POST /-/reload: a CI webhook asks for an immediate fetch and reload."""
        services = self.services
        secret = services.settings.reload_secret
        if not bearer_matches(request, secret):
            return registry_error(
                401,
                "UNAUTHORIZED",
                "POST /-/reload needs Authorization: Bearer <reload_secret>"
                if secret
                else "reloading by request is off: set reload_secret to enable it",
            )
        try:  # nothing in it is read, but a webhook may send one: within the limit
            await read_body(request.receive, services.settings.max_body_bytes)
        except BodyTooLarge as exc:
            return registry_error(413, "REQUEST_TOO_LARGE", str(exc))
        reloaded = await background.sync(services)
        status = services.source.status()
        return JSONResponse(
            {
                "reloaded": reloaded,
                "revision": status.revision,
                "error": status.last_error,
                "source_error": services.remote.last_error if services.remote else None,
            }
        )

    async def notifications(self, request: Request) -> Response:
        """POST /-/notifications: the registry's events; changed repositories are re-read now.

        A body that is not an envelope (`{"events": [...]}` in JSON) is a 400; in one that
        is, each event that is not well-formed is ignored (a registry retries a refused
        envelope: one bad event must not hold up the others). docs/registry.md has the rules.
        """
        if not bearer_matches(request, self.services.settings.notification_secret):
            return registry_error(
                401,
                "UNAUTHORIZED",
                "notifications need Authorization: Bearer <notification_secret>",
            )
        try:
            body = await read_body(request.receive, self.services.settings.max_body_bytes)
            raw = read_envelope(body)
        except BodyTooLarge as exc:
            return registry_error(413, "REQUEST_TOO_LARGE", str(exc))
        except EnvelopeError as exc:
            return registry_error(400, "INVALID_REQUEST", str(exc))
        events = [event for event in map(Event.read, raw) if event is not None]
        ignored = len(raw) - len(events)
        if ignored:
            log.warning(
                "notifications: %d of %d events are not well-formed registry events; ignored",
                ignored,
                len(raw),
                extra={"event": "notification_ignored"},
            )
        self.services.events.registry_notified(raw)  # webhooks: put on a queue, not sent here
        catalog = self.services.catalog
        if catalog is not None:
            for name in catalog.apply_events(events):
                task = asyncio.create_task(background.update_repository(catalog, name, None))
                self._updates.add(task)
                task.add_done_callback(self._updates.discard)
        return JSONResponse({"accepted": len(events), "ignored": ignored})


def system_routes(services: Services) -> list[BaseRoute]:
    """The system routes for a service container, every one named."""
    views = SystemViews(services)
    return [
        Route("/healthz", views.healthz, name="healthz"),
        Route("/readyz", views.readyz, name="readyz"),
        Route("/.well-known/jwks.json", views.jwks, name="jwks"),
        Route("/metrics", views.metrics, name="metrics"),
        Route("/-/reload", views.reload, methods=["POST"], name="reload"),
        Route("/-/notifications", views.notifications, methods=["POST"], name="notifications"),
    ]
