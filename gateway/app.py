"""create_app(settings): the gateway's routes, middleware and lifespan, wired in one place."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import __version__, metrics
from gateway.audit import AuditLog
from gateway.auth.endpoint import TokenService, registry_error
from gateway.auth.identity import Authenticator
from gateway.auth.keys import KeyStore
from gateway.auth.tokens import TokenIssuer
from gateway.catalog.index import CatalogIndex, utc_seconds
from gateway.catalog.registry import RegistryClient
from gateway.config import Secret, Settings, load_settings
from gateway.middleware import RequestLog, TokenFront
from gateway.policy.gitsource import GitRemote, GitSyncError
from gateway.policy.source import PolicySource
from ui import ui_routes

log = logging.getLogger("registry_gateway")
CATALOG_RETRY = 5.0  # seconds before reading a registry that failed again

# Set on SIGTERM (see commands.serve): /readyz answers 503 so load balancers stop sending
# new requests while the server finishes what it has.
DRAINING = threading.Event()


class PolicyUnavailable(RuntimeError):
    """No valid policy at start: the gateway will not serve tokens from nothing."""


class Gateway:
    """Everything a request may need, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyStore(settings.data_dir, common_name=settings.issuer)
        self.remote, self.source = policy_source(settings)
        self.source.listeners.append(metrics.policy_loaded)
        self.issuer = TokenIssuer(
            self.keys,
            issuer=settings.issuer,
            service=settings.service,
            ttl=settings.token_ttl,
            refresh_ttl=settings.refresh_ttl,
        )
        self.audit = AuditLog(settings.audit_log)
        self.authenticator = Authenticator.from_settings(settings)
        self.tokens = TokenService(
            settings, self.source, self.issuer, self.authenticator, self.audit
        )
        self.catalog: CatalogIndex | None = None
        if settings.registry_url:
            self.catalog = CatalogIndex(RegistryClient(settings.registry_url, self.issuer))
        self._draining = False
        self._background: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.keys.ensure(self.settings.key_algorithm)
        load_first_policy(self.remote, self.source)
        if self.authenticator.htpasswd is not None:
            self.authenticator.htpasswd.reload()

    # -- keeping the policy current ----------------------------------------------------

    async def sync(self) -> bool:
        """Fetch the remote (if any) and reload when anything changed; True if a reload ran."""
        if self.remote is None:
            return await asyncio.to_thread(self.source.reload)
        try:
            result = await asyncio.to_thread(self.remote.sync)
        except GitSyncError:
            return False  # logged by the remote; the last good revision stays in force
        if result.changed or self.source.engine is None or self.source.status().last_error:
            return await asyncio.to_thread(self.source.reload)
        return False

    async def watch_policy(self) -> None:
        """Reload when the policy directory changes, once a burst of writes has settled."""
        import watchfiles

        directory = self.source.directory
        debounce = max(1, int(self.settings.reload_debounce * 1000))

        def relevant(change: watchfiles.Change, path: str) -> bool:
            return ".git" not in Path(path).parts and not path.endswith(("~", ".swp", ".tmp"))

        async for _ in watchfiles.awatch(
            directory, debounce=debounce, step=50, watch_filter=relevant, recursive=True
        ):
            await asyncio.to_thread(self.source.reload)

    async def watch_htpasswd(self) -> None:
        """Reload the htpasswd file when it changes (editors and `htpasswd` replace it whole)."""
        import watchfiles

        htpasswd = self.authenticator.htpasswd
        assert htpasswd is not None
        path = htpasswd.path.absolute()
        debounce = max(1, int(self.settings.reload_debounce * 1000))

        def relevant(change: watchfiles.Change, changed: str) -> bool:
            return Path(changed).name == path.name

        try:
            async for _ in watchfiles.awatch(
                path.parent, debounce=debounce, step=50, watch_filter=relevant, recursive=False
            ):
                await asyncio.to_thread(htpasswd.reload)
        except FileNotFoundError:
            log.error(
                "cannot watch %s: its directory does not exist; htpasswd changes need a restart",
                path,
                extra={"event": "htpasswd_unwatched"},
            )

    async def poll_remote(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            await self.sync()

    async def refresh_catalog(self) -> None:
        """Build the catalog index, then re-read the registry on an interval."""
        assert self.catalog is not None
        while True:
            refreshed = await self.catalog.refresh()
            if refreshed:
                metrics.CATALOG_REFRESH.set(self.catalog.refresh_seconds or 0)
            self.count_catalog()
            # A registry that is down (or not up yet) is tried again soon, not after a full period.
            interval = self.settings.catalog_refresh
            await asyncio.sleep(interval if refreshed else min(interval, CATALOG_RETRY))

    async def _update(self, name: str, pushed: str | None) -> None:
        assert self.catalog is not None
        await self.catalog.update_repository(name, pushed_at=pushed)
        self.count_catalog()

    def count_catalog(self) -> None:
        if self.catalog is not None:
            status = self.catalog.status()
            metrics.CATALOG_SIZE.labels("repositories").set(status.repositories)
            metrics.CATALOG_SIZE.labels("tags").set(status.tags)

    async def notifications(self, request: Request) -> Response:
        """POST /-/notifications: the registry's events; changed repositories are re-read now."""
        if not bearer_matches(request, self.settings.notification_secret):
            return registry_error(
                401,
                "UNAUTHORIZED",
                "notifications need Authorization: Bearer <notification_secret>",
            )
        try:
            envelope = await request.json()
            events = [e for e in envelope.get("events") or [] if isinstance(e, dict)]
        except (ValueError, AttributeError):
            return registry_error(
                400, "INVALID_REQUEST", "expected a registry notification envelope"
            )
        if self.catalog is not None:
            for name in self.catalog.apply_events(events):
                stamps = [
                    str(e.get("timestamp", ""))
                    for e in events
                    if (e.get("target") or {}).get("repository") == name
                ]
                pushed = utc_seconds(max(stamps, default=None))
                task = asyncio.create_task(self._update(name, pushed))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        return JSONResponse({"accepted": len(events)})

    async def reload_hook(self, request: Request) -> Response:
        """POST /-/reload: a CI webhook asks for an immediate fetch and reload."""
        secret = self.settings.reload_secret
        if not bearer_matches(request, secret):
            return registry_error(
                401,
                "UNAUTHORIZED",
                "POST /-/reload needs Authorization: Bearer <reload_secret>"
                if secret
                else "reloading by request is off: set reload_secret to enable it",
            )
        reloaded = await self.sync()
        status = self.source.status()
        return JSONResponse(
            {
                "reloaded": reloaded,
                "revision": status.revision,
                "error": status.last_error,
                "source_error": self.remote.last_error if self.remote else None,
            }
        )

    # -- system routes -----------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining or DRAINING.is_set()

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value

    def health(self) -> dict[str, object]:
        status = self.source.status()
        source_error = self.remote.last_error if self.remote else None
        state = status.state
        if state == "ok" and source_error:
            state = "degraded"
        return {
            "status": "draining" if self.draining else state,
            "revision": status.revision,
            "loaded_at": self.source.loaded_at_iso(),
            "error": status.last_error,
            "source": self.remote.describe()
            if self.remote
            else {"kind": "directory", "path": str(self.source.directory)},
            "reloads": status.reloads,
            "failed_reloads": status.failures,
            "version": __version__,
            **self.sign_in_status(),
        }

    def sign_in_status(self) -> dict[str, object]:
        """The directory backends, when configured (informational: never unhealthy)."""
        backends: dict[str, object] = {}
        htpasswd, ldap = self.authenticator.htpasswd, self.authenticator.ldap
        if htpasswd is not None:
            backends["htpasswd"] = {
                "path": str(htpasswd.path),
                "users": len(htpasswd.entries.hashes),
                "revision": htpasswd.entries.revision,
                "error": htpasswd.last_error,
            }
        if ldap is not None:
            backends["ldap"] = {"url": ldap.describe(), "down": ldap.down}
        return {"sign_in": backends} if backends else {}

    async def healthz(self, request: Request) -> Response:
        """Liveness: 200 while a valid policy is in force, even when a newer one was rejected."""
        body = self.health()
        return JSONResponse(body, status_code=200 if body["revision"] else 503)

    async def readyz(self, request: Request) -> Response:
        """Readiness: 503 while draining or without a policy; degraded still serves the last good."""
        body = self.health()
        ready = bool(body["revision"]) and not self.draining
        return JSONResponse({"ready": ready, **body}, status_code=200 if ready else 503)

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


def bearer_matches(request: Request, secret: Secret | None) -> bool:
    """Whether the request carries `Authorization: Bearer <secret>` (constant time); never
    when no secret is configured."""
    if not secret:
        return False
    given = request.headers.get("authorization", "").encode()
    return hmac.compare_digest(given, f"Bearer {secret.reveal()}".encode())


def policy_source(settings: Settings) -> tuple[GitRemote | None, PolicySource]:
    """The policy's source: a directory, or a directory inside a clone of a git remote."""
    if not settings.policy_git:
        return None, PolicySource(settings.policies)
    remote = GitRemote(
        settings.policy_git,
        settings.policy_branch,
        settings.data_dir / "policy-git",
        token=settings.policy_git_token.reveal() if settings.policy_git_token else None,
        ssh_key=settings.policy_git_ssh_key,
    )
    return remote, PolicySource(remote.directory / settings.policy_path)


def load_first_policy(remote: GitRemote | None, source: PolicySource) -> None:
    """Fetch and load the first policy; PolicyUnavailable when there is none to serve."""
    if remote is not None:
        try:
            remote.sync()
        except GitSyncError as exc:
            if not (remote.directory / ".git").is_dir():
                raise PolicyUnavailable(str(exc)) from None
            # A remote that is down at start: serve the last checkout we have, if it is valid.
    if not source.reload():
        raise PolicyUnavailable(
            f"no valid policy in {source.directory}: {source.status().last_error}"
        )


def create_app(settings: Settings | None = None) -> TokenFront:
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
        if gateway.remote is not None:
            tasks.append(asyncio.create_task(gateway.poll_remote()))
        elif settings.watch:
            tasks.append(asyncio.create_task(gateway.watch_policy()))
        if gateway.authenticator.htpasswd is not None and settings.watch:
            tasks.append(asyncio.create_task(gateway.watch_htpasswd()))
        if gateway.catalog is not None:
            tasks.append(asyncio.create_task(gateway.refresh_catalog()))
        # Everything built so far lives as long as the server: out of every later collection,
        # so that a full collection walks only what requests leave behind (the caches).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gateway.draining = True
            for task in tasks:
                task.cancel()
            if gateway.catalog is not None:
                await gateway.catalog.client.close()
            gateway.audit.close()

    routes = [
        # GET /auth/token is answered by TokenFront, ahead of this router (gateway/middleware.py).
        Route("/auth/token", gateway.tokens.post, methods=["POST"], name="token_post"),
        Route("/healthz", gateway.healthz, name="healthz"),
        Route("/readyz", gateway.readyz, name="readyz"),
        Route("/.well-known/jwks.json", gateway.jwks, name="jwks"),
        Route("/-/reload", gateway.reload_hook, methods=["POST"], name="reload"),
        Route("/metrics", metrics.endpoint, name="metrics"),
        Route("/-/notifications", gateway.notifications, methods=["POST"], name="notifications"),
    ]
    routes += ui_routes(gateway)
    middleware = [Middleware(RequestLog, access_log=settings.access_log)]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.gateway = gateway
    return TokenFront(app, gateway.tokens, access_log=settings.access_log)
