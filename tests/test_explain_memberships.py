"""`explain` names the membership that brought the subject under each rule: a team it is
listed in, an LDAP group mapped to the team, or being signed in; in text and in JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.cli import main
from gateway.policy.engine import Engine
from gateway.policy.explain import explain, render_text
from gateway.policy.load import load_texts
from gateway.policy.model import Subject

QA_DN = "cn=qa,ou=groups,dc=example,dc=org"
POLICY = {
    "people.yaml": """\
users:
  carol: {}
  dave: {}
  erin: {}
""",
    "teams.yaml": f"""\
teams:
  qa:
    viewers: [carol]
    ldap_groups:
      - "{QA_DN}"
      - group: "cn=qa-leads,ou=groups,dc=example,dc=org"
        role: owner
namespaces:
  qa:
    teams: [qa]
    visibility: private
""",
    "access.yaml": """\
grants:
  - to: [team:qa]
    repositories: ["platform/**"]
    actions: [pull]
  - to: [authenticated]
    repositories: ["tools/**"]
    actions: [pull]
  - to: [user:erin]
    repositories: ["platform/**"]
    actions: [pull]
""",
}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_texts(POLICY, revision="r1").policy)


def reasons(engine: Engine, subject: Subject, scope: str) -> list[dict[str, Any]]:
    (resource,) = explain(engine, subject, [scope])["resources"]
    found: list[dict[str, Any]] = resource["actions"][0]["reasons"]
    return found


def test_a_listed_member_is_named_in_text_and_json(engine: Engine) -> None:
    carol = Subject("user", "carol")
    (grant,) = reasons(engine, carol, "repository:platform/api:pull")
    assert grant["rule"] == "grant of pull to team:qa on platform/**"
    assert grant["memberships"] == [
        {
            "principal": "team:qa",
            "through": "member",
            "role": "viewer",
            "group": None,
            "location": "teams.yaml:2",
            "text": "carol is a member of team:qa",
        }
    ]
    text = render_text(explain(engine, carol, ["repository:platform/api:pull"]))
    assert (
        "  pull    allowed  grant of pull to team:qa on platform/** "
        "(carol is a member of team:qa) (access.yaml:2)"
    ) in text.splitlines()


def test_an_ldap_group_is_named(engine: Engine) -> None:
    """dave is in no team by name: his directory group brings him into team:qa."""
    dave = Subject("user", "dave", groups=frozenset({QA_DN.upper()}), directory=True)
    (owns,) = reasons(engine, dave, "repository:qa/tool:pull")
    assert owns["rule"] == "user:dave is viewer in team qa, which owns namespace qa"
    assert [(m["through"], m["group"], m["role"]) for m in owns["memberships"]] == [
        ("ldap_group", QA_DN, "viewer")
    ]
    assert owns["memberships"][0]["text"] == f"dave is in team:qa through LDAP group {QA_DN}"
    # Without the group, no membership and no right.
    assert reasons(engine, Subject("user", "dave"), "repository:qa/tool:pull")[0]["rule"] == (
        "no rule grants this"
    )


def test_every_way_in_is_listed(engine: Engine) -> None:
    """carol is a listed viewer and also in the leads' group (owner): both ways are named."""
    carol = Subject("user", "carol", groups=frozenset({"cn=qa-leads,ou=groups,dc=example,dc=org"}))
    (owns,) = reasons(engine, carol, "repository:qa/tool:delete")
    assert owns["rule"] == "user:carol is owner in team qa, which owns namespace qa"
    assert [(m["through"], m["role"]) for m in owns["memberships"]] == [
        ("member", "viewer"),
        ("ldap_group", "owner"),
    ]


def test_signed_in_and_direct_grants(engine: Engine) -> None:
    erin = Subject("user", "erin")
    (tools,) = reasons(engine, erin, "repository:tools/x:pull")
    assert [m["text"] for m in tools["memberships"]] == ["erin is signed in"]
    (direct,) = reasons(engine, erin, "repository:platform/api:pull")
    assert direct["rule"] == "grant of pull to user:erin on platform/**"
    assert direct["memberships"] == []
    # Anonymous is in nothing.
    (denied,) = reasons(engine, Subject("anonymous"), "repository:tools/x:pull")
    assert denied["memberships"] == []


def test_the_command_prints_memberships(capsys: pytest.CaptureFixture[str]) -> None:
    """The example policy: carol pulls platform/ as a viewer of team:platform and of team:qa."""
    assert main(["explain", "user:carol", "repository:platform/api:pull"]) == 0
    out = capsys.readouterr().out
    assert (
        "grant of pull to team:qa on platform/** (carol is a member of team:qa) "
        "(policies/access.yaml:2)"
    ) in out
    main(["explain", "--format", "json", "user:carol", "repository:platform/api:pull"])
    data = json.loads(capsys.readouterr().out)
    found = [r["memberships"] for r in data["resources"][0]["actions"][0]["reasons"]]
    assert [[m["principal"] for m in ms] for ms in found] == [["team:platform"], ["team:qa"]]
