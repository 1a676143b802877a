"""create_app(settings): the gateway's routes, middleware and lifespan, wired in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import __version__
from gateway.audit import AuditLog
from gateway.auth.endpoint import TokenService, registry_error
from gateway.auth.identity import Authenticator
from gateway.auth.keys import KeyStore
from gateway.auth.tokens import TokenIssuer
from gateway.config import Settings, load_settings
from gateway.policy.source import PolicySource

log = logging.getLogger("registry_gateway")


class PolicyUnavailable(RuntimeError):
    """No valid policy at start: the gateway will not serve tokens from nothing."""


class Gateway:
    """Everything a request may need, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyStore(settings.data_dir, common_name=settings.issuer)
        self.source = PolicySource(settings.policies)
        self.issuer = TokenIssuer(
            self.keys,
            issuer=settings.issuer,
            service=settings.service,
            ttl=settings.token_ttl,
            refresh_ttl=settings.refresh_ttl,
        )
        self.audit = AuditLog(settings.audit_log)
        self.authenticator = Authenticator()
        self.tokens = TokenService(
            settings, self.source, self.issuer, self.authenticator, self.audit
        )
        self.draining = False

    def start(self) -> None:
        self.keys.ensure(self.settings.key_algorithm)
        if not self.source.reload():
            raise PolicyUnavailable(
                f"no valid policy in {self.settings.policies}: {self.source.status().last_error}"
            )

    # -- system routes -----------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        """Liveness, with the policy's state: 200 while a valid policy is loaded."""
        status = self.source.status()
        body = {
            "status": status.state,
            "revision": status.revision,
            "loaded_at": self.source.loaded_at_iso(),
            "error": status.last_error,
            "version": __version__,
        }
        return JSONResponse(body, status_code=200 if status.revision else 503)

    async def readyz(self, request: Request) -> Response:
        """Readiness: 503 while draining, without a policy, or with a rejected newer policy."""
        status = self.source.status()
        ready = bool(status.revision) and not self.draining and not status.last_error
        body = {
            "ready": ready,
            "status": "draining" if self.draining else status.state,
            "revision": status.revision,
            "error": status.last_error,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def watch_keys(self, interval: float = 2.0) -> None:
        """Pick up keys rotated by another process (`keys rotate`, another replica)."""
        while True:
            await asyncio.sleep(interval)
            try:
                before = self.keys.current().kid
                await asyncio.to_thread(self.keys.reload)
                after = self.keys.current().kid
                if after != before:
                    log.info(
                        "now signing with key %s",
                        after,
                        extra={"event": "key_rotated", "kid": after},
                    )
            except Exception:
                log.exception("re-reading signing keys failed; still signing with the previous key")

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(self.keys.jwks(), headers={"Cache-Control": "max-age=60"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "NOT_FOUND", 405: "UNSUPPORTED"}
    return registry_error(exc.status_code, codes.get(exc.status_code, "ERROR"), str(exc.detail))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return registry_error(500, "INTERNAL", "internal error; the server log has the details")


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI application for the given settings (default: from the environment)."""
    settings = settings or load_settings()
    gateway = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway.start()
        log.info(
            "serving policy revision %s for service %s",
            gateway.source.status().revision,
            settings.service,
            extra={"event": "started", "listen": settings.listen},
        )
        tasks = [asyncio.create_task(gateway.watch_keys())]
        try:
            yield
        finally:
            gateway.draining = True
            for task in tasks:
                task.cancel()
            gateway.audit.close()

    routes = [
        Route("/auth/token", gateway.tokens.get, methods=["GET"], name="token"),
        Route("/auth/token", gateway.tokens.post, methods=["POST"], name="token_post"),
        Route("/healthz", gateway.healthz, name="healthz"),
        Route("/readyz", gateway.readyz, name="readyz"),
        Route("/.well-known/jwks.json", gateway.jwks, name="jwks"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.gateway = gateway
    return app
