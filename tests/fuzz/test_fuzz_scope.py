"""The scope parser: a list of Scopes or ScopeError, whatever the text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.scope import Scope, ScopeError, format_scope, parse_scope, parse_scopes
from gateway.policy.patterns import is_repository_name

from tests.fuzz.profiles import FUZZ
from tests.fuzz.strategies import hostile_text, joined, pieces

scope_like = st.builds(
    lambda kind, name, actions, sep: f"{kind}{sep}{name}{sep}{actions}",
    st.one_of(st.sampled_from(["repository", "registry", "repository(plugin)"]), pieces),
    joined(),
    joined(),
    st.sampled_from([":", "::", ""]),
)


@FUZZ
@given(st.lists(st.one_of(scope_like, hostile_text), max_size=6), st.integers(1, 10))
def test_scopes_parse_or_raise_scope_error(values: list[str], max_scopes: int) -> None:
    try:
        scopes = parse_scopes(values, max_scopes=max_scopes)
    except ScopeError:
        return
    assert len(scopes) <= max_scopes
    for scope in scopes:
        assert isinstance(scope, Scope) and scope.actions
        if scope.type == "repository":
            assert is_repository_name(scope.name)
        assert all(0x21 <= ord(c) <= 0x7E for c in format_scope(scope))
        assert parse_scope(format_scope(scope)) == scope
