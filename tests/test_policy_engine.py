"""The engine's decisions and their reasons, on the example policy and small ones."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.policy.engine import Engine
from gateway.policy.load import load_directory, load_texts
from gateway.policy.model import ANONYMOUS_SUBJECT, Subject


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_directory(Path("policies")).policy)


def granted(engine: Engine, subject: str, scope: str) -> tuple[str, ...]:
    type_, rest = scope.split(":", 1)
    name, _, actions = rest.rpartition(":")
    return engine.decide(Subject.parse(subject), type_, name, actions.split(",")).granted


def reasons(engine: Engine, subject: str, repository: str, action: str) -> list[str]:
    decision = engine.decide(Subject.parse(subject), "repository", repository, [action])
    return [str(r) for r in decision.actions[0].reasons]


EXAMPLE_DECISIONS = pytest.mark.parametrize(
    ("subject", "scope", "expected"),
    [
        ("user:bob", "repository:platform/api:pull,push,delete", ("pull", "push")),
        ("user:alice", "repository:anything/at/all:delete", ("delete",)),
        ("user:carol", "repository:platform/api:push,pull", ("pull",)),
        ("robot:release", "repository:platform/prod/api:pull,push,delete", ("pull", "push")),
        ("user:bob", "repository:platform/prod/api:push", ()),
        ("anonymous", "repository:library/alpine:pull,push", ("pull",)),
        ("anonymous", "repository:qa/runner:pull", ()),
        ("user:nobody", "repository:qa/runner:pull", ()),
        ("user:nobody", "repository:library/alpine:pull", ("pull",)),
        ("robot:ci-deploy", "repository:qa/runner:pull", ("pull",)),
        ("user:alice", "registry:catalog:*", ("*",)),
        ("user:bob", "registry:catalog:*", ()),
        ("user:alice", "repository:platform/api:*", ("*",)),
        ("user:bob", "repository:platform/api:*", ()),
        ("user:bob", "repository:platform/api:fly", ()),
        ("user:alice", "repository:Not/Valid:pull", ()),
        ("user:alice", "plugin:x:pull", ()),
        ("robot:ci-deploy", "repository:platform/svc-1:push,pull,push,fly", ("push", "pull")),
        ("user:alice", "registry:catalog:pull,*", ("*",)),
    ],
)


@EXAMPLE_DECISIONS
def test_decisions_on_the_example_policy(
    engine: Engine, subject: str, scope: str, expected: tuple[str, ...]
) -> None:
    assert granted(engine, subject, scope) == expected


@EXAMPLE_DECISIONS
def test_granted_answers_as_decide_without_reasons(
    engine: Engine, subject: str, scope: str, expected: tuple[str, ...]
) -> None:
    type_, rest = scope.split(":", 1)
    name, _, actions = rest.rpartition(":")
    assert engine.granted(Subject.parse(subject), type_, name, actions.split(",")) == expected


def test_granted_remembers_a_bounded_number_of_subjects() -> None:
    engine = Engine(load_directory(Path("policies")).policy)
    engine.SUBJECT_MEMO_SIZE = 4
    for i in range(10):
        stranger = Subject("user", f"stranger-{i}", directory=True)
        assert engine.granted(stranger, "repository", "qa/runner", ["pull", "push"]) == ("pull",)
        assert len(engine._subject_facts) <= 4
    ci, asked = Subject.parse("robot:ci-deploy"), ("pull", "push")
    for _ in range(2):  # the second time from the memo
        assert engine.granted(ci, "repository", "platform/svc-1", asked) == ("pull", "push")
        assert engine.granted(ci, "repository", "platform/prod/svc-1", asked) == ("pull",)
        assert ci in engine._subject_facts


def test_restriction_beats_an_admin_not_listed() -> None:
    text = """\
    users:
      root: {admin: true}
    restrictions:
      - repositories: ["prod/**"]
        actions: [delete]
        only: []
    """
    engine = Engine(load_texts({"p.yaml": textwrap.dedent(text)}).policy)
    assert granted(engine, "user:root", "repository:prod/a:pull,delete") == ("pull",)
    assert reasons(engine, "user:root", "prod/a", "delete") == [
        "restricted to nobody on prod/** (p.yaml:4)"
    ]


def test_reasons_name_every_rule_and_its_line(engine: Engine) -> None:
    assert reasons(engine, "user:carol", "platform/api", "pull") == [
        "user:carol is viewer in team platform, which owns namespace platform (policies/teams.yaml:13)",
        "grant of pull to team:qa on platform/** (policies/access.yaml:2)",
    ]
    assert reasons(engine, "user:carol", "platform/api", "push") == ["no rule grants this"]


def test_ldap_groups_map_to_team_roles() -> None:
    text = """\
    users:
      erin: {}
    teams:
      ops:
        ldap_groups:
          - {group: "cn=ops,ou=groups,dc=example,dc=org", role: contributor}
    namespaces:
      ops: {teams: [ops]}
    """
    engine = Engine(load_texts({"p.yaml": textwrap.dedent(text)}).policy)
    erin = Subject("user", "erin", frozenset({"CN=ops,ou=groups,dc=example,dc=org"}))
    assert engine.decide(erin, "repository", "ops/x", ["pull", "push"]).granted == ("pull", "push")
    assert engine.decide(Subject("user", "erin"), "repository", "ops/x", ["pull"]).granted == ()


def test_grants_to_anonymous_reach_everyone() -> None:
    text = (
        "users:\n  u: {}\ngrants:\n  - {to: anonymous, repositories: ['pub/*'], actions: [pull]}\n"
    )
    engine = Engine(load_texts({"p.yaml": text}).policy)
    assert engine.decide(ANONYMOUS_SUBJECT, "repository", "pub/x", ["pull"]).granted == ("pull",)
    assert granted(engine, "user:u", "repository:pub/x:pull") == ("pull",)
    assert granted(engine, "user:u", "repository:pub/x/y:pull") == ()


def test_decision_carries_the_policy_revision(engine: Engine) -> None:
    decision = engine.decide(ANONYMOUS_SUBJECT, "repository", "library/x", ["pull"])
    assert decision.revision == engine.policy.revision
    assert decision.access() == {"type": "repository", "name": "library/x", "actions": ["pull"]}
