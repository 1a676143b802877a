"""One policy state, one revision string: the server, `check`, `explain` and `diff` agree, and
every uncommitted state of a git work tree has a revision of its own.

The repositories here are written in-process (loose objects and a ref, as git stores them), so
no git command runs; tests/realworld/ has the tests that drive real git.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

import git
import pytest
from git.objects.fun import tree_to_stream
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.cli import main
from gateway.config import load_settings
from gateway.policy.gitread import WORKTREE, texts_at
from gateway.policy.source import git_revision, read_policy

from tests.support.gateway import PASSWORDS
from tests.test_token_endpoint import SERVICE, access, services_of, token


class Repository:
    """A git work tree whose commits are written in-process: loose objects and refs/heads/main."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.git_dir = root / ".git"
        (self.git_dir / "objects").mkdir(parents=True)
        (self.git_dir / "refs" / "heads").mkdir(parents=True)
        (self.git_dir / "HEAD").write_text("ref: refs/heads/main\n")
        self.head: str | None = None

    def _store(self, kind: bytes, data: bytes) -> bytes:
        raw = b"%s %d\0" % (kind, len(data)) + data
        sha = hashlib.sha1(raw).digest()
        path = self.git_dir / "objects" / sha.hex()[:2] / sha.hex()[2:]
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(zlib.compress(raw))
        return sha

    def _tree(self, directory: Path) -> bytes:
        entries: list[tuple[bytes, int, str]] = []
        for child in directory.iterdir():
            if child.name == ".git":
                continue
            if child.is_dir():
                entries.append((self._tree(child), 0o040000, child.name))
            else:
                entries.append((self._store(b"blob", child.read_bytes()), 0o100644, child.name))
        entries.sort(key=lambda e: e[2] + ("/" if e[1] == 0o040000 else ""))  # git's order
        out = io.BytesIO()
        tree_to_stream(entries, out.write)
        return self._store(b"tree", out.getvalue())

    def commit(self, message: str) -> str:
        """Commit every file of the work tree; the new commit's hex id."""
        lines = [f"tree {self._tree(self.root).hex()}"]
        if self.head:
            lines.append(f"parent {self.head}")
        lines += ["author t <t@example.org> 0 +0000", "committer t <t@example.org> 0 +0000"]
        body = "\n".join(lines) + f"\n\n{message}\n"
        self.head = self._store(b"commit", body.encode()).hex()
        (self.git_dir / "refs" / "heads" / "main").write_text(self.head + "\n")
        return self.head


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    repo = Repository(tmp_path / "repo")
    shutil.copytree("policies", repo.root / "policies")
    (repo.root / "README.md").write_text("not policy\n")
    repo.commit("the example policy")
    return repo


def revision_of(repo: Repository) -> str:
    return read_policy(repo.root / "policies")[2]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_committed_policy_is_its_commit(repository: Repository) -> None:
    assert repository.head is not None
    assert revision_of(repository) == repository.head[:12]
    repo = git.Repo(repository.root)
    assert git.SymbolicReference.dereference_recursive(repo, "HEAD") == repository.head
    repo.close()


def test_every_uncommitted_state_has_its_own_revision(repository: Repository) -> None:
    assert repository.head is not None
    teams = repository.root / "policies" / "teams.yaml"
    committed = teams.read_text()
    edit(teams, "contributors: [bob, robot:ci-deploy]", "contributors: [robot:ci-deploy]")
    first = revision_of(repository)
    assert re.fullmatch(rf"{repository.head[:12]}-dirty-[0-9a-f]{{12}}", first)
    edit(teams, "viewers: [carol]\n  qa:", "viewers: []\n  qa:")
    second = revision_of(repository)
    assert re.fullmatch(rf"{repository.head[:12]}-dirty-[0-9a-f]{{12}}", second)
    assert second != first
    teams.write_text(committed)  # back as committed: the commit again
    assert revision_of(repository) == repository.head[:12]
    edit(teams, "contributors: [bob, robot:ci-deploy]", "contributors: [robot:ci-deploy]")
    assert revision_of(repository) == first  # the same state, the same revision


@pytest.mark.parametrize(
    "change",
    ["new policy file", "new test file", "deleted file", "edited test", "not policy"],
)
def test_what_makes_a_work_tree_dirty(repository: Repository, change: str) -> None:
    assert repository.head is not None
    policies = repository.root / "policies"
    if change == "new policy file":
        (policies / "more.yaml").write_text("{}\n")
    elif change == "new test file":
        (policies / "tests" / "more.yaml").write_text("[]\n")
    elif change == "deleted file":
        (policies / "settings.yaml").unlink()
    elif change == "edited test":
        edit(policies / "tests" / "access.yaml", "granted: [pull, push]", "granted: [push, pull]")
    else:  # files the policy does not read leave its revision alone
        (policies / "README.md").write_text("changed\n")
        (policies / ".hidden.yaml").write_text("{}\n")
        (repository.root / "other.yaml").write_text("{}\n")
    revision = revision_of(repository)
    assert (revision == repository.head[:12]) == (change == "not policy"), revision


def test_outside_git_the_revision_is_a_content_hash(tmp_path: Path) -> None:
    policies = Path(shutil.copytree("policies", tmp_path / "policies"))
    files = {**read_policy(policies)[0], **read_policy(policies)[1]}
    assert git_revision(policies, files) is None
    assert re.fullmatch(r"sha256:[0-9a-f]{12}", read_policy(policies)[2])


@pytest.fixture
def client(tmp_path: Path, repository: Repository) -> Iterator[TestClient]:
    settings = load_settings(
        {
            "policies": str(repository.root / "policies"),
            "data_dir": str(tmp_path / "data"),
            "service": SERVICE,
            "audit_log": str(tmp_path / "audit.log"),
        },
        environ={},
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_check_explain_and_diff_print_the_revision_healthz_shows(
    client: TestClient, repository: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    policies = repository.root / "policies"
    edit(policies / "teams.yaml", "viewers: [carol]\n  qa:", "viewers: []\n  qa:")
    assert services_of(client).source.reload()
    served = client.get("/healthz").json()["revision"]
    assert "-dirty-" in served
    assert main(["check", str(policies)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"; revision {served}")
    assert main(["explain", "--policies", str(policies), "user:bob", "repository:x/y:pull"]) == 0
    assert capsys.readouterr().out.startswith(f"subject user:bob, policy revision {served}\n")
    repo = git.Repo(repository.root)
    try:
        assert texts_at(repo, WORKTREE, "policies")[1] == served
    finally:
        repo.close()


def test_a_repeated_request_is_refused_at_once_after_an_uncommitted_revoking_edit(
    client: TestClient, repository: Repository, tmp_path: Path
) -> None:
    policies = repository.root / "policies"
    services = services_of(client)
    # The work tree is dirty already (an unrelated edit), as it was when this was found.
    edit(policies / "people.yaml", "full_name: Carol Viewer", "full_name: Carol V.")
    assert services.source.reload()
    scope = "repository:platform/api:pull,push"
    for _ in range(3):  # from the second on, the answer is replayed
        assert access(token(client, scope, user="bob"))[0]["actions"] == ["pull", "push"]
    edit(policies / "teams.yaml", "contributors: [bob, robot:ci-deploy]", "contributors: []")
    (policies / "tests" / "access.yaml").write_text("[]\n")
    assert services.source.reload()
    assert access(token(client, scope, user="bob"))[0]["actions"] == []
    revision = client.get("/healthz").json()["revision"]
    last = (tmp_path / "audit.log").read_text().splitlines()[-1]
    assert f'"revision":"{revision}"' in last.replace(" ", "")
    assert PASSWORDS["bob"] not in last


def test_a_repository_that_cannot_be_read_never_claims_the_commit(
    repository: Repository,
) -> None:
    """Unreadable objects (corrupt, shallow or partial clones) make the state 'dirty'."""
    assert repository.head is not None
    for path in (repository.git_dir / "objects").rglob("*"):
        if path.is_file() and path.parent.name != repository.head[:2]:
            path.unlink()
    assert revision_of(repository).startswith(f"{repository.head[:12]}-dirty-")
