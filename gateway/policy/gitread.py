"""A policy directory as it was at a git revision, read with GitPython (for `diff`).

Files are chosen as `load.policy_files` chooses them on disk: every `*.yaml` and `*.yml`
below the directory, except under its top-level `tests/` and anything whose path has a
component starting with `.`. Symbolic links and submodules in the tree are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import git
from git.exc import BadName, BadObject  # gitdb's, re-exported typed

from gateway.policy.load import PolicyError, load_texts, policy_files
from gateway.policy.model import Policy
from gateway.policy.source import policy_revision
from gateway.policy.tests import case_files

# The special revision: the files on disk now, committed or not. The policy read there has
# the revision a gateway serving those files reports (`source.policy_revision`).
WORKTREE = "WORKTREE"
_SYMLINK = 0o120000


class PolicyReadError(Exception):
    """A revision or policy that cannot be read; `status` is the exit status to use."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def open_repository(directory: str | os.PathLike[str] = ".") -> git.Repo:
    """The git repository containing `directory`; PolicyReadError (status 2) if none."""
    try:
        return git.Repo(directory, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise PolicyReadError(f"{directory}: not inside a git repository", status=2) from None


def policy_path(repo: git.Repo, path: str, cwd: Path | None = None) -> str:
    """The policy directory as a path from the repository root, in git's `/` form.

    A relative PATH is taken from the current directory when that is inside the work tree
    (as git takes pathspecs), else from the root of the work tree.
    """
    root = Path(repo.working_tree_dir).resolve() if repo.working_tree_dir else None
    candidate = Path(path)
    if root is not None:
        here = (cwd or Path.cwd()).resolve()
        if not candidate.is_absolute() and not here.is_relative_to(root):
            candidate = root / candidate
        absolute = Path(os.path.normpath(here / candidate))
        if not absolute.is_relative_to(root):
            raise PolicyReadError(f"{path}: outside the repository at {root}", status=2)
        relative = absolute.relative_to(root).as_posix()
    else:  # a bare repository: paths are from its root
        relative = PurePosixPath(os.path.normpath(path)).as_posix()
        if relative.startswith("..") or PurePosixPath(relative).is_absolute():
            raise PolicyReadError(f"{path}: outside the repository", status=2)
    return relative


def texts_at(repo: git.Repo, rev: str, directory: str) -> tuple[dict[str, str], str]:
    """The policy files of `directory` at `rev`, keyed `REV:path`, and the revision they have."""
    if rev == WORKTREE:
        return _worktree_texts(repo, directory)
    try:
        commit = repo.commit(rev)
    except (BadName, BadObject, ValueError):
        raise PolicyReadError(f"unknown revision {rev!r}", status=2) from None
    try:
        tree = commit.tree if directory == "." else commit.tree / directory
    except KeyError:
        raise PolicyReadError(
            f"revision {rev} ({commit.hexsha[:12]}) has no policy directory {directory!r}"
        ) from None
    if not isinstance(tree, git.Tree):
        raise PolicyReadError(f"{rev}:{directory} is not a directory")
    texts: dict[str, str] = {}
    base = PurePosixPath(directory)
    for item in tree.traverse():
        if not isinstance(item, git.Blob) or item.mode == _SYMLINK:
            continue
        relative = PurePosixPath(item.path)
        if directory != ".":
            relative = relative.relative_to(base)
        if relative.parts[0] == "tests" or any(p.startswith(".") for p in relative.parts):
            continue
        if relative.suffix not in (".yaml", ".yml"):
            continue
        name = f"{rev}:{item.path}"
        try:
            texts[name] = item.data_stream.read().decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyReadError(f"{name}: not UTF-8 text") from None
    return texts, commit.hexsha[:12]


def _worktree_texts(repo: git.Repo, directory: str) -> tuple[dict[str, str], str]:
    if repo.working_tree_dir is None:
        raise PolicyReadError(f"{WORKTREE}: the repository has no work tree", status=2)
    root = Path(repo.working_tree_dir)
    try:
        texts = policy_files(root / directory)
        tests = case_files(root / directory)
    except PolicyError as exc:
        raise PolicyReadError(f"{WORKTREE}: {exc}") from None
    revision = policy_revision(root / directory, {**texts, **tests})
    prefix = f"{root}{os.sep}"
    return {name.removeprefix(prefix): text for name, text in texts.items()}, revision


def load_revision(repo: git.Repo, rev: str, directory: str) -> Policy:
    """The validated policy at `rev`; PolicyReadError lists its located errors if invalid."""
    texts, revision = texts_at(repo, rev, directory)
    try:
        return load_texts(texts, revision=revision).policy
    except PolicyError as exc:
        where = rev if revision == rev else f"{rev} ({revision})"
        raise PolicyReadError(f"the policy at revision {where} is invalid:\n{exc}") from None


def load_revisions(
    rev_a: str, rev_b: str, *, policies: str = "policies", repository: str = "."
) -> tuple[Policy, Policy]:
    """Both policies a diff compares, read from the repository containing `repository`."""
    repo = open_repository(repository)
    try:
        directory = policy_path(repo, policies)
        return load_revision(repo, rev_a, directory), load_revision(repo, rev_b, directory)
    finally:
        repo.close()
