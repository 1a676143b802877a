"""What the token endpoint answers: the body, its extra headers, and its audit fields, each
serialised once, for the request that made the answer and for every replay of it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from gateway import metrics
from gateway.auth.scope import Scope, format_scope
from gateway.jsontext import ascii_json
from gateway.responses import error_body

Access = tuple[tuple[str, str, tuple[str, ...]], ...]  # (type, name, granted actions) per scope


class SignedToken(NamedTuple):
    """A signed access token and what it grants."""

    token: str
    expires_in: int
    issued_at: str
    minted: float  # time.time() when it was signed
    access: Access

    def remaining(self, now: float) -> int:
        """`expires_in` for an answer sent at `now` (wall clock)."""
        return max(1, self.expires_in - int(now - self.minted))

    def granted(self) -> list[dict[str, Any]]:
        """The token's `access` claim, as the audit log shows it."""
        return [{"type": t, "name": n, "actions": list(a)} for t, n, a in self.access]

    def scope(self) -> str:
        """What was granted, as an OAuth2 `scope` field: the resources with any action."""
        return " ".join(format_scope(Scope(t, n, a)) for t, n, a in self.access if a)


class TokenAnswer(NamedTuple):
    """One answer to a token request: an issued token or a refusal.

    The body of an issued token is `head`, then its `expires_in` at the moment of sending,
    then `tail`; a refusal's body is `head` alone. `audit` holds the decision's audit fields
    as a JSON object's inside (no braces): the request's own fields (time, request id,
    client, duration) are added by `TokenService` when it writes the line.
    """

    status: int
    outcome: str  # issued | denied | rejected | locked (the audit's and the metrics' word)
    head: bytes
    tail: bytes
    signed: SignedToken | None
    headers: tuple[tuple[bytes, bytes], ...]
    audit: str
    decisions: str  # per requested resource, one of metrics.DECISION_CODES
    method: str  # how the caller signed in ("" when it did not get that far)
    refresh_token: bool = False  # the body carries a refresh token: never replayed
    vouched_until: float | None = None  # a slow sign-in's bound (Identity.vouched_until)

    def body(self, now: float) -> bytes:
        if self.signed is None:
            return self.head
        return self.head + str(self.signed.remaining(now)).encode() + self.tail


def audit_fields(record: dict[str, Any]) -> str:
    """The decision's audit fields, serialised once: a JSON object without its braces."""
    return ascii_json(record)[1:-1]


def issued(
    signed: SignedToken,
    scopes: Sequence[Scope],
    record: dict[str, Any],
    method: str,
    *,
    extra: dict[str, str] | None = None,
    vouched_until: float | None = None,
) -> TokenAnswer:
    """A 200 with the signed token; `extra` fields (refresh_token, scope) follow `issued_at`."""
    # A JWS compact token is base64url and dots: nothing in it needs JSON escaping.
    head = f'{{"token":"{signed.token}","access_token":"{signed.token}","expires_in":'
    # issued_at is RFC 3339: nothing in it needs escaping.
    tail = f',"issued_at":"{signed.issued_at}"'
    for name, value in (extra or {}).items():
        tail += f',"{name}":{json.dumps(value)}'
    record = {"event": "token", "outcome": "issued", "status": 200, **record}
    record["granted"] = signed.granted()
    codes = ""
    denied = []
    for s, (_, _, granted) in zip(scopes, signed.access, strict=True):
        codes += metrics.decision_code(len(s.actions), len(granted))
        refused = [a for a in s.actions if a not in granted]
        if refused:
            denied.append({"type": s.type, "name": s.name, "actions": refused})
    if denied:  # what was asked and not granted: searchable in the audit (`select(.denied)`)
        record["denied"] = denied
    return TokenAnswer(
        status=200,
        outcome="issued",
        head=head.encode(),
        tail=(tail + "}").encode(),
        signed=signed,
        headers=(),
        audit=audit_fields(record),
        decisions=codes,
        method=method,
        refresh_token=bool(extra and "refresh_token" in extra),
        vouched_until=vouched_until,
    )


def refused(
    status: int,
    outcome: str,
    code: str,
    message: str,
    record: dict[str, Any],
    *,
    detail: Any = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> TokenAnswer:
    """An error in the registry's format; `record` says why, for the audit only."""
    record = {"event": "token", "outcome": outcome, "status": status, **record}
    return TokenAnswer(
        status=status,
        outcome=outcome,
        head=error_body(code, message, detail),
        tail=b"",
        signed=None,
        headers=headers,
        audit=audit_fields(record),
        decisions="",
        method=str(record.get("auth") or ""),
    )
