"""The pattern index finds exactly the patterns that match a name, for patterns of every shape
the pattern language allows: literal, `*`, `**` first, in the middle and last, and components
of text and `*` (`a*`, `*-b`, `a*b`, `*a*`)."""

from __future__ import annotations

import fnmatch
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.policy.index as index_module
from gateway.policy.index import PatternIndex, group
from gateway.policy.patterns import PatternError, compile_pattern

PIECES = ("", "a", "b", "ab", "a-b", "b.a")
NAME_COMPONENTS = ("a", "b", "ab", "ba", "a-b", "aab", "abb", "b.a", "a-b-b", "x")


def union(values: list[frozenset[Any]]) -> frozenset[Any]:
    return frozenset().union(*values)


def reference(pattern: str, name: str) -> bool:
    """Brute force: `*` within one component (fnmatch), `**` any number of components."""

    def match(pattern: list[str], parts: list[str]) -> bool:
        if not pattern:
            return not parts
        head, rest = pattern[0], pattern[1:]
        if head == "**":
            return any(match(rest, parts[i:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and match(rest, parts[1:])

    return match(pattern.split("/"), name.split("/"))


glob_components = st.lists(st.sampled_from(PIECES), min_size=2, max_size=4).map("*".join)
components = st.one_of(
    st.sampled_from(("a", "b", "ab", "a-b", "x", "*", "**")),
    glob_components,
)


def valid(text: str) -> bool:
    try:
        compile_pattern(text)
    except PatternError:
        return False
    return True


patterns = st.lists(components, min_size=1, max_size=5).map("/".join).filter(valid)
names = st.lists(st.sampled_from(NAME_COMPONENTS), min_size=1, max_size=6).map("/".join)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(patterns, min_size=1, max_size=25), probes=st.lists(names, max_size=30))
def test_matching_finds_exactly_the_matching_patterns(texts: list[str], probes: list[str]) -> None:
    rules = [((text,), text) for text in texts]
    index = PatternIndex.of(rules, frozenset, union)
    # The same rules in two parts (as the engine keeps one per policy file) answer the same.
    halves = PatternIndex([group(rules[::2]), group(rules[1::2])], frozenset, union)
    for name in probes + [text.replace("**", "a").replace("*", "b") for text in texts]:
        for _ in range(2):  # the second time along transitions made the first time
            found = union(index.matching(name))
        assert union(halves.matching(name)) == found
        expected = {text for text in texts if reference(text, name)}
        assert found == expected, name
        assert expected == {text for text in texts if compile_pattern(text).matches(name)}


def test_each_pattern_carries_every_item_filed_under_it() -> None:
    rules = [(("a/**", "**/b"), 1), (("a/**",), 2), (("c",), 3), (("*/b", "a/**"), 4)]
    index = PatternIndex.of(rules, frozenset, union)
    assert index.matching("a/b") == [{1, 2, 4}, {1, 4}]  # a/** ; then **/b and */b
    assert index.matching("c") == [{3}]
    assert index.matching("d/e") == []
    assert len(index) == 6


def test_components_of_text_and_star_are_found_by_prefix_suffix_or_both() -> None:
    texts = ["api-*", "*-cache", "*a*", "w*b", "ns/x*y*z", "**/v*/**"]
    index = PatternIndex.of([((t,), t) for t in texts], frozenset, union)
    cases = {
        "api-v1": {"api-*", "*a*"},
        "go-cache": {"*-cache", "*a*"},
        "web": {"w*b"},
        "wb": {"w*b"},
        "ns/xyz": {"ns/x*y*z"},
        "ns/xayz": {"ns/x*y*z"},
        "ns/yxz": set(),
        "a/v2/b": {"**/v*/**"},
        "v": {"**/v*/**"},
    }
    for name, expected in cases.items():
        assert union(index.matching(name)) == expected, name


def test_memory_stays_bounded_and_answers_right_whatever_names_are_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names chosen to make new states and transitions (a stream of distinct components)
    start the automata afresh at their bounds; the answers do not change."""
    monkeypatch.setattr(index_module, "STATES", 6)
    monkeypatch.setattr(index_module, "FLOATING_TRANSITIONS", 10)
    texts = ["**/cache", "*/tools", "a*/**", "ns/**/x*", "ns/api-*", "ns/*"]
    index = PatternIndex.of([((t,), t) for t in texts], frozenset, union)
    rng = random.Random(5)
    for i in range(500):
        name = rng.choice(["ns", "a1", f"w{i}"]) + "/" + rng.choice(["cache", f"x{i}", f"api-{i}"])
        assert union(index.matching(name)) == {t for t in texts if reference(t, name)}, name
        for automaton in index._compiled.values():
            assert len(automaton.states) <= 6
            assert automaton.remembered <= automaton.budget


def test_a_remembered_transition_holds_the_next_state_s_own_key() -> None:
    """A transition is the next state's key (no reference cycle between states), and the
    very object the state holds, so that remembering one costs a reference, not a set."""
    texts = ["**/cache", "*/tools", "a*/**", "ns/**/x*", "ns/api-*", "ns/*"]
    index = PatternIndex.of([((t,), t) for t in texts], frozenset, union)
    for i in range(200):
        index.matching(f"{['ns', 'a1', f'w{i}'][i % 3]}/x{i}/api-{i}/cache")
    checked = 0
    for automaton in [*index._compiled.values(), index._floating]:
        assert automaton is not None
        for state in automaton.states.values():
            for nodes in [*state.next.values(), state.default]:
                if nodes is not None and nodes in automaton.states:
                    assert nodes is automaton.states[nodes].nodes
                    checked += 1
    assert checked > 50
