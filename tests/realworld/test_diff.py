"""The permission diff read from a real git history (git runs), and `registry-gateway diff` and
the pre-commit hook as processes. The diff without git is in tests/test_diff.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git
import pytest

from gateway.policy.check import check_directory
from gateway.policy.diff import Change, diff_policies
from gateway.policy.diffrender import render_markdown, to_data
from gateway.policy.gitread import PolicyReadError, load_revisions

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "policies"


@dataclass
class History:
    """A git repository whose commits change the example policy one step at a time."""

    root: Path
    repo: git.Repo

    def sha(self, tag: str) -> str:
        return self.repo.commit(tag).hexsha[:12]

    def edit(self, name: str, old: str, new: str) -> None:
        path = self.root / "policies" / name
        text = path.read_text()
        assert text.count(old) == 1, f"{name}: {old!r}"
        path.write_text(text.replace(old, new))

    def commit(self, tag: str) -> None:
        report = check_directory(self.root / "policies")
        assert report.ok and report.tests_failed == 0, [str(p) for p in report.problems]
        self.repo.git.add("--all")
        self.repo.git.commit("--quiet", "-m", tag)
        self.repo.create_tag(tag)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    root = tmp_path_factory.mktemp("gitops")
    shutil.copytree(EXAMPLE, root / "policies")
    repo = git.Repo.init(root, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Policy Author")
        config.set_value("user", "email", "author@example.org")
    h = History(root, repo)
    h.commit("base")

    # carol: viewer -> contributor in platform
    h.edit(
        "teams.yaml",
        "contributors: [bob, robot:ci-deploy]\n    viewers: [carol]\n",
        "contributors: [bob, robot:ci-deploy, carol]\n",
    )
    h.edit(
        "tests/access.yaml",
        "- as: user:carol\n  scope: repository:platform/api:pull,push\n  granted: [pull]",
        "- as: user:carol\n  scope: repository:platform/api:pull,push\n  granted: [pull, push]",
    )
    h.commit("promoted")

    # qa: protected -> public
    h.edit("teams.yaml", "visible to every signed-in user", "public")
    h.edit(
        "teams.yaml",
        "teams: [qa]\n    visibility: protected",
        "teams: [qa]\n    visibility: public",
    )
    h.edit(
        "tests/access.yaml",
        "- as: anonymous\n  scope: repository:qa/runner:pull\n  granted: []",
        "- as: anonymous\n  scope: repository:qa/runner:pull\n  granted: [pull]",
    )
    h.commit("public")

    # a new robot, a viewer of platform
    h.edit(
        "people.yaml",
        "    description: the only pusher of production images\n",
        "    description: the only pusher of production images\n"
        "  mirror:\n"
        '    token_sha256: "3c7f1a5e2f0cbbd6c9e0f4b1d7a2e8c5b6d9f0a1e2c3b4a5968778695a4b3c2d"\n'
        "    description: mirrors platform images to the DR site\n",
    )
    h.edit(
        "teams.yaml",
        "contributors: [bob, robot:ci-deploy, carol]\n",
        "contributors: [bob, robot:ci-deploy, carol]\n    viewers: [robot:mirror]\n",
    )
    h.commit("robot")

    # no change in effect: users reordered, a comment, a grant moved, a file renamed
    people = (root / "policies" / "people.yaml").read_text()
    erin = "  erin: {}   # no password here: signs in through a directory backend\n"
    people = people.replace(erin, "").replace("users:\n", "users:\n" + erin)
    (root / "policies" / "people.yaml").write_text("# Who signs in.\n" + people)
    qa_grant = (
        "  - description: QA pulls every platform image to test it\n"
        "    to: [team:qa]\n"
        '    repositories: ["platform/**"]\n'
        "    actions: [pull]\n"
    )
    h.edit("access.yaml", qa_grant, "")
    (root / "policies" / "grants").mkdir()
    (root / "policies" / "grants" / "qa.yaml").write_text("grants:\n" + qa_grant)
    repo.git.mv("policies/settings.yaml", "policies/config.yml")
    h.commit("noop")

    # a broken policy, kept on a tag only
    h.edit("people.yaml", "    admin: true\n", "    admn: true\n")
    repo.git.add("--all")
    repo.git.commit("--quiet", "-m", "broken")
    repo.create_tag("broken")
    repo.git.reset("--quiet", "--hard", "noop")
    yield h
    repo.close()


def diff_of(history: History, a: str, b: str) -> Any:
    old, new = load_revisions(a, b, repository=str(history.root))
    return diff_policies(old, new)


def heading(history: History, a: str, b: str) -> str:
    return f"### Policy diff `{history.sha(a)}` → `{history.sha(b)}`\n\n"


def empty_team(name: str, **fields: Any) -> dict[str, Any]:
    team: dict[str, Any] = {
        "team": name,
        "status": "changed",
        "joined": [],
        "left": [],
        "roles_changed": [],
        "ldap_joined": [],
        "ldap_left": [],
        "ldap_roles_changed": [],
        "namespaces_added": [],
        "namespaces_removed": [],
        "access": [],
    }
    return {**team, **fields}


def access(
    repositories: str, gained: list[str], lost: list[str], exc: list[str] | None = None
) -> dict[str, Any]:
    return {"repositories": repositories, "except": exc or [], "gained": gained, "lost": lost}


# -- a member promoted -----------------------------------------------------------------


def test_a_promoted_member_gains_push_where_the_team_owns(history: History) -> None:
    diff = diff_of(history, "base", "promoted")
    assert render_markdown(diff) == heading(history, "base", "promoted") + textwrap.dedent(
        """\
        #### Access

        | Who | Repositories | Gains | Loses |
        |---|---|---|---|
        | `user:carol` | `library/**` | push |  |
        | `user:carol` | `platform/**` except `platform/prod/**` | push |  |

        #### Teams

        - `team:platform`
          - role changed: `user:carol` viewer → contributor"""
    )
    assert to_data(diff) == {
        "schema": 1,
        "from": history.sha("base"),
        "to": history.sha("promoted"),
        "changed": True,
        "access_changed": True,
        "attention": [],
        "subjects": [
            {
                "subject": "user:carol",
                "status": "changed",
                "access": [
                    access("library/**", ["push"], []),
                    access("platform/**", ["push"], [], ["platform/prod/**"]),
                ],
            }
        ],
        "teams": [
            empty_team(
                "platform",
                roles_changed=[{"member": "user:carol", "from": "viewer", "to": "contributor"}],
            )
        ],
    }


# -- a namespace made public -----------------------------------------------------------


def test_a_namespace_made_public_is_called_out_with_who_can_now_pull(history: History) -> None:
    diff = diff_of(history, "promoted", "public")
    assert render_markdown(diff) == heading(history, "promoted", "public") + textwrap.dedent(
        """\
        #### Needs attention

        - namespace `qa` becomes public (was protected): anyone may pull, without signing in
        - anyone, without signing in, can now pull `qa/**`

        #### Access

        | Who | Repositories | Gains | Loses |
        |---|---|---|---|
        | anyone (`anonymous`) | `qa/**` | pull |  |"""
    )
    data = to_data(diff)
    assert data["attention"] == [
        {
            "kind": "visibility",
            "name": "qa",
            "change": "changed",
            "before": "protected",
            "after": "public",
            "except": [],
            "message": "namespace qa becomes public (was protected): anyone may pull, without "
            "signing in",
        },
        {
            "kind": "anonymous-pull",
            "name": "qa/**",
            "change": "gained",
            "before": None,
            "after": None,
            "except": [],
            "message": "anyone, without signing in, can now pull qa/**",
        },
    ]
    assert data["subjects"] == [
        {"subject": "anonymous", "status": "changed", "access": [access("qa/**", ["pull"], [])]}
    ]
    assert data["teams"] == []


# -- a robot added ---------------------------------------------------------------------


def test_a_new_robot_is_called_out_with_what_it_may_do(history: History) -> None:
    diff = diff_of(history, "public", "robot")
    assert render_markdown(diff) == heading(history, "public", "robot") + textwrap.dedent(
        """\
        #### Needs attention

        - `robot:mirror` is new

        #### Access

        | Who | Repositories | Gains | Loses |
        |---|---|---|---|
        | `robot:mirror` (new) | `platform/**` | pull |  |

        #### Teams

        - `team:platform`
          - joined: `robot:mirror` (viewer)"""
    )
    data = to_data(diff)
    assert data["attention"] == [
        {
            "kind": "robot",
            "name": "robot:mirror",
            "change": "added",
            "before": None,
            "after": None,
            "except": [],
            "message": "robot:mirror is new",
        }
    ]
    assert data["subjects"] == [
        {
            "subject": "robot:mirror",
            "status": "added",
            "access": [access("platform/**", ["pull"], [])],
        }
    ]
    assert data["teams"] == [
        empty_team("platform", joined=[{"member": "robot:mirror", "role": "viewer"}])
    ]


# -- no change in effect ---------------------------------------------------------------


def test_reorder_comment_move_and_rename_change_nothing(history: History) -> None:
    moved = history.repo.git.diff("--stat", "robot", "noop")
    assert "grants/qa.yaml" in moved and "settings.yaml => config.yml" in moved
    diff = diff_of(history, "robot", "noop")
    assert render_markdown(diff) == heading(history, "robot", "noop") + (
        "No change in effective access."
    )
    assert to_data(diff) == {
        "schema": 1,
        "from": history.sha("robot"),
        "to": history.sha("noop"),
        "changed": False,
        "access_changed": False,
        "attention": [],
        "subjects": [],
        "teams": [],
    }


def test_the_whole_history_adds_up(history: History) -> None:
    diff = diff_of(history, "base", "noop")
    assert render_markdown(diff) == heading(history, "base", "noop") + textwrap.dedent(
        """\
        #### Needs attention

        - `robot:mirror` is new
        - namespace `qa` becomes public (was protected): anyone may pull, without signing in
        - anyone, without signing in, can now pull `qa/**`

        #### Access

        | Who | Repositories | Gains | Loses |
        |---|---|---|---|
        | anyone (`anonymous`) | `qa/**` | pull |  |
        | `user:carol` | `library/**` | push |  |
        | `user:carol` | `platform/**` except `platform/prod/**` | push |  |
        | `robot:mirror` (new) | `platform/**` | pull |  |

        #### Teams

        - `team:platform`
          - joined: `robot:mirror` (viewer)
          - role changed: `user:carol` viewer → contributor"""
    )


# -- reading revisions -----------------------------------------------------------------


def test_an_invalid_policy_names_the_revision_and_the_place(history: History) -> None:
    with pytest.raises(PolicyReadError) as caught:
        load_revisions("noop", "broken", repository=str(history.root))
    assert caught.value.status == 1
    message = str(caught.value)
    assert message.startswith(
        f"the policy at revision broken ({history.sha('broken')}) is invalid:"
    )
    assert "broken:policies/people.yaml:6:5: error: unknown key 'admn' in user 'alice'" in message


def test_the_worktree_is_a_revision(history: History) -> None:
    history.edit(
        "teams.yaml", "owners: [alice]\n    contributors", "owners: [alice, erin]\n    contributors"
    )
    try:
        old, new = load_revisions("HEAD", "WORKTREE", repository=str(history.root))
    finally:
        history.repo.git.checkout("--", ".")
    assert old.revision == history.sha("noop")  # WORKTREE: the revision a gateway would serve
    assert new.revision.startswith(f"{history.sha('noop')}-dirty-")
    names = ("access.yaml", "config.yml", "grants/qa.yaml", "people.yaml", "teams.yaml")
    assert new.files == tuple(f"policies/{name}" for name in names)
    diff = diff_policies(old, new)
    assert [(s.subject, s.access) for s in diff.subjects] == [
        (
            "user:erin",
            (
                Change("library/**", ("push", "delete"), ()),
                Change("platform/**", ("pull",), ()),
                Change("platform/**", ("push", "delete"), (), ("platform/prod/**",)),
            ),
        )
    ]


def test_a_missing_directory_and_an_unknown_revision_are_errors(history: History) -> None:
    with pytest.raises(PolicyReadError, match="unknown revision 'nope'") as caught:
        load_revisions("nope", "HEAD", repository=str(history.root))
    assert caught.value.status == 2
    with pytest.raises(PolicyReadError, match="has no policy directory 'elsewhere'"):
        load_revisions("HEAD", "HEAD", policies="elsewhere", repository=str(history.root))


# -- the command line ------------------------------------------------------------------


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "diff", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_end_to_end(history: History) -> None:
    proc = run(history.root, "--format", "json", "promoted", "public")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == to_data(diff_of(history, "promoted", "public"))

    proc = run(history.root / "policies", "--policies", ".", "--exit-code", "base", "promoted")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == render_markdown(diff_of(history, "base", "promoted")) + "\n"

    proc = run(history.root, "--exit-code", "robot", "noop")
    assert (proc.returncode, proc.stdout.splitlines()[-1]) == (0, "No change in effective access.")

    proc = run(history.root, "noop", "broken")
    assert proc.returncode == 1
    assert proc.stderr.startswith("registry-gateway diff: the policy at revision broken (")
    assert "broken:policies/people.yaml:6:5: error: unknown key 'admn'" in proc.stderr

    proc = run(history.root, "HEAD", "no-such-tag")
    assert (proc.returncode, proc.stderr) == (
        2,
        "registry-gateway diff: unknown revision 'no-such-tag'\n",
    )


def test_the_pre_commit_hook_refuses_a_failing_policy_and_shows_the_diff(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "policies")
    repo = git.Repo.init(tmp_path, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Policy Author")
        config.set_value("user", "email", "author@example.org")
    repo.git.add("--all")
    repo.git.commit("--quiet", "-m", "base")
    hook = tmp_path / ".git" / "hooks" / "pre-commit"
    shutil.copy(REPO / "deploy" / "pre-commit-hook.sh", hook)
    command = Path(sys.executable).with_name("registry-gateway")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "REGISTRY_GATEWAY": str(command)}

    def commit() -> subprocess.CompletedProcess[str]:
        repo.git.add("--all")
        return subprocess.run(
            ["git", "commit", "--quiet", "-m", "change"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    teams = tmp_path / "policies" / "teams.yaml"
    teams.write_text(teams.read_text().replace("visibility: protected", "visibility: public"))
    refused = commit()
    assert refused.returncode == 1
    # git passes a hook's output on to its standard error
    assert "error: test failed: anonymous on repository:qa/runner" in refused.stderr
    tests = tmp_path / "policies" / "tests" / "access.yaml"
    tests.write_text(
        tests.read_text().replace(
            "repository:qa/runner:pull\n  granted: []",
            "repository:qa/runner:pull\n  granted: [pull]",
        )
    )
    done = commit()
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("check: ok: 0 errors, 0 warnings; tests: 20 passed, 0 failed")
    assert "- anyone, without signing in, can now pull `qa/**`" in done.stderr
    assert repo.head.commit.message.strip() == "change"
    repo.close()
