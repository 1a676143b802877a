"""The urlencoded parser and the two token requests built on it: parameters as Starlette
reads them, or BadRequest; a TokenRequest always, never an exception."""

from __future__ import annotations

import urllib.parse

from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.request import BadRequest, TokenRequest, from_form, from_query, parse_urlencoded

from tests.fuzz.profiles import FUZZ
from tests.fuzz.strategies import joined

field = st.builds(
    lambda key, value, sep: f"{key}{sep}{value}",
    st.one_of(
        st.sampled_from(["service", "scope", "grant_type", "username", "password"]), joined()
    ),
    joined(),
    st.sampled_from(["=", "", "=="]),
)
encoded = st.one_of(
    st.binary(max_size=200),
    st.lists(field, max_size=12).map(
        lambda fields: "&".join(fields).encode("utf-8", "surrogatepass")
    ),
)


@FUZZ
@given(encoded, st.integers(1, 50))
def test_parse_urlencoded_reads_as_starlette_or_refuses(data: bytes, max_fields: int) -> None:
    try:
        params = parse_urlencoded(data, max_fields)
    except BadRequest as exc:
        assert exc.code == "REQUEST_TOO_LARGE" and exc.status == 400
        return
    expected: dict[str, list[str]] = {}
    for key, value in urllib.parse.parse_qsl(data.decode("latin-1"), keep_blank_values=True):
        expected.setdefault(key, []).append(value)
    assert params == expected


@FUZZ
@given(encoded, st.one_of(st.none(), st.binary(max_size=80)))
def test_token_requests_are_always_built(data: bytes, authorization: bytes | None) -> None:
    query = from_query(data, authorization, request_id="r", client=None, user_agent="", started=0)
    form = from_form(data, request_id="r", client=None, user_agent="", started=0)
    for request in (query, form):
        assert isinstance(request, TokenRequest)
        assert request.problem is None or isinstance(request.problem, BadRequest)
        assert all(isinstance(scope, str) for scope in request.scopes)
