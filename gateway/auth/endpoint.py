"""GET and POST /auth/token: parse, authenticate, decide, sign, audit, answer."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import secrets
import time
import urllib.parse
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Send
from starlette.types import Scope as AsgiScope

from gateway import metrics
from gateway.audit import AuditLog, now_iso
from gateway.auth.identity import (
    ANONYMOUS,
    AuthenticationFailed,
    Authenticator,
    Identity,
    TooManyAttempts,
    basic_credentials,
)
from gateway.auth.scope import Scope, ScopeError, format_scope, parse_scopes
from gateway.auth.tokens import TokenError, TokenIssuer
from gateway.config import Settings
from gateway.policy.engine import Engine
from gateway.policy.source import PolicySource

MAX_QUERY = 8192
MAX_FORM = 16384
MAX_REPLAYED_QUERY = 2048  # longer queries are answered afresh every time
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


# Cache entries hold only strings, numbers and tuples of them: a full garbage collection then
# has a few objects per entry to walk, not a graph of dicts and lists (with 10,000 entries
# that graph made 50 ms pauses).


@dataclass(frozen=True, slots=True)
class _Cached:
    """A signed access token and what it grants."""

    token: str
    expires_in: int
    issued_at: str
    minted: float  # time.time() when it was signed
    access: tuple[tuple[str, str, tuple[str, ...]], ...]  # (type, name, granted actions)
    kid: str

    def granted(self) -> list[dict[str, Any]]:
        """The token's `access` claim, as the audit log shows it."""
        return [{"type": t, "name": n, "actions": list(a)} for t, n, a in self.access]

    def remaining(self, now: float) -> int:
        return max(1, self.expires_in - int(now - self.minted))


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


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A 200 answer serialised once: for its first sending and for every replay."""

    cached: _Cached
    head: bytes  # the JSON body up to the expires_in value
    tail: bytes  # and after it
    audit: str  # the audit record's fixed fields, serialised, without braces
    decisions: str  # per resource, how its decision counts in the metrics (metrics.DECISION_CODES)

    def body(self, now: float) -> bytes:
        return self.head + str(self.cached.remaining(now)).encode() + self.tail


@dataclass(frozen=True, slots=True)
class _Answer:
    """A 200 answer to one exact GET (query and Authorization header), to send again."""

    revision: str
    generation: tuple[Any, ...]
    deadline: float  # time.monotonic() after which the request is answered afresh
    prepared: _Prepared


class AnswerCache:
    """Answers to GETs seen lately, by raw query string and a keyed hash of the Authorization
    header: `docker push` asks for the same token many times in a few seconds.

    Only answers that `TokenService` would give again unchanged are kept, and only while they
    would be: same policy revision, signing key and authenticator generation (no failed
    sign-in or htpasswd change since), within the token reuse window, and for slow-hash and
    LDAP sign-ins within the verified-credential cache's TTL. An entry needs the exact bytes
    of a header that once authenticated; no password is kept (the hash key is random per
    process).
    """

    def __init__(self, size: int = 10000) -> None:
        self.size = size
        self._key = secrets.token_bytes(32)
        self._items: dict[tuple[bytes, bytes], _Answer] = {}
        self._seen: dict[tuple[bytes, bytes], None] = {}  # keys answered once lately
        # Authorization headers that signed in lately: digest -> (identity, user name,
        # revision, generation, deadline). A request for other scopes skips the sign-in.
        self._sign_ins: dict[bytes, tuple[Identity, str, str, tuple[Any, ...], float]] = {}

    def digest(self, authorization: bytes | None) -> bytes:
        if not authorization:
            return b""
        return hashlib.blake2b(authorization, key=self._key, digest_size=16).digest()

    def get(
        self,
        key: tuple[bytes, bytes],
        revision: str,
        kid: str,
        generation: tuple[Any, ...],
        now: float,
    ) -> _Answer | None:
        answer = self._items.get(key)
        if answer is None:
            return None
        if (
            now < answer.deadline
            and answer.revision == revision
            and answer.prepared.cached.kid == kid
            and answer.generation == generation
        ):
            return answer
        del self._items[key]
        return None

    def wanted(self, key: tuple[bytes, bytes]) -> bool:
        """Whether an answer to `key` is worth keeping: only once the same request came twice.

        Most requests that ask for a new repository never come again; noting their key costs
        less than keeping their answer. A request that repeats is answered afresh twice.
        """
        if key in self._seen:
            return True
        _put_newest(self._seen, key, None, self.size)
        return False

    def put(self, key: tuple[bytes, bytes], answer: _Answer) -> None:
        _put_newest(self._items, key, answer, self.size)

    def signed_in(
        self, digest: bytes, revision: str, generation: tuple[Any, ...], now: float
    ) -> tuple[Identity, str] | None:
        """Who this header signed in as lately, if that may still stand (as for answers)."""
        found = self._sign_ins.get(digest)
        if found is None:
            return None
        identity, username, made_revision, made_generation, deadline = found
        if now < deadline and made_revision == revision and made_generation == generation:
            return identity, username
        del self._sign_ins[digest]
        return None

    def remember_sign_in(
        self,
        digest: bytes,
        identity: Identity,
        username: str,
        revision: str,
        generation: tuple[Any, ...],
        deadline: float,
    ) -> None:
        entry = (identity, username, revision, generation, deadline)
        _put_newest(self._sign_ins, digest, entry, self.size)


def _put_newest(items: dict[Any, Any], key: Any, value: Any, size: int) -> None:
    """Insert `key` as the newest entry, dropping the oldest beyond `size` entries."""
    items.pop(key, None)
    items[key] = value
    if len(items) > size:
        del items[next(iter(items))]


# Sign-ins whose proof may be replayed for the whole reuse window: a constant-time compare
# against the policy (robots, personal access tokens) or no credentials at all.
_REPLAY_ALWAYS = frozenset({"anonymous", "robot", "access_token"})
# Slow hashes and LDAP binds: only as long as the verified-credential cache would vouch.
_REPLAY_WITH_AUTH_CACHE = frozenset({"password", "htpasswd", "ldap"})
_AUDIT_KEPT_PER_REQUEST = ("request_id", "client", "user_agent")


async def _send_json(send: Send, body: bytes, request_id: str) -> None:
    """A 200 JSON answer, as JSONResponse would send it, without building one."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
                (b"cache-control", b"no-store"),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# The same few scopes come again and again, percent-encoded the same way.
_unquote = functools.lru_cache(maxsize=4096)(urllib.parse.unquote_plus)


def query_params(query: bytes) -> dict[str, list[str]]:
    """The query string's parameters, every value of each, read as Starlette's QueryParams
    reads them (the bytes as Latin-1, then `parse_qsl` with blank values kept: `+` is a space,
    `%XX` is UTF-8 with replacement), without building a multi-dict on every token request."""
    params: dict[str, list[str]] = {}
    for part in query.decode("latin-1").split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if "%" in key or "+" in key:
            key = _unquote(key)
        if "%" in value or "+" in value:
            value = _unquote(value)
        values = params.get(key)
        if values is None:
            params[key] = [value]
        else:
            values.append(value)
    return params


def _decision_codes(scopes: list[Scope], cached: _Cached) -> str:
    return "".join(
        metrics.decision_code(len(s.actions), len(a))
        for s, (_, _, a) in zip(scopes, cached.access, strict=True)
    )


async def disconnected() -> Message:
    """An ASGI `receive` for answers that never read the request body."""
    return {"type": "http.disconnect"}


_midnight = [0.0]  # the next local midnight, as a time.monotonic() value


def _next_midnight(now: float) -> float:
    """The next local midnight (when `expires` dates of robots and tokens take effect)."""
    if now >= _midnight[0]:
        wall = dt.datetime.now()
        tomorrow = dt.datetime.combine(wall.date() + dt.timedelta(days=1), dt.time())
        _midnight[0] = now + (tomorrow - wall).total_seconds()
    return _midnight[0]


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
        self.answers = AnswerCache()
        self.challenge = f'Basic realm="{settings.realm}"'
        self._issued = metrics.TOKEN_REQUESTS.labels("issued", "200")

    # -- HTTP entry points -------------------------------------------------------------

    async def handle_get(
        self, scope: AsgiScope, send: Send, request_id: str, started: float
    ) -> int:
        """The Docker token spec's GET, with Basic credentials or none, as plain ASGI (see
        `gateway.middleware.TokenFront`); returns the status sent."""
        authorization = agent = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"user-agent":
                agent = value
        client = scope.get("client")
        host = client[0] if client else None
        query: bytes = scope["query_string"]
        engine = self.source.engine
        key = None
        if engine is not None and len(query) <= MAX_REPLAYED_QUERY:
            key = (query, self.answers.digest(authorization))
            answer = self.answers.get(
                key,
                engine.revision,
                self.issuer.keystore.current().kid,
                self.authenticator.generation,
                time.monotonic(),
            )
            if answer is not None:
                await self._replay(answer, send, request_id, host, agent, started)
                return 200
        ctx: dict[str, Any] = {
            "request_id": request_id,
            "client": host,
            "method": "GET",
            "user_agent": agent.decode("latin-1")[:200] if agent else "",
        }
        generation = self.authenticator.generation
        reply, fresh = await self._get(
            query,
            authorization.decode("latin-1") if authorization else None,
            ctx,
            started,
            key[1] if key is not None else b"",
        )
        if isinstance(reply, bytes):
            # A failure while this request was waiting may have started a lockout: not kept.
            unchanged = generation == self.authenticator.generation
            if fresh is not None and key is not None and unchanged and self.answers.wanted(key):
                self._remember(key, fresh, ctx["revision"])
            await _send_json(send, reply, request_id)
            return 200
        await reply(scope, disconnected, send)
        return reply.status_code

    async def _get(
        self,
        query: bytes,
        authorization: str | None,
        ctx: dict[str, Any],
        started: float,
        digest: bytes = b"",
    ) -> tuple[bytes | Response, tuple[Identity, _Prepared] | None]:
        """A 200 body (and, if it may be replayed, what made it), or the error response."""
        try:
            if len(query) > MAX_QUERY:
                raise BadRequest("REQUEST_TOO_LARGE", f"the query is longer than {MAX_QUERY} bytes")
            params = query_params(query)
            self._check_service(params.get("service", [None])[0])
            scopes = self._scopes(params.get("scope", []))
            ctx["requested"] = [format_scope(s) for s in scopes]
            engine = self._engine()
            identity = await self._basic(authorization, engine, ctx, digest)
            cached = self._grant(engine, identity, scopes, ctx)
            now = time.time()
            if params.get("offline_token", [""])[0].lower() in _TRUE and identity.refreshable:
                body = self._body(cached, now)
                body["refresh_token"] = self._refresh_token(identity, ctx)
                self._audit("issued", 200, ctx, started)
                return json.dumps(body, separators=(",", ":")).encode(), None
            prepared = self._prepare(cached, scopes, ctx)
            self._audit_prepared(prepared, ctx, started, reused=False)
            return prepared.body(now), (identity, prepared)
        except BadRequest as exc:
            return self._fail(exc, ctx, started), None
        except TooManyAttempts as exc:
            return self._too_many(exc, ctx, started), None
        except AuthenticationFailed as exc:
            return self._unauthorized(exc, ctx, started), None

    def _prepare(self, cached: _Cached, scopes: list[Scope], ctx: dict[str, Any]) -> _Prepared:
        """Serialise a 200 answer's body and audit fields once, for it and its replays."""
        # A JWS compact token is base64url and dots: nothing in it needs JSON escaping.
        head = f'{{"token":"{cached.token}","access_token":"{cached.token}","expires_in":'
        fixed = {
            "event": "token",
            "outcome": "issued",
            "status": 200,
            **{k: v for k, v in ctx.items() if k not in _AUDIT_KEPT_PER_REQUEST},
        }
        return _Prepared(
            cached=cached,
            head=head.encode(),
            tail=(',"issued_at":"' + cached.issued_at + '"}').encode(),
            audit=json.dumps(fixed, separators=(",", ":"), default=str)[1:-1],
            decisions=_decision_codes(scopes, cached),
        )

    def _audit_prepared(
        self, prepared: _Prepared, ctx: dict[str, Any], started: float, *, reused: bool
    ) -> None:
        """The audit line of a 200 answer from its prepared fields, and its request metrics."""
        duration = time.perf_counter() - started
        self.audit.write_line(
            f'{{"time":"{now_iso()}","log":"audit",{prepared.audit},'
            f'"request_id":"{ctx["request_id"]}","client":{json.dumps(ctx["client"])},'
            f'"user_agent":{json.dumps(ctx["user_agent"])},'
            + ('"reused":true,' if reused else "")
            + f'"duration_ms":{round(duration * 1000, 3)}}}'
        )
        self._issued.inc()
        metrics.TOKEN_LATENCY.observe(duration)

    def _remember(
        self, key: tuple[bytes, bytes], fresh: tuple[Identity, _Prepared], revision: str
    ) -> None:
        """Keep a fresh 200 answer to replay, if the sign-in behind it may be replayed."""
        identity, prepared = fresh
        now = time.monotonic()
        age = time.time() - prepared.cached.minted
        deadline = self._replay_deadline(identity.method, now, age)
        if deadline > now:
            generation = self.authenticator.generation
            answer = _Answer(revision, generation, deadline, prepared)
            self.answers.put(key, answer)

    def _replay_deadline(self, method: str, now: float, age: float = 0.0) -> float:
        """Until when a sign-in by `method` (and an answer `age` seconds old) may be replayed;
        `now` or earlier: not at all."""
        lifetime = self.cache.window - age
        if method in _REPLAY_WITH_AUTH_CACHE:
            lifetime = min(lifetime, self.authenticator.cache.ttl)
        elif method not in _REPLAY_ALWAYS:
            return now
        return min(now + lifetime, _next_midnight(now))

    async def _replay(
        self,
        answer: _Answer,
        send: Send,
        request_id: str,
        host: str | None,
        agent: bytes | None,
        started: float,
    ) -> None:
        prepared = answer.prepared
        await _send_json(send, prepared.body(time.time()), request_id)
        ctx = {
            "request_id": request_id,
            "client": host,
            "user_agent": agent.decode("latin-1")[:200] if agent else "",
        }
        metrics.count_decisions(prepared.decisions)
        self._audit_prepared(prepared, ctx, started, reused=True)

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
            cached = self._grant(engine, identity, scopes, ctx)
            body = self._body(cached, time.time())
            if offline and identity.refreshable:
                body["refresh_token"] = self._refresh_token(identity, ctx)
            body["scope"] = " ".join(format_scope(Scope(t, n, a)) for t, n, a in cached.access if a)
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

    async def _basic(
        self, header: str | None, engine: Engine, ctx: dict[str, Any], digest: bytes = b""
    ) -> Identity:
        """Who the Authorization header signs in as. With `digest` (the header's keyed hash),
        a header that signed in lately is taken at its word under the same conditions as a
        replayed answer (docs/authentication.md, "Repeated requests")."""
        if not header:
            ctx["auth"] = "anonymous"
            return ANONYMOUS
        authenticator = self.authenticator
        generation = authenticator.generation
        if digest:
            now = time.monotonic()
            known = self.answers.signed_in(digest, engine.revision, generation, now)
            if known is not None:
                identity, ctx["username"] = known
                ctx["auth"] = identity.method
                return identity
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise AuthenticationFailed("unsupported authorization scheme")
        username, password = basic_credentials(value)
        ctx["username"] = username[:200]
        identity = await authenticator.password(engine, username, password, client=ctx["client"])
        ctx["auth"] = identity.method
        if digest and generation == authenticator.generation:
            now = time.monotonic()
            deadline = self._replay_deadline(identity.method, now)
            if deadline > now:
                self.answers.remember_sign_in(
                    digest, identity, ctx["username"], engine.revision, generation, deadline
                )
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
        self, engine: Engine, identity: Identity, scopes: list[Scope], ctx: dict[str, Any]
    ) -> _Cached:
        """Decide every scope and sign the granted access (or reuse a token signed lately)."""
        subject = identity.subject
        ctx["subject"] = str(subject)
        ctx["auth"] = identity.method
        if identity.via and identity.via.startswith("token:"):
            ctx["token_name"] = identity.via.removeprefix("token:")
        ctx["revision"] = engine.revision
        now = time.time()
        kid = self.issuer.keystore.current().kid
        # A new revision or a new signing key never reuses a token made before it.
        key = (
            subject.kind,
            subject.name,
            subject.groups,
            subject.directory,
            identity.actions,
            tuple(ctx["requested"]),
            engine.revision,
            kid,
        )
        cached = self.cache.get(key, now)
        if cached is None:
            granted = engine.granted
            access = []
            for s in scopes:
                actions = granted(subject, s.type, s.name, s.actions)
                if identity.actions is not None:  # a personal access token's cap
                    actions = tuple(a for a in actions if identity.allows(a))
                access.append((s.type, s.name, actions))
            token = self.issuer.issue_access_token(
                subject.name if subject.kind != "anonymous" else "",
                [{"type": t, "name": n, "actions": a} for t, n, a in access],
                extra_claims={"revision": engine.revision},
            )
            cached = _Cached(
                token.token, token.expires_in, token.issued_at, now, tuple(access), kid
            )
            self.cache.put(key, cached)
        ctx["granted"] = cached.granted()
        metrics.count_decisions(_decision_codes(scopes, cached))
        return cached

    @staticmethod
    def _body(cached: _Cached, now: float) -> dict[str, Any]:
        return {
            "token": cached.token,
            "access_token": cached.token,
            "expires_in": cached.remaining(now),
            "issued_at": cached.issued_at,
        }

    def _refresh_token(self, identity: Identity, ctx: dict[str, Any]) -> str:
        subject = identity.subject
        ctx["refresh_token_issued"] = True
        return self.issuer.issue_refresh_token(
            subject.name, subject.kind, fingerprint=identity.fingerprint, via=identity.via
        )

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
