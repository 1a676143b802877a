"""The Basic parser: credentials, None (anonymous) or AuthenticationFailed, never a crash,
and a refusal never carries what was sent."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.basic import basic_credentials
from gateway.auth.identity import AuthenticationFailed

from tests.fuzz.profiles import FUZZ
from tests.fuzz.strategies import hostile_text

encoded = st.one_of(
    st.binary(max_size=64).map(lambda raw: base64.b64encode(raw).decode()),
    st.tuples(hostile_text, hostile_text).map(
        lambda pair: base64.b64encode(
            f"{pair[0]}:{pair[1]}".encode("utf-8", "surrogatepass")
        ).decode()
    ),
    # Header bytes as the endpoint reads them: Latin-1 text.
    st.binary(max_size=64).map(lambda raw: raw.decode("latin-1")),
    hostile_text,
)


@FUZZ
@given(encoded)
def test_basic_credentials_parse_or_are_refused(value: str) -> None:
    try:
        parsed = basic_credentials(value)
    except AuthenticationFailed as refused:
        assert refused.reason == "malformed basic credentials" and refused.username == ""
        return
    if parsed is None:
        assert base64.b64decode(value.strip()) == b":"
        return
    username, password = parsed
    assert username and ":" not in username
    assert base64.b64decode(value.strip()).decode() == f"{username}:{password}"
