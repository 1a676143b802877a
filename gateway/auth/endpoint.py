"""GET and POST /auth/token: parse, authenticate, decide, sign, audit, answer."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import metrics
from gateway.audit import AuditLog
from gateway.auth.identity import (
    ANONYMOUS,
    AuthenticationFailed,
    Authenticator,
    Identity,
    TooManyAttempts,
    basic_credentials,
)
from gateway.auth.scope import Scope, ScopeError, format_scope, parse_scopes
from gateway.auth.tokens import IssuedToken, TokenError, TokenIssuer
from gateway.config import Settings
from gateway.policy.engine import Engine
from gateway.policy.source import PolicySource

MAX_QUERY = 8192
MAX_FORM = 16384
_TRUE = ("true", "1", "yes")


def registry_error(
    status: int,
    code: str,
    message: str,
    *,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in the registry's format: {"errors": [{"code", "message", "detail"}]}."""
    body = {"errors": [{"code": code, "message": message, "detail": detail}]}
    return JSONResponse(body, status_code=status, headers=headers)


class BadRequest(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class _Cached:
    token: IssuedToken
    minted: float
    access: list[dict[str, Any]]


class TokenCache:
    """Recently signed tokens by (subject, scopes, revision): `docker push` asks the same many times.

    A token is reused only for a short window, so its remaining lifetime stays close to the
    configured one; a new policy revision never reuses a token decided by the previous one.
    """

    def __init__(self, window: float, size: int = 10000) -> None:
        self.window = window
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], _Cached] = OrderedDict()

    def get(self, key: tuple[Any, ...], now: float) -> _Cached | None:
        item = self._items.get(key)
        if item is None or now - item.minted > self.window:
            return None
        return item

    def put(self, key: tuple[Any, ...], item: _Cached) -> None:
        self._items[key] = item
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class TokenService:
    """The token endpoint. Nothing below it knows about HTTP."""

    def __init__(
        self,
        settings: Settings,
        source: PolicySource,
        issuer: TokenIssuer,
        authenticator: Authenticator,
        audit: AuditLog,
    ) -> None:
        self.settings = settings
        self.source = source
        self.issuer = issuer
        self.authenticator = authenticator
        self.audit = audit
        self.cache = TokenCache(window=min(30.0, settings.token_ttl / 10))
        self.challenge = f'Basic realm="{settings.realm}"'

    # -- HTTP entry points -------------------------------------------------------------

    async def get(self, request: Request) -> Response:
        """The Docker token spec's GET, with Basic credentials or none."""
        started = time.perf_counter()
        ctx = self._context(request)
        try:
            if len(request.scope["query_string"]) > MAX_QUERY:
                raise BadRequest("REQUEST_TOO_LARGE", f"the query is longer than {MAX_QUERY} bytes")
            params = request.query_params
            self._check_service(params.get("service"))
            scopes = self._scopes(params.getlist("scope"))
            ctx["requested"] = [format_scope(s) for s in scopes]
            engine = self._engine()
            identity = await self._basic(request, engine, ctx)
            offline = params.get("offline_token", "").lower() in _TRUE
            body = self._grant(engine, identity, scopes, offline, ctx)
            return self._answer(200, body, ctx, started)
        except BadRequest as exc:
            return self._fail(exc, ctx, started)
        except TooManyAttempts as exc:
            return self._too_many(exc, ctx, started)
        except AuthenticationFailed as exc:
            return self._unauthorized(exc, ctx, started)

    async def post(self, request: Request) -> Response:
        """The OAuth2 form (distribution's oauth.md): password and refresh_token grants."""
        started = time.perf_counter()
        ctx = self._context(request)
        try:
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_FORM):
                raise BadRequest("REQUEST_TOO_LARGE", f"the form is larger than {MAX_FORM} bytes")
            if not request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"
            ):
                raise BadRequest(
                    "UNSUPPORTED",
                    "POST /auth/token takes an application/x-www-form-urlencoded form",
                )
            form = await request.form(max_files=0, max_fields=MAX_FORM // 8)
            self._check_service(_text(form.get("service")))
            scopes = self._scopes([v for v in form.getlist("scope") if isinstance(v, str)])
            ctx["requested"] = [format_scope(s) for s in scopes]
            ctx["client_id"] = _text(form.get("client_id"))[:100]
            engine = self._engine()
            grant_type = _text(form.get("grant_type"))
            ctx["grant_type"] = grant_type
            offline = _text(form.get("access_type")) == "offline"
            if grant_type == "password":
                username, password = _text(form.get("username")), _text(form.get("password"))
                ctx["username"] = username[:200]
                if not username:
                    raise BadRequest(
                        "INVALID_REQUEST", "grant_type=password needs username and password"
                    )
                identity = await self.authenticator.password(
                    engine, username, password, client=ctx["client"]
                )
            elif grant_type == "refresh_token":
                identity = self._refresh(engine, _text(form.get("refresh_token")), ctx)
                offline = False  # the client keeps its refresh token: it does not rotate
            else:
                raise BadRequest("UNSUPPORTED", "grant_type must be password or refresh_token")
            ctx["auth"] = identity.method
            body = self._grant(engine, identity, scopes, offline, ctx)
            body["scope"] = " ".join(
                format_scope(Scope(a["type"], a["name"], tuple(a["actions"])))
                for a in ctx["granted"]
                if a["actions"]
            )
            if grant_type == "refresh_token":
                body["refresh_token"] = _text(form.get("refresh_token"))
            return self._answer(200, body, ctx, started)
        except BadRequest as exc:
            return self._fail(exc, ctx, started)
        except TooManyAttempts as exc:
            return self._too_many(exc, ctx, started)
        except AuthenticationFailed as exc:
            return self._unauthorized(exc, ctx, started)

    # -- the steps ---------------------------------------------------------------------

    def _context(self, request: Request) -> dict[str, Any]:
        rid = getattr(request.state, "request_id", None) or uuid.uuid4().hex
        return {
            "request_id": rid,
            "client": request.client.host if request.client else None,
            "method": request.method,
            "user_agent": request.headers.get("user-agent", "")[:200],
        }

    def _engine(self) -> Engine:
        engine = self.source.engine
        if engine is None:
            raise BadRequest("UNAVAILABLE", "no valid policy is loaded yet", status=503)
        return engine

    def _check_service(self, service: str | None) -> None:
        if not service:
            raise BadRequest(
                "SERVICE_INVALID",
                f"the service parameter is missing; this gateway serves {self.settings.service!r}",
            )
        if service != self.settings.service:
            raise BadRequest(
                "SERVICE_INVALID",
                f"unknown service {service[:100]!r}; this gateway serves {self.settings.service!r} "
                "(the registry's auth.token.service must match the gateway's --service)",
            )

    def _scopes(self, values: list[str]) -> list[Scope]:
        try:
            return parse_scopes(values, max_scopes=self.settings.max_scopes)
        except ScopeError as exc:
            raise BadRequest("SCOPE_INVALID", str(exc)) from None

    async def _basic(self, request: Request, engine: Engine, ctx: dict[str, Any]) -> Identity:
        header = request.headers.get("authorization")
        if not header:
            ctx["auth"] = "anonymous"
            return ANONYMOUS
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise AuthenticationFailed("unsupported authorization scheme")
        username, password = basic_credentials(value)
        ctx["username"] = username[:200]
        identity = await self.authenticator.password(
            engine, username, password, client=ctx["client"]
        )
        ctx["auth"] = identity.method
        return identity

    def _refresh(self, engine: Engine, token: str, ctx: dict[str, Any]) -> Identity:
        if not token:
            raise BadRequest("INVALID_REQUEST", "grant_type=refresh_token needs refresh_token")
        try:
            claims = self.issuer.verify_refresh_token(token)
        except TokenError as exc:
            raise AuthenticationFailed(f"refresh token rejected: {exc}") from None
        ctx["username"] = claims.subject
        return self.authenticator.refresh(engine, claims)

    def _grant(
        self,
        engine: Engine,
        identity: Identity,
        scopes: list[Scope],
        offline: bool,
        ctx: dict[str, Any],
    ) -> dict[str, Any]:
        """Decide every scope, sign the granted access, and build the response body."""
        subject = identity.subject
        ctx["subject"] = str(subject)
        ctx["auth"] = identity.method
        if identity.via and identity.via.startswith("token:"):
            ctx["token_name"] = identity.via.removeprefix("token:")
        ctx["revision"] = engine.revision
        now = time.time()
        # A new revision or a new signing key never reuses a token made before it.
        key = (
            subject,
            identity.actions,
            tuple(scopes),
            engine.revision,
            self.issuer.keystore.current().kid,
        )
        cached = self.cache.get(key, now)
        if cached is None:
            access = [engine.decide(subject, s.type, s.name, s.actions).access() for s in scopes]
            if identity.actions is not None:  # a personal access token's cap
                for entry in access:
                    entry["actions"] = [a for a in entry["actions"] if identity.allows(a)]
            claims = {"revision": engine.revision}
            token = self.issuer.issue_access_token(
                subject.name if subject.kind != "anonymous" else "", access, extra_claims=claims
            )
            cached = _Cached(token, now, access)
            self.cache.put(key, cached)
        ctx["granted"] = cached.access
        for scope, entry in zip(scopes, cached.access, strict=True):
            metrics.decision(len(scope.actions), len(entry["actions"]))
        remaining = max(1, cached.token.expires_in - int(now - cached.minted))
        body: dict[str, Any] = {
            "token": cached.token.token,
            "access_token": cached.token.token,
            "expires_in": remaining,
            "issued_at": cached.token.issued_at,
        }
        if offline and identity.refreshable:
            body["refresh_token"] = self.issuer.issue_refresh_token(
                subject.name, subject.kind, fingerprint=identity.fingerprint, via=identity.via
            )
            ctx["refresh_token_issued"] = True
        return body

    # -- answers -----------------------------------------------------------------------

    def _answer(
        self, status: int, body: dict[str, Any], ctx: dict[str, Any], started: float
    ) -> Response:
        self._audit("issued", status, ctx, started)
        return JSONResponse(body, status_code=status, headers=self._headers(ctx))

    def _fail(self, exc: BadRequest, ctx: dict[str, Any], started: float) -> Response:
        ctx["error"] = exc.message
        self._audit("rejected", exc.status, ctx, started)
        return registry_error(exc.status, exc.code, exc.message, headers=self._headers(ctx))

    def _unauthorized(
        self, exc: AuthenticationFailed, ctx: dict[str, Any], started: float
    ) -> Response:
        ctx["error"] = exc.reason
        if exc.username:
            ctx["username"] = exc.username[:200]
        if exc.locked:
            ctx["lockout_started"] = exc.locked
        self._audit("denied", 401, ctx, started)
        headers = {**self._headers(ctx), "WWW-Authenticate": self.challenge}
        return registry_error(
            401,
            "UNAUTHORIZED",
            "authentication required: wrong user name or password",
            headers=headers,
        )

    def _too_many(self, exc: TooManyAttempts, ctx: dict[str, Any], started: float) -> Response:
        """429 before any check: the user name or the address failed too often lately."""
        ctx["error"] = exc.reason
        ctx["lockout"] = exc.refusal.scope
        ctx["retry_after"] = exc.retry_after
        if exc.username:
            ctx["username"] = exc.username[:200]
        self._audit("locked", 429, ctx, started)
        headers = {**self._headers(ctx), "Retry-After": str(exc.retry_after)}
        return registry_error(
            429,
            "TOO_MANY_REQUESTS",
            f"too many failed sign-ins; try again in {exc.retry_after} s",
            detail={"retry_after": exc.retry_after},
            headers=headers,
        )

    @staticmethod
    def _headers(ctx: dict[str, Any]) -> dict[str, str]:
        return {"X-Request-ID": ctx["request_id"], "Cache-Control": "no-store"}

    def _audit(self, outcome: str, status: int, ctx: dict[str, Any], started: float) -> None:
        record = {
            "event": "token",
            "outcome": outcome,
            "status": status,
            **ctx,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        record.setdefault("revision", self.source.engine.revision if self.source.engine else None)
        self.audit.write(record)
        metrics.TOKEN_REQUESTS.labels(outcome, str(status)).inc()
        metrics.TOKEN_LATENCY.observe(record["duration_ms"] / 1000)
        if outcome == "denied":
            metrics.SIGNIN_FAILURES.labels(ctx.get("auth") or "password").inc()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
