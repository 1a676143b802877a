"""The shortcuts `FileReader` takes for what most policy files hold, held to the long way.

`string` and `strings` take most scalars without resolving them (a plain scalar that starts
like a name, or any quoted one, is a string): whatever a scalar is written as, they give what
resolving it by the YAML 1.2 core schema gives, and report the rest. `fields` takes a mapping
of known keys, each once, in one pass: anything else in a mapping is still reported."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy import yamlnodes as yn
from gateway.policy.model import Role, Visibility
from gateway.policy.readfile import FileReader

PLAIN = st.sampled_from(
    ["alice", "team:qa", "platform/**", "true", "True", "false", "null", "Null", "~", "0",
     "12", "-3", "+4", "2027-06-30", "2027-02-30", "-x", "+x", "nope", "f", "t1", "n", "N/A",
     "1st", "x y", "a-b", "_u"]
)  # fmt: skip


@st.composite
def scalar_text(draw: st.DrawFn) -> str:
    """A scalar as YAML text: plain, single-quoted, double-quoted, or empty."""
    value = draw(PLAIN)
    style = draw(st.sampled_from(["plain", "single", "double", "empty"]))
    if style == "single":
        return f"'{value}'"
    if style == "double":
        return f'"{value}"'
    if style == "empty":
        return draw(st.sampled_from(["''", '""']))
    return value


def resolved(node: yn.Node) -> Any:
    value = yn.scalar(node)  # type: ignore[arg-type]
    return value if isinstance(value, str) and value else None


@given(st.lists(scalar_text(), min_size=1, max_size=6))
def test_strings_are_what_the_core_schema_resolves(texts: list[str]) -> None:
    node = yn.compose(f"k: [{', '.join(texts)}]\n", "f.yaml")
    assert isinstance(node, yn.MappingNode)
    items = node.value[0][1]
    reader = FileReader("f.yaml")
    expected = [(item, resolved(item)) for item in items.value]
    assert [reader.string(item, "x") for item in items.value] == [v for _, v in expected]
    assert reader.strings(items, "x") == [(item, v) for item, v in expected if v is not None]
    reported = sum(1 for _, v in expected if v is None)
    assert len(reader.problems) == 2 * reported  # once by string, once by strings
    assert all("must be a non-empty string" in p.message for p in reader.problems)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{to: [bob], actions: [pull], actions: [push], repositories: [x]}",
         "2:34: error: grants[0] in f.yaml: key 'actions' is repeated (first at line 2)"),
        ("{to: [bob], action: [pull], repositories: [x]}",
         "2:17: error: unknown key 'action' in grants[0] in f.yaml (expected: to, repositories, "
         "actions, role, description); did you mean 'actions'?"),
        ("{to: [bob], <<: {actions: [pull]}, repositories: [x]}",
         "2:17: error: YAML merge keys ('<<') are not supported in policy files"),
        ("{to: [bob], [actions]: [pull], repositories: [x]}",
         "2:17: error: keys of grants[0] in f.yaml must be plain names"),
    ],
)  # fmt: skip
def test_fields_report_what_is_not_a_known_key_written_once(entry: str, message: str) -> None:
    parsed = FileReader("f.yaml").read(f"grants:\n  - {entry}\n")
    found = [f"{p.location.line}:{p.location.column}: {p.severity}: {p.message}"
             for p in parsed.problems]  # fmt: skip
    assert message in found, found


def test_fields_take_quoted_keys_as_the_same_names() -> None:
    parsed = FileReader("f.yaml").read(
        "grants:\n  - {'to': [bob], \"actions\": [pull], repositories: [x]}\n"
    )
    assert [p.message for p in parsed.problems] == []
    assert parsed.grants[0].actions == {"pull"}


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("admin", "role must be one of viewer, contributor, owner, not 'admin'"),
        ("Owner", "role must be one of viewer, contributor, owner, not 'Owner'"),
        ("true", "role must be one of viewer, contributor, owner, not True"),
        ("1", "role must be one of viewer, contributor, owner, not 1"),
        ("", "role must be one of viewer, contributor, owner, not None"),
        ("[owner]", "role must be one of viewer, contributor, owner, not None"),
    ],
)
def test_a_choice_is_one_of_its_values_written_exactly(written: str, message: str) -> None:
    parsed = FileReader("f.yaml").read(
        f"grants:\n  - {{to: [bob], repositories: [x], role: {written}}}\n"
    )
    assert [p.message for p in parsed.problems] == [message]
    assert parsed.grants == []


def test_a_choice_written_right_is_its_member() -> None:
    parsed = FileReader("f.yaml").read(
        "grants:\n  - {to: [bob], repositories: [x], role: 'viewer'}\n"
        "namespaces:\n  qa: {visibility: public}\n"
    )
    assert [p.message for p in parsed.problems] == []
    assert parsed.grants[0].role is Role.VIEWER
    assert parsed.namespaces["qa"].visibility is Visibility.PUBLIC
