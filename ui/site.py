"""The UI's request cycle: who is viewing, HTML or JSON, and the answer's common parts.

A page is a view function `view(site, request, viewer) -> Response` wrapped by `Site.page`,
which resolves the viewer (session cookie, or HTTP Basic for JSON), enforces sign-in or admin
where a page needs it, and adds the cookie, timing and security headers.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gateway import metrics
from gateway.auth.basic import basic_credentials
from gateway.auth.identity import ANONYMOUS, AuthenticationFailed, Identity
from gateway.health import health
from gateway.policy.engine import Engine
from gateway.policy.model import REPOSITORY_ACTIONS, Subject
from gateway.responses import BodyTooLarge
from gateway.services import Services
from ui.session import (
    COOKIE,
    Revocations,
    Session,
    SessionCodec,
    derive_secret,
    revocations_for,
    still_valid,
)
from ui.templating import make_templates
from ui.visibility import Summaries, VisibilityCache, VisibleCatalog

errors = logging.getLogger("registry_gateway")

T = TypeVar("T")
View = Callable[["Site", Request, "Viewer"], Awaitable[Response]]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "private, no-cache",
    "Vary": "Accept, Cookie, Authorization",
}
NOT_FOUND = (
    "Nothing here, or nothing you may see. Names are case-sensitive; signing in may show more."
)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking, decided by which policy engine, signed in how."""

    subject: Subject
    engine: Engine
    method: str  # anonymous | session | basic
    session: Session | None = None
    # A personal access token's cap, as at the token endpoint: what the viewer may do is
    # what the policy grants and the token allows (None: no cap).
    actions: frozenset[str] | None = None

    @property
    def signed_in(self) -> bool:
        return self.subject.kind != "anonymous"

    @property
    def admin(self) -> bool:
        """An admin of the policy, unless a token caps them below every repository action
        (as the token endpoint grants `*` only to a token that allows them all)."""
        capped = self.actions is not None and not self.actions.issuperset(REPOSITORY_ACTIONS)
        oidc_admin = self.session is not None and self.session.oidc_admin  # oidc_admin_group
        return not capped and (self.engine.is_admin(self.subject) or oidc_admin)

    def rights(self, repository: str) -> dict[str, bool]:
        found = self.engine.repository_rights(self.subject, repository)
        cap = self.actions
        return {a: found[a][0] and (cap is None or a in cap) for a in REPOSITORY_ACTIONS}

    def data(self) -> dict[str, Any]:
        return {
            "subject": str(self.subject),
            "name": self.subject.name or None,
            "signed_in": self.signed_in,
            "admin": self.admin,
            "oidc": self.session is not None and self.session.via == "oidc",
        }


def wants_json(request: Request) -> bool:
    """`?format=json`, or an Accept header that asks for JSON rather than HTML."""
    fmt = request.query_params.get("format")
    if fmt is not None:
        return fmt == "json"
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def local_path(target: str | None, default: str = "/") -> str:
    """`target` if it is a path on this site (never another host), else `default`."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Site:
    """Everything the UI's pages share: the service container, templates, caches and the session codec."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.templates = make_templates()
        self.visibility = VisibilityCache()
        self.summaries = Summaries()
        self.access: OrderedDict[tuple[Any, str], dict[str, Any]] = OrderedDict()  # views.policy
        self._codec: SessionCodec | None = None
        self._revocations: Revocations | None = None

    # -- sessions and viewers ------------------------------------------------------------

    @property
    def codec(self) -> SessionCodec:
        """Made on first use: the signing keys exist only once the gateway has started."""
        if self._codec is None:
            secret = self.settings.session_secret
            key = secret.reveal().encode() if secret else derive_secret(self.services.keys)
            secure = self.settings.public_url.startswith("https://")
            self._codec = SessionCodec(key, secure=secure, service=self.settings.service)
        return self._codec

    @property
    def revocations(self) -> Revocations:
        """The signed-out session ids: in Redis with `redis_url`, else in this process."""
        if self._revocations is None:
            self._revocations = revocations_for(self.settings)
        return self._revocations

    async def viewer(self, request: Request, engine: Engine, json: bool) -> Viewer:
        """The viewer of a request; AuthenticationFailed for bad Basic credentials."""
        header = request.headers.get("authorization", "")
        if json and header[:6].lower() == "basic ":
            identity = await self._basic(request, engine, header[6:])
            return Viewer(identity.subject, engine, "basic", actions=identity.actions)
        session = self.codec.loads(request.cookies.get(COOKIE))
        request.state.ui_session = session
        if session is None:
            return Viewer(Subject("anonymous"), engine, "anonymous")
        if session.signed_in and (
            not still_valid(engine, session.subject, session.credential, session.via)
            or (session.sid is not None and await self.revocations.revoked(session.sid))
        ):
            # Removed from the policy, the password changed, or signed out (on any replica,
            # with Redis): signed out from now on.
            request.state.ui_session_cleared = True
            request.state.ui_session = None
            return Viewer(Subject("anonymous"), engine, "anonymous")
        method = "session" if session.signed_in else "anonymous"
        return Viewer(
            session.subject,
            engine,
            method,
            session,
            token_cap(engine, session.subject, session.via),
        )

    async def sign_in(
        self, request: Request, engine: Engine, username: str, password: str
    ) -> Identity:
        """Check credentials as the token endpoint does (slow hashes off the event loop)."""
        client = request.client.host if request.client else None
        return await self.services.authenticator.password(engine, username, password, client=client)

    async def _basic(self, request: Request, engine: Engine, value: str) -> Identity:
        """HTTP Basic on JSON requests: the Authenticator's verification cache keeps a
        script's repeated requests from paying a slow hash each time."""
        parsed = basic_credentials(value)
        if parsed is None:  # `Basic Og==` (empty name and password): no credentials
            return ANONYMOUS
        username, password = parsed
        return await self.sign_in(request, engine, username, password)

    # -- the request cycle ---------------------------------------------------------------

    def page(
        self, view: View, *, signed_in: bool = False, admin: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """A Starlette endpoint for a view; `signed_in`/`admin` pages refuse other viewers."""

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            engine = self.services.source.engine
            assert engine is not None  # the gateway does not start without a policy
            json = wants_json(request)
            try:
                viewer = await self.viewer(request, engine, json)
            except AuthenticationFailed as exc:
                response: Response = self.unauthorized(exc)
            else:
                if (signed_in or admin) and not viewer.signed_in:
                    response = self.sign_in_first(request, json)
                elif admin and not viewer.admin:
                    response = self.error(
                        request, viewer, 403, "forbidden", "Only admins may use this page."
                    )
                else:
                    response = await self._view(view, request, viewer)
            self._finish(request, response, started)
            return response

        endpoint.__name__ = view.__name__
        endpoint.__doc__ = view.__doc__
        return endpoint

    async def _view(self, view: View, request: Request, viewer: Viewer) -> Response:
        """The view's answer; a bug in it is logged and shown as an HTML (or JSON) 500 page."""
        try:
            return await view(self, request, viewer)
        except BodyTooLarge:  # LimitBody's to answer (413), not a bug
            raise
        except Exception:
            rid = getattr(request.state, "request_id", "-")
            errors.exception(
                "unhandled error on %s %s",
                request.method,
                request.url.path,
                extra={"request_id": rid},
            )
            message = (
                f"Something went wrong on our side; the server log has the details (request {rid})."
            )
            return self.error(request, viewer, 500, "internal", message)

    def _finish(self, request: Request, response: Response, started: float) -> None:
        session: Session | None = getattr(request.state, "ui_session", None)
        if session is not None and session.fresh:
            self.codec.set_cookie(response, session)
        elif getattr(request.state, "ui_session_cleared", False):
            self.codec.clear_cookie(response)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        elapsed = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"app;dur={elapsed:.2f}"

    # -- answers -------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        viewer: Viewer,
        template: str,
        data: dict[str, Any],
        *,
        status: int = 200,
        sign_in_next: bool = True,
    ) -> Response:
        """One data structure, as JSON or through a template."""
        common: dict[str, Any] = {
            "viewer": viewer.data(),
            "registry": self.registry_state(viewer),
        }
        if viewer.admin:  # others are told nothing about the policy's changes
            common["policy_alert"] = self.policy_alert()
        if wants_json(request):
            return JSONResponse({**common, **data}, status_code=status)
        session: Session | None = getattr(request.state, "ui_session", None)
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        context = {
            **common,
            **data,
            "csrf": session.csrf if session else None,
            "login_next": here if sign_in_next else None,
        }
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    def error(
        self, request: Request, viewer: Viewer, status: int, code: str, message: str
    ) -> Response:
        data = {"error": code, "message": message, "status": status}
        return self.render(request, viewer, "error.html", data, status=status, sign_in_next=False)

    def not_found(self, request: Request, viewer: Viewer) -> Response:
        """The one answer for a missing and a hidden thing alike: nothing tells them apart."""
        return self.error(request, viewer, 404, "not_found", NOT_FOUND)

    def unauthorized(self, exc: AuthenticationFailed) -> Response:
        wait = retry_after(exc)
        if wait is not None:
            metrics.LOCKOUTS.inc()
            return JSONResponse(
                {"error": "too_many_attempts", "message": f"too many attempts: retry in {wait} s"},
                status_code=429,
                headers={"Retry-After": str(wait)},
            )
        return JSONResponse(
            {"error": "unauthorized", "message": "wrong username or password"},
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="registry-gateway", charset="UTF-8"'},
        )

    def sign_in_first(self, request: Request, json: bool) -> Response:
        if json:
            return JSONResponse(
                {"error": "unauthorized", "message": "sign in (HTTP Basic) to read this page"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="registry-gateway", charset="UTF-8"'},
            )
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = self.path(request, "ui_login") + "?" + urlencode({"next": here})
        return RedirectResponse(target, status_code=303)

    # -- shared data ---------------------------------------------------------------------

    def visible(self, viewer: Viewer) -> VisibleCatalog:
        return self.visibility.view(viewer.engine, viewer.subject, self.services.catalog)

    def registry_state(self, viewer: Viewer) -> dict[str, Any]:
        """Whether the catalog is current: feeds the banner shown when the registry is down."""
        catalog = self.services.catalog
        if catalog is None:
            return {
                "state": "off",
                "message": "No registry is configured (registry_url), so the catalog is empty.",
                "as_of": None,
            }
        as_of = iso(catalog.last_refresh)
        if catalog.last_error:
            known = f"what was known at {as_of}" if as_of else "what notifications reported"
            message = f"The registry cannot be reached right now; showing {known}."
            state = {"state": "down", "message": message, "as_of": as_of}
            if viewer.admin:
                state["error"] = catalog.last_error
            return state
        if not catalog.built:
            return {
                "state": "building",
                "message": "The catalog is still being read from the registry.",
                "as_of": None,
            }
        return {"state": "ok", "message": None, "as_of": as_of}

    def policy_alert(self) -> dict[str, Any] | None:
        """Why the live policy is not the newest the source offers (a rejected change, a
        newer commit not loaded, a source that cannot be read), or None: the admins' banner."""
        live = health(self.services)
        if live["status"] != "degraded":  # ok, or draining (the banner does not matter then)
            return None
        revision, newest = live["revision"], live["newest"]
        if live["error"]:
            state = "rejected"
            where = live["error"].split("; ")[0].removeprefix("policy rejected: ")
            # Places within the policy (`zz.yaml:1:26`), not on this server's disk.
            where = where.replace(str(self.services.source.directory).rstrip("/") + "/", "")
            message = (
                f"The newest policy change was rejected ({where}); "
                f"revision {revision} stays in force."
            )
        elif newest != revision:
            state = "behind"
            message = f"The policy source offers {newest}, but revision {revision} is in force."
        else:
            state = "unreadable"
            message = (
                f"The policy source cannot be read; revision {revision} may not be the newest."
            )
        return {"state": state, "message": message, "revision": revision, "newest": newest}

    def path(self, request: Request, name: str, **params: Any) -> str:
        root: str = request.scope.get("root_path", "")
        return root + str(request.app.url_path_for(name, **params))

    def pull_host(self) -> str | None:
        """The registry address people pull from, as shown in commands."""
        if self.settings.registry_public:
            return (
                self.settings.registry_public.removeprefix("https://")
                .removeprefix("http://")
                .rstrip("/")
            )
        if self.settings.registry_url:
            return urlsplit(self.settings.registry_url).netloc or None
        return None


def token_cap(engine: Engine, subject: Subject, via: str | None) -> frozenset[str] | None:
    """The actions a session signed in with a personal access token may use (its cap in the
    live policy); None for any other sign-in."""
    if via is None or not via.startswith("token:"):
        return None
    user = engine.policy.users.get(subject.name)
    name = via.removeprefix("token:")
    token = next((t for t in user.tokens if t.name == name), None) if user else None
    if token is None:
        return frozenset()  # gone: nothing (the session is signed out on this request anyway)
    return token.actions


def retry_after(exc: AuthenticationFailed) -> int | None:
    """Seconds to wait when sign-in was throttled (too many failures), else None."""
    value = getattr(exc, "retry_after", None)
    return int(value) if isinstance(value, int | float) else None


def paginate(
    request: Request, items: Sequence[T], *, per_page: int = 100, most: int = 500
) -> tuple[Sequence[T], dict[str, int]]:
    """One page of `items` (`?page=N&per_page=M`, clamped) and the page's numbers."""
    size = _int(request.query_params.get("per_page"), per_page)
    size = max(1, min(size, most))
    pages = max(1, math.ceil(len(items) / size))
    number = max(1, min(_int(request.query_params.get("page"), 1), pages))
    start = (number - 1) * size
    info = {"number": number, "per_page": size, "pages": pages, "total": len(items)}
    return items[start : start + size], info


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default
