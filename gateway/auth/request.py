"""A token request, whatever its transport: the Docker token GET or the OAuth2 POST form.

Both transports become one `TokenRequest`; `TokenService.answer` takes it from there. Reading
the bytes off the connection is the endpoint's work (`gateway/auth/endpoint.py`); what the
bytes say is read here.
"""

from __future__ import annotations

import functools
import urllib.parse
from typing import NamedTuple

MAX_QUERY = 8192
MAX_FORM = 16384
MAX_FIELDS = MAX_FORM // 8  # a field takes at least `k=&`: more cannot fit in a valid form
MAX_REPLAYED_QUERY = 2048  # longer queries are answered afresh every time
_TRUE = ("true", "1", "yes")


class BadRequest(Exception):
    """A request that cannot be answered as asked: its code and status go to the client."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class Credentials(NamedTuple):
    """How the caller says who it is, as sent; nothing here is checked yet.

    `kind` is `none`, `authorization` (the GET's Authorization header, whole, in `secret`),
    `password` (the form's username and password), `refresh_token` (in `secret`) or
    `unsupported` (a form with another grant type).
    """

    kind: str
    username: str = ""
    secret: str = ""

    def proof(self) -> bytes:
        """The bytes a remembered sign-in is keyed on (as a MAC): the same bytes, the same
        caller. Empty for kinds that are never remembered."""
        if self.kind == "authorization":
            return self.secret.encode("latin-1")
        if self.kind == "password":
            return b"password\0" + self.username.encode() + b"\0" + self.secret.encode()
        return b""


NO_CREDENTIALS = Credentials("none")


class TokenRequest(NamedTuple):
    """What one client asked for, and who it is as far as the transport knows.

    A NamedTuple rather than a frozen dataclass: one is made for every token request, and a
    frozen dataclass's `__init__` (one `object.__setattr__` per field) costs three times as
    much."""

    method: str  # GET | POST
    request_id: str
    client: str | None  # the peer's address
    user_agent: str
    started: float  # time.perf_counter() when the request arrived
    service: str | None = None
    scopes: tuple[str, ...] = ()
    credentials: Credentials = NO_CREDENTIALS
    offline: bool = False  # a refresh token is wanted as well
    grant_type: str | None = None  # POST only
    client_id: str | None = None  # POST only
    # The raw query of a GET: an identical request may be answered again as it was.
    replay_key: bytes | None = None
    # What the transport already found wrong (too large, not a form): answered as an error.
    problem: BadRequest | None = None


# The same few scopes come again and again, percent-encoded the same way.
_unquote = functools.lru_cache(maxsize=4096)(urllib.parse.unquote_plus)


def parse_urlencoded(data: bytes, max_fields: int = MAX_FIELDS) -> dict[str, list[str]]:
    """The parameters of a query string or an urlencoded form, every value of each, read as
    Starlette's QueryParams reads them (the bytes as Latin-1, then `+` is a space and `%XX`
    is UTF-8 with replacement; blank values kept); BadRequest beyond `max_fields`."""
    params: dict[str, list[str]] = {}
    parts = data.decode("latin-1").split("&")
    if len(parts) > max_fields:
        raise BadRequest("REQUEST_TOO_LARGE", f"more than {max_fields} parameters")
    for part in parts:
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


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def from_query(
    query: bytes,
    authorization: bytes | None,
    *,
    request_id: str,
    client: str | None,
    user_agent: str,
    started: float,
) -> TokenRequest:
    """The Docker token GET: `service`, `scope` (repeated), `offline_token`, HTTP Basic."""
    service, scopes, offline, problem = _read_query(query)
    return TokenRequest(
        "GET",
        request_id,
        client,
        user_agent,
        started,
        service=service,
        scopes=scopes,
        credentials=Credentials("authorization", secret=authorization.decode("latin-1"))
        if authorization
        else NO_CREDENTIALS,
        offline=offline,
        replay_key=query if len(query) <= MAX_REPLAYED_QUERY else None,
        problem=problem,
    )


@functools.lru_cache(maxsize=4096)
def _read_query(query: bytes) -> tuple[str | None, tuple[str, ...], bool, BadRequest | None]:
    """What a query says (service, scopes, offline_token), or what is wrong with it. Clients
    send the same few queries again and again: each is read once while it stays in use."""
    try:
        if len(query) > MAX_QUERY:
            raise BadRequest("REQUEST_TOO_LARGE", f"the query is longer than {MAX_QUERY} bytes")
        params = parse_urlencoded(query)
    except BadRequest as exc:
        return None, (), False, exc
    offline = (_first(params, "offline_token") or "").lower() in _TRUE
    return _first(params, "service"), tuple(params.get("scope", ())), offline, None


def from_form(
    body: bytes, *, request_id: str, client: str | None, user_agent: str, started: float
) -> TokenRequest:
    """The OAuth2 POST form (distribution's oauth.md): password and refresh_token grants.

    A grant type other than those two reads as credentials of kind `unsupported`, refused
    when the service comes to sign the caller in (after the service and scopes are checked).
    """
    try:
        params = parse_urlencoded(body)
    except BadRequest as exc:
        return TokenRequest("POST", request_id, client, user_agent, started, problem=exc)
    grant_type = _first(params, "grant_type") or ""
    if grant_type == "password":
        credentials = Credentials(
            "password", _first(params, "username") or "", _first(params, "password") or ""
        )
    elif grant_type == "refresh_token":
        credentials = Credentials("refresh_token", secret=_first(params, "refresh_token") or "")
    else:
        credentials = Credentials("unsupported")
    return TokenRequest(
        "POST",
        request_id,
        client,
        user_agent,
        started,
        service=_first(params, "service"),
        scopes=tuple(params.get("scope", ())),
        credentials=credentials,
        # A refresh grant keeps its refresh token: it does not rotate.
        offline=_first(params, "access_type") == "offline" and grant_type == "password",
        grant_type=grant_type,
        client_id=(_first(params, "client_id") or "")[:100],
    )
