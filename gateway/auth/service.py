"""The token service: one token request in, one answer out. Nothing here knows about HTTP.

`answer` reads top to bottom: parse, authenticate, decide, sign, audit, answer; `Reuse`
(gateway/auth/reuse.py) is a layer around the middle steps, under one rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway import metrics
from gateway.audit import AuditLog, now_iso
from gateway.auth.answer import SignedToken, TokenAnswer, issued, refused
from gateway.auth.basic import basic_credentials
from gateway.auth.identity import (
    ANONYMOUS,
    AuthenticationFailed,
    Authenticator,
    Identity,
    TooManyAttempts,
)
from gateway.auth.request import BadRequest, TokenRequest
from gateway.auth.reuse import Conditions, Reuse
from gateway.auth.scope import Scope, ScopeError, format_scope, parse_scopes
from gateway.auth.tokens import TokenError, TokenIssuer
from gateway.jsontext import cached_ascii_json
from gateway.policy.engine import Engine
from gateway.policy.source import PolicySource

# Told of every answer (its decision codes, audit fields, request id, client): the events
# hook (gateway/events/publisher.Events.token_denied), which must return at once.
AnswerListener = Callable[[str, str, str, str | None], None]


class TokenService:
    """Answers token requests from the live policy, the sign-in backends and the signing key."""

    def __init__(
        self,
        *,
        service: str,
        realm: str,
        max_scopes: int,
        source: PolicySource,
        issuer: TokenIssuer,
        authenticator: Authenticator,
        audit: AuditLog,
        reuse: Reuse,
        on_answer: AnswerListener | None = None,
    ) -> None:
        self.service = service
        self.max_scopes = max_scopes
        self.source = source
        self.issuer = issuer
        self.authenticator = authenticator
        self.audit = audit
        self.reuse = reuse
        self.on_answer = on_answer
        self.challenge = ((b"www-authenticate", f'Basic realm="{realm}"'.encode()),)

    async def answer(self, request: TokenRequest) -> TokenAnswer:
        """The answer to one request, audited and counted."""
        engine = self.source.engine
        conditions = self._conditions(engine)
        digest = self.reuse.digest(request.credentials.proof())
        key = None
        if request.replay_key is not None and conditions is not None:
            key = (request.replay_key, digest)
            again = self.reuse.answer(key, conditions)
            if again is not None:
                self._record(again, request, reused=True)
                return again
        answer = await self._answer(request, engine, conditions, digest)
        if key is not None and conditions is not None:
            self.reuse.keep_answer(key, answer, conditions)
        self._record(answer, request, reused=False)
        return answer

    def _conditions(self, engine: Engine | None) -> Conditions | None:
        """What reused answers must have been made under to stand now."""
        if engine is None:
            return None
        kid = self.issuer.keystore.current().kid
        return Conditions(engine.revision, kid, self.authenticator.generation)

    async def _answer(
        self,
        request: TokenRequest,
        engine: Engine | None,
        conditions: Conditions | None,
        digest: bytes,
    ) -> TokenAnswer:
        """Parse, authenticate, decide and sign; every refusal as an answer, too."""
        record: dict[str, Any] = {
            "method": request.method,
            "revision": engine.revision if engine is not None else None,
        }
        if request.grant_type is not None:
            record["grant_type"] = request.grant_type
            record["client_id"] = request.client_id
        try:
            if request.problem is not None:
                raise request.problem
            scopes = self._parse(request, record)
            if engine is None or conditions is None:
                raise BadRequest("UNAVAILABLE", "no valid policy is loaded yet", status=503)
            identity = await self._authenticate(request, engine, conditions, digest, record)
            signed = self._grant(engine, identity, scopes, conditions, record)
            extra = {}
            if request.offline and identity.refreshable:
                extra["refresh_token"] = self._refresh_token(identity, record)
            if request.method == "POST":
                extra["scope"] = signed.scope()
                if request.credentials.kind == "refresh_token":
                    extra["refresh_token"] = request.credentials.secret
            return issued(
                signed,
                scopes,
                record,
                identity.method,
                extra=extra,
                vouched_until=identity.vouched_until,
            )
        except BadRequest as exc:
            record["error"] = exc.message
            return refused(exc.status, "rejected", exc.code, exc.message, record)
        except TooManyAttempts as exc:
            return self._too_many(exc, record)
        except AuthenticationFailed as exc:
            return self._unauthorized(exc, record)

    # -- the steps ---------------------------------------------------------------------

    def _parse(self, request: TokenRequest, record: dict[str, Any]) -> list[Scope]:
        service = request.service
        if not service:
            raise BadRequest(
                "SERVICE_INVALID",
                f"the service parameter is missing; this gateway serves {self.service!r}",
            )
        if service != self.service:
            raise BadRequest(
                "SERVICE_INVALID",
                f"unknown service {service[:100]!r}; this gateway serves {self.service!r} "
                "(the registry's auth.token.service must match the gateway's --service)",
            )
        try:
            scopes = parse_scopes(request.scopes, max_scopes=self.max_scopes)
        except ScopeError as exc:
            raise BadRequest("SCOPE_INVALID", str(exc)) from None
        record["requested"] = [format_scope(s) for s in scopes]
        return scopes

    async def _authenticate(
        self,
        request: TokenRequest,
        engine: Engine,
        conditions: Conditions,
        digest: bytes,
        record: dict[str, Any],
    ) -> Identity:
        """Who the credentials sign in as. Credentials (`digest`: their MAC) that signed in
        lately are taken at their word while the reuse rule lets them stand."""
        credentials = request.credentials
        kind = credentials.kind
        if kind == "none":
            record["auth"] = "anonymous"
            return ANONYMOUS
        if kind == "unsupported":
            raise BadRequest("UNSUPPORTED", "grant_type must be password or refresh_token")
        if kind == "refresh_token":
            return self._refresh(engine, credentials.secret, record)
        known = self.reuse.sign_in(digest, conditions)
        if known is not None:
            identity, record["username"] = known
            record["auth"] = identity.method
            return identity
        if kind == "password":
            username, password = credentials.username, credentials.secret
            record["username"] = username[:200]
            if not username:
                raise BadRequest(
                    "INVALID_REQUEST", "grant_type=password needs username and password"
                )
        else:  # the Authorization header of a GET
            scheme, _, value = credentials.secret.partition(" ")
            if scheme.lower() != "basic":
                raise AuthenticationFailed("unsupported authorization scheme")
            parsed = basic_credentials(value)
            if parsed is None:  # `Basic Og==` (empty name and password): no credentials
                record["auth"] = "anonymous"
                return ANONYMOUS
            username, password = parsed
            record["username"] = username[:200]
        identity = await self.authenticator.password(
            engine, username, password, client=request.client
        )
        record["auth"] = identity.method
        self.reuse.keep_sign_in(digest, identity, record["username"], conditions)
        return identity

    def _refresh(self, engine: Engine, token: str, record: dict[str, Any]) -> Identity:
        if not token:
            raise BadRequest("INVALID_REQUEST", "grant_type=refresh_token needs refresh_token")
        try:
            claims = self.issuer.verify_refresh_token(token)
        except TokenError as exc:
            raise AuthenticationFailed(f"refresh token rejected: {exc}") from None
        record["username"] = claims.subject
        identity = self.authenticator.refresh(engine, claims)
        record["auth"] = identity.method
        return identity

    def _grant(
        self,
        engine: Engine,
        identity: Identity,
        scopes: list[Scope],
        conditions: Conditions,
        record: dict[str, Any],
    ) -> SignedToken:
        """Decide every scope and sign the granted access (or hand out a token signed lately
        for the same subject and scopes)."""
        subject = identity.subject
        record["subject"] = str(subject)
        record["auth"] = identity.method
        if identity.details:  # an OIDC token's issuer, subject and workload; never the token
            record.update(identity.details)
        if identity.via and identity.via.startswith("token:"):
            record["token_name"] = identity.via.removeprefix("token:")
        requested = tuple(record["requested"])
        key = (subject, identity.actions, requested)
        signed = self.reuse.token(key, conditions)
        if signed is None:
            granted = engine.granted
            access = []
            for s in scopes:
                actions = granted(subject, s.type, s.name, s.actions)
                if identity.actions is not None:  # a personal access token's cap
                    actions = tuple(a for a in actions if identity.allows(a))
                access.append((s.type, s.name, actions))
            now = time.time()
            token = self.issuer.issue_access_token(
                subject.name if subject.kind != "anonymous" else "",
                [{"type": t, "name": n, "actions": a} for t, n, a in access],
                extra_claims={"revision": engine.revision},
            )
            signed = SignedToken(token.token, token.expires_in, token.issued_at, now, tuple(access))
            self.reuse.keep_token(key, signed, conditions)
        return signed

    def _refresh_token(self, identity: Identity, record: dict[str, Any]) -> str:
        subject = identity.subject
        record["refresh_token_issued"] = True
        return self.issuer.issue_refresh_token(
            subject.name, subject.kind, fingerprint=identity.fingerprint, via=identity.via
        )

    # -- refusals ----------------------------------------------------------------------

    def _unauthorized(self, exc: AuthenticationFailed, record: dict[str, Any]) -> TokenAnswer:
        record["error"] = exc.reason
        if exc.username:
            record["username"] = exc.username[:200]
        if exc.locked:
            record["lockout_started"] = exc.locked
        if exc.details:
            record.update(exc.details)
        return refused(
            401,
            "denied",
            "UNAUTHORIZED",
            exc.public or "authentication required: wrong user name or password",
            record,
            headers=self.challenge,
        )

    def _too_many(self, exc: TooManyAttempts, record: dict[str, Any]) -> TokenAnswer:
        """429 before any check: the user name or the address failed too often lately."""
        record["error"] = exc.reason
        record["lockout"] = exc.refusal.scope
        record["retry_after"] = exc.retry_after
        if exc.username:
            record["username"] = exc.username[:200]
        return refused(
            429,
            "locked",
            "TOO_MANY_REQUESTS",
            f"too many failed sign-ins; try again in {exc.retry_after} s",
            record,
            detail={"retry_after": exc.retry_after},
            headers=((b"retry-after", str(exc.retry_after).encode()),),
        )

    # -- audit and metrics -------------------------------------------------------------

    def _record(self, answer: TokenAnswer, request: TokenRequest, *, reused: bool) -> None:
        """The request's audit line (the answer's fields and the request's own) and metrics."""
        duration = time.perf_counter() - request.started
        self.audit.write_line(
            f'{{"time":"{now_iso()}","log":"audit",{answer.audit},'
            f'"request_id":"{request.request_id}","client":{cached_ascii_json(request.client)},'
            f'"user_agent":{cached_ascii_json(request.user_agent)},'
            + ('"reused":true,' if reused else "")
            + f'"duration_ms":{round(duration * 1000, 3)}}}'
        )
        metrics.count_token_request(answer.outcome, answer.status, duration, answer.decisions)
        if self.on_answer is not None and answer.decisions:
            self.on_answer(answer.decisions, answer.audit, request.request_id, request.client)
        if answer.outcome == "denied":
            metrics.SIGNIN_FAILURES.labels(answer.method or "password").inc()
        elif answer.outcome == "locked":
            metrics.LOCKOUTS.inc()
