"""Repository patterns: what each form matches, and `X/**` covering `X` itself everywhere."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.policy.diff import diff_policies
from gateway.policy.engine import Engine
from gateway.policy.explain import explain
from gateway.policy.load import load_directory, load_texts
from gateway.policy.model import Subject
from gateway.policy.patterns import compile_pattern


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("platform/api", ["platform/api"], ["platform/api/v2", "platform"]),
        ("platform/*", ["platform/api"], ["platform/prod/api", "platform"]),
        ("platform/**", ["platform", "platform/api", "platform/prod/api"], ["platforms", "p/x"]),
        ("platform/prod/**", ["platform/prod", "platform/prod/a/b"], ["platform/production"]),
        ("a/**/b", ["a/b", "a/x/b", "a/x/y/b"], ["a/b/c", "b"]),
        ("a/**/b/**", ["a/b", "a/x/b/c"], ["a", "a/x"]),
        ("**/cache", ["cache", "team/cache", "a/b/cache"], ["team/cache2"]),
        ("*/**", ["alpine", "library/alpine", "a/b/c"], []),
        ("x/*/**", ["x/a", "x/a/b"], ["x"]),
        ("**", ["alpine", "a/b/c"], []),
    ],
)
def test_what_a_pattern_matches(pattern: str, matches: list[str], misses: list[str]) -> None:
    compiled = compile_pattern(pattern)
    assert [name for name in matches if not compiled.matches(name)] == []
    assert [name for name in misses if compiled.matches(name)] == []


@pytest.fixture(scope="module")
def example() -> Engine:
    return Engine(load_directory(Path("policies")).policy)


def test_a_restriction_on_x_slash_globstar_protects_x(example: Engine) -> None:
    bob = Subject.parse("user:bob")
    asked = ("pull", "push", "delete")
    assert example.granted(bob, "repository", "platform/prod", asked) == ("pull",)
    assert example.decide(bob, "repository", "platform/prod", asked).granted == ("pull",)
    release = Subject.parse("robot:release")  # and its grant on platform/prod/** reaches it too
    assert example.granted(release, "repository", "platform/prod", asked) == ("pull", "push")


def test_explain_names_the_restriction_on_x(example: Engine) -> None:
    result = explain(example, Subject.parse("user:bob"), ["repository:platform/prod:push"])
    (push,) = result["resources"][0]["actions"]
    assert not push["allowed"]
    assert push["reasons"] == [
        {
            "effect": "deny",
            "rule": "restricted to robot:release, user:alice on platform/prod/**",
            "location": "policies/access.yaml:12",
            "memberships": [],
        }
    ]


POLICY = """\
users:
  bob: {}
teams:
  dev: {contributors: [bob]}
namespaces:
  platform: {teams: [dev]}
restrictions:
  - repositories: [%s]
    actions: [push]
    only: []
"""


def test_the_diff_probes_x_for_x_slash_globstar() -> None:
    """Only `platform/prod` itself differs: `X/*/**` is `X/**` without `X`."""
    old = load_texts({"p.yaml": POLICY % '"platform/prod/**"'}, revision="old").policy
    new = load_texts({"p.yaml": POLICY % '"platform/prod/*/**"'}, revision="new").policy
    changes = [(s.subject, c) for s in diff_policies(old, new).subjects for c in s.access]
    teams = [c for t in diff_policies(old, new).teams for _, c in t.access]
    found = {(c.repositories, c.gained) for _, c in changes} | {
        (c.repositories, c.gained) for c in teams
    }
    assert found and all(where == "platform/prod" for where, _ in found), found
    assert {gained for _, gained in found} == {("push",)}


def test_a_grant_on_x_slash_globstar_reaches_x() -> None:
    text = """\
    users:
      dave: {}
    grants:
      - {to: [dave], repositories: ["tools/**"], actions: [pull, push]}
    """
    engine = Engine(load_texts({"p.yaml": textwrap.dedent(text)}).policy)
    dave = Subject.parse("user:dave")
    assert engine.granted(dave, "repository", "tools", ["push"]) == ("push",)
    assert engine.granted(dave, "repository", "toolsx", ["push"]) == ()


def test_the_diff_shows_x_apart_from_namespace_x() -> None:
    """A row `tools/**` stands for namespace tools; the repository `tools` has its own row."""
    base = "users:\n  dave: {}\nnamespaces:\n  tools: {}\n"
    grant = "grants:\n  - {to: [dave], repositories: ['tools/**'], actions: [pull, push]}\n"
    old = load_texts({"p.yaml": base}, revision="old").policy
    new = load_texts({"p.yaml": base + grant}, revision="new").policy
    (dave,) = diff_policies(old, new).subjects
    rows = [(c.repositories, c.gained, c.exceptions) for c in dave.access]
    # the global namespace is protected: dave pulled `tools` already
    assert rows == [("tools", ("push",), ()), ("tools/**", ("pull", "push"), ())]
