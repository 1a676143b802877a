import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.scope import (
    Scope,
    ScopeError,
    format_scope,
    is_valid_repository_name,
    parse_scope,
    parse_scopes,
)

components = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*", fullmatch=True).filter(
    lambda c: len(c) <= 40
)
repository_names = st.lists(components, min_size=1, max_size=4).map("/".join)
actions = st.lists(
    st.sampled_from(["pull", "push", "delete", "*", "metadata-read", "scanner_pull"]),
    min_size=1,
    max_size=4,
)
type_classes = st.none() | st.from_regex(r"[a-zA-Z0-9]{1,10}", fullmatch=True)
repository_scopes = st.builds(
    Scope,
    type=st.just("repository"),
    name=repository_names,
    actions=actions.map(tuple),
    type_class=type_classes,
)
other_scopes = st.builds(
    Scope,
    type=st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True).filter(lambda t: t != "repository"),
    name=st.from_regex(r"[\x21-\x7e]{1,60}", fullmatch=True),
    actions=actions.map(tuple),
    type_class=type_classes,
)


def test_parse_simple_repository_scope() -> None:
    scope = parse_scope("repository:library/alpine:pull")
    assert scope == Scope("repository", "library/alpine", ("pull",))
    assert scope.resource() == ("repository", "library/alpine")


def test_actions_are_sorted_and_deduplicated() -> None:
    scope = parse_scope("repository:team/app:push,pull,push")
    assert scope.actions == ("pull", "push")


def test_registry_catalog_scope() -> None:
    scope = parse_scope("registry:catalog:*")
    assert scope == Scope("registry", "catalog", ("*",))
    assert format_scope(scope) == "registry:catalog:*"


def test_type_class_is_split_from_type() -> None:
    scope = parse_scope("repository(plugin):a/b:pull")
    assert scope.type == "repository"
    assert scope.type_class == "plugin"
    assert scope.resource() == ("repository", "a/b")
    assert format_scope(scope) == "repository(plugin):a/b:pull"


def test_non_repository_name_may_contain_a_colon() -> None:
    scope = parse_scope("mirror:127.0.0.1:5000/foo:pull")
    assert scope.name == "127.0.0.1:5000/foo"
    assert scope.actions == ("pull",)


def test_repository_name_with_host_port_is_rejected() -> None:
    with pytest.raises(ScopeError, match=re.escape("'127.0.0.1:5000/foo'")):
        parse_scope("repository:127.0.0.1:5000/foo:pull")


@pytest.mark.parametrize(
    "name",
    ["a", "a/b/c", "a.b", "a_b", "a__b", "a-b", "a---b", "0/1", "library/alpine", "x" * 255],
)
def test_valid_repository_names(name: str) -> None:
    assert is_valid_repository_name(name)
    assert parse_scope(f"repository:{name}:pull").name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "Foo/bar",
        "a..b",
        "a/../b",
        "..",
        "a___b",
        "-a",
        "a-",
        ".a",
        "a/",
        "/a",
        "a//b",
        "a b",
        "a" * 256,
        "é",
    ],
)
def test_invalid_repository_names(name: str) -> None:
    assert not is_valid_repository_name(name)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected 'type:name:actions'"),
        ("repository", "expected 'type:name:actions'"),
        ("repository:foo", "expected 'type:name:actions'"),
        ("repository::pull", "name is empty"),
        (":foo:pull", "resource type"),
        ("Repository:foo:pull", "resource type"),
        ("repository(:foo:pull", "resource type"),
        ("repository(pl-ugin):foo:pull", "resource type"),
        ("repository:Foo:pull", "repository name 'Foo'"),
        ("repository:a/../b:pull", "repository name"),
        ("repository:a..b:pull", "repository name"),
        ("repository:" + "a" * 256 + ":pull", "256 characters"),
        ("repository:foo:", "no actions"),
        ("repository:foo:pull,", "action ''"),
        ("repository:foo:,pull", "action ''"),
        ("repository:foo:PULL", "action 'PULL'"),
        ("repository:foo:pull push", "action 'pull push'"),
        ("registry:cat alog:*", "whitespace"),
    ],
)
def test_malformed_scopes_are_rejected_with_the_offending_text(text: str, reason: str) -> None:
    with pytest.raises(ScopeError) as info:
        parse_scope(text)
    message = str(info.value)
    assert reason in message
    assert (repr(text) if len(text) <= 80 else text[:40]) in message


def test_error_message_for_huge_input_is_bounded() -> None:
    with pytest.raises(ScopeError) as info:
        parse_scope("repository:" + "a" * 10_000 + ":pull")
    assert len(str(info.value)) < 300


def test_scope_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_scope("nonsense")


def test_parse_scopes_merges_repeated_scopes() -> None:
    scopes = parse_scopes(
        ["repository:a/b:pull", "repository:a/b:pull", "repository:a/b:push", "repository:c:pull"]
    )
    assert scopes == [
        Scope("repository", "a/b", ("pull", "push")),
        Scope("repository", "c", ("pull",)),
    ]


def test_parse_scopes_splits_space_separated_values() -> None:
    scopes = parse_scopes(["repository:a:pull,push repository:b:pull", "registry:catalog:*"])
    assert [format_scope(s) for s in scopes] == [
        "repository:a:pull,push",
        "repository:b:pull",
        "registry:catalog:*",
    ]


def test_parse_scopes_keeps_order_of_first_appearance() -> None:
    scopes = parse_scopes(["repository:z:pull", "repository:a:pull", "repository:z:push"])
    assert [s.name for s in scopes] == ["z", "a"]
    assert scopes[0].actions == ("pull", "push")


def test_parse_scopes_merges_class_and_bare_type() -> None:
    scopes = parse_scopes(["repository(plugin):a:pull", "repository:a:push"])
    assert scopes == [Scope("repository", "a", ("pull", "push"), "plugin")]


def test_parse_scopes_skips_empty_values() -> None:
    assert parse_scopes(["", "  ", "repository:a:pull"]) == [Scope("repository", "a", ("pull",))]
    assert parse_scopes([]) == []


def test_parse_scopes_counts_duplicates_against_the_limit() -> None:
    assert len(parse_scopes(["repository:a:pull"] * 3, max_scopes=3)) == 1
    with pytest.raises(ScopeError, match="at most 3"):
        parse_scopes(["repository:a:pull"] * 4, max_scopes=3)
    with pytest.raises(ScopeError, match="at most 3"):
        parse_scopes([" ".join(["repository:a:pull"] * 4)], max_scopes=3)


def test_parse_scopes_reports_the_bad_scope() -> None:
    with pytest.raises(ScopeError, match="'repository:Bad:pull'"):
        parse_scopes(["repository:ok:pull repository:Bad:pull"])


@given(st.one_of(repository_scopes, other_scopes))
def test_format_then_parse_round_trips(scope: Scope) -> None:
    assert parse_scope(format_scope(scope)) == scope


@given(st.one_of(repository_scopes, other_scopes))
def test_parse_then_format_is_canonical(scope: Scope) -> None:
    text = format_scope(scope)
    assert format_scope(parse_scope(text)) == text


@given(st.lists(st.one_of(repository_scopes, other_scopes), max_size=20))
def test_parse_scopes_yields_one_scope_per_resource(scopes: list[Scope]) -> None:
    parsed = parse_scopes([" ".join(format_scope(s) for s in scopes)])
    resources = [s.resource() for s in parsed]
    assert len(resources) == len(set(resources))
    assert set(resources) == {s.resource() for s in scopes}
    for scope in scopes:
        merged = next(p for p in parsed if p.resource() == scope.resource())
        assert set(scope.actions) <= set(merged.actions)


@given(st.text(max_size=80))
def test_arbitrary_text_either_parses_or_raises_scope_error(text: str) -> None:
    try:
        scope = parse_scope(text)
    except ScopeError:
        return
    assert parse_scope(format_scope(scope)) == scope
