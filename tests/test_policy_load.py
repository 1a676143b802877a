"""The loader: every problem reported at once, each at its file:line:column."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.policy.load import PolicyError, load_directory, load_texts
from gateway.policy.model import Principal, Role, Visibility

BCRYPT = "$2b$12$" + "a" * 53
ROBOT = "0" * 64


def problems(texts: dict[str, str]) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_texts({k: textwrap.dedent(v) for k, v in texts.items()})
    return [str(p) for p in info.value.problems]


def test_example_policy_loads() -> None:
    policy = load_directory(Path("policies")).policy
    assert policy.users["alice"].admin
    assert policy.namespaces["library"].visibility is Visibility.PUBLIC
    assert policy.namespaces["bob"].personal
    assert (Principal("robot", "ci-deploy"), Role.CONTRIBUTOR) in policy.teams["platform"].members


def test_every_error_is_reported_at_its_position() -> None:
    found = problems(
        {
            "p/a.yaml": """\
            users:
              alice:
                password: hunter2
                admn: true
            teams:
              t1:
                owners: [alice, ghost]
            grants:
              - to: [team:missing]
                repositories: ["ns/**/**"]
                actions: [pull, fly]
            """,
            "p/b.yaml": "setings: {}\n",
        }
    )
    assert found == [
        "p/a.yaml:3:15: error: user 'alice': the password looks like plaintext; put a bcrypt "
        "or argon2id hash here (registry-gateway hash-password prints one)",
        "p/a.yaml:4:5: error: unknown key 'admn' in user 'alice' (expected: password, admin, "
        "tokens, full_name, email); did you mean 'admin'?",
        "p/a.yaml:7:21: error: team member 'ghost' is no known user or robot",
        "p/a.yaml:9:10: error: grantee 'team:missing' refers to no defined team",
        "p/a.yaml:10:20: error: pattern 'ns/**/**': '**/**' is redundant, use one '**'",
        "p/a.yaml:11:21: error: grant: unknown action 'fly' (pull, push, delete or '*')",
        "p/b.yaml:1:1: error: unknown top-level key 'setings' (expected: settings, users, robots, "
        "teams, namespaces, grants, restrictions, webhooks, workloads); did you mean 'settings'?",
    ]


def test_yaml_syntax_error_is_located() -> None:
    found = problems({"p/c.yaml": "grants:\n  - to: [user:alice\n    repositories: [x]\n"})
    assert len(found) == 1
    assert found[0].startswith("p/c.yaml:3:17: error: invalid YAML:")


def test_duplicates_across_files_and_within_a_mapping() -> None:
    found = problems(
        {
            "p/a.yaml": f"users:\n  alice: {{password: '{BCRYPT}'}}\n",
            "p/b.yaml": "users:\n  alice: {}\n  bob: {}\n  bob: {}\n",
        }
    )
    assert "p/b.yaml:2:3: error: user 'alice' is defined twice (first at p/a.yaml:2:3)" in found
    assert "p/b.yaml:4:3: error: users: key 'bob' is repeated (first at line 3)" in found


def test_user_and_robot_share_one_name_space() -> None:
    found = problems(
        {"p.yaml": f"users:\n  ci: {{}}\nrobots:\n  ci:\n    token_sha256: '{ROBOT}'\n"}
    )
    assert found[0].startswith("p.yaml:4:3: error: robot 'ci' has the name of a user")


def test_declared_namespace_may_not_take_a_users_name() -> None:
    found = problems({"p.yaml": "users:\n  alice: {}\nnamespaces:\n  alice: {}\n"})
    assert found[0].startswith("p.yaml:4:3: error: namespace 'alice' collides")
    texts = {"p.yaml": "settings:\n  personal_namespaces: false\nusers:\n  alice: {}\n"}
    texts["p.yaml"] += "namespaces:\n  alice: {}\n"
    assert not load_texts(texts).policy.namespaces["alice"].personal


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("$2b$12$short", "malformed bcrypt hash"),
        ("$argon2i$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA", "malformed argon2 hash"),
        ("$1$abc$def", "unsupported password hash scheme $1$"),
        ("correct horse", "looks like plaintext"),
    ],
)
def test_password_must_be_a_supported_hash(password: str, message: str) -> None:
    found = problems({"p.yaml": f"users:\n  bob:\n    password: '{password}'\n"})
    assert message in found[0]


def test_argon2id_and_bcrypt_hashes_are_accepted() -> None:
    argon = "$argon2id$v=19$m=65536,t=3,p=4$iVn0k91/0Q1S0pW5mxOLjQ$B0ylAqdeszBYvKGVa0+IhcyccTWM8jo9q8Smjvy6WX0"
    text = f"users:\n  a: {{password: '{BCRYPT}'}}\n  b: {{password: '{argon}'}}\n"
    assert load_texts({"p.yaml": text}).policy.users["b"].password == argon


def test_expired_robot_and_push_without_pull_are_warnings() -> None:
    text = f"""\
    robots:
      old:
        token_sha256: "{ROBOT}"
        expires: 2020-01-01
    grants:
      - to: [robot:old]
        repositories: ["x/*"]
        actions: [push]
    """
    result = load_texts({"p.yaml": textwrap.dedent(text)})
    assert [str(w) for w in result.warnings] == [
        "p.yaml:4:5: warning: robot 'old' expired on 2020-01-01; it cannot sign in",
        "p.yaml:6:5: warning: grant grants push without pull; the registry needs both to upload",
    ]


def test_yaml_1_2_scalars_yes_is_not_a_boolean() -> None:
    found = problems({"p.yaml": "users:\n  a:\n    admin: yes\n"})
    assert found == ["p.yaml:3:12: error: admin must be true or false, not a string"]


def test_anonymous_may_only_pull() -> None:
    text = "grants:\n  - to: anonymous\n    repositories: ['x/*']\n    actions: [pull, push]\n"
    assert "anonymous may only be granted pull" in problems({"p.yaml": text})[0]


def test_tests_directory_is_not_policy(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.yaml").write_text("- as: anonymous\n")
    (tmp_path / "p.yaml").write_text("users:\n  a: {}\n")
    assert set(load_directory(tmp_path).policy.users) == {"a"}


def test_revision_is_a_content_hash_that_follows_content() -> None:
    a = load_texts({"p.yaml": "users:\n  a: {}\n"}).policy.revision
    b = load_texts({"p.yaml": "users:\n  b: {}\n"}).policy.revision
    assert a.startswith("sha256:") and a != b
    assert a == load_texts({"p.yaml": "users:\n  a: {}\n"}).policy.revision
