"""YAML policy directory -> `Policy`, with every problem located at file:line:column: the
directory read (within limits), each file read on its own (`readfile`, kept by `ParseCache`
for reloads), then all files put together (`assemble`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.policy.assemble import Assembled, Assembly
from gateway.policy.model import Location, Policy
from gateway.policy.problems import PolicyError as PolicyError
from gateway.policy.problems import Problem as Problem
from gateway.policy.readfile import FileReader, ParsedFile


@dataclass(frozen=True, slots=True)
class LoadResult:
    policy: Policy
    warnings: tuple[Problem, ...]


# What a policy directory may hold: enough for 100,000 users in a few files, little enough
# that a stray or hostile file cannot take the gateway's memory or a core for minutes.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_TOTAL_BYTES = 128 * 1024 * 1024
MAX_FILES = 10_000


def policy_files(directory: Path) -> dict[str, str]:
    """Every `*.yaml`/`*.yml` below `directory` except under `tests/`, by display name;
    PolicyError for what cannot be a policy file (see `read_yaml_files`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError(
            [Problem(Location(str(directory), 0, 0), "error", "no such policy directory")]
        )
    return read_yaml_files(directory, lambda relative: relative.parts[0] != "tests")


def read_yaml_files(directory: Path, wanted: Callable[[Path], bool]) -> dict[str, str]:
    """The `*.yaml`/`*.yml` files below `directory` (names starting with `.` skipped, and
    what `wanted(relative path)` refuses), by display name.

    What git holds is what is enforced: a symbolic link, anywhere below `directory`, is an
    error and is never followed (it could point at any file of the machine, and `diff` would
    not see what it points at). So are a file that is not UTF-8 and files beyond the size and
    count limits above. Every such problem is reported, each at its file."""
    problems: list[Problem] = []
    texts: dict[str, str] = {}
    total = 0

    def refuse(path: Path, message: str) -> None:
        problems.append(Problem(Location(str(path), 1, 1), "error", message))

    for root, dirs, files in os.walk(directory, followlinks=False):
        base = Path(root)
        dirs.sort()
        for name in [d for d in dirs if (base / d).is_symlink()]:
            dirs.remove(name)
            if not name.startswith(".") and wanted((base / name).relative_to(directory)):
                refuse(base / name, "a symbolic link: policy directories must be real ones")
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in sorted(files):
            path = base / name
            relative = path.relative_to(directory)
            if name.startswith(".") or path.suffix not in (".yaml", ".yml") or not wanted(relative):
                continue
            if path.is_symlink():
                refuse(path, "a symbolic link: policy files must be regular files (not followed)")
                continue
            if len(texts) >= MAX_FILES:
                refuse(path, f"more than {MAX_FILES} policy files")
                break
            size = path.stat().st_size
            if size > MAX_FILE_BYTES or total + size > MAX_TOTAL_BYTES:
                refuse(
                    path,
                    f"too large: a policy file may hold {MAX_FILE_BYTES // 2**20} MiB, and all "
                    f"of them {MAX_TOTAL_BYTES // 2**20} MiB",
                )
                continue
            total += size
            try:
                texts[str(path)] = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                refuse(path, f"not UTF-8 text (byte {exc.start} cannot be decoded)")
    if problems:
        raise PolicyError(problems)
    return texts


def content_digest(texts: Mapping[str, str], base: Path | None = None) -> str:
    """12 hex digits of a SHA-256 over the texts' names (relative to `base`) and contents."""
    digest = hashlib.sha256()
    for name in sorted(texts):
        relative = str(Path(name).relative_to(base)) if base is not None else name
        # surrogatepass: a text with a lone surrogate still has a revision, and is refused later.
        text = texts[name].encode("utf-8", "surrogatepass")
        digest.update(relative.encode("utf-8", "surrogatepass") + b"\0" + text + b"\0")
    return digest.hexdigest()[:12]


def content_revision(texts: Mapping[str, str], base: Path | None = None) -> str:
    """A stable revision for policy text not in git: `sha256:` and `content_digest`."""
    return "sha256:" + content_digest(texts, base)


def load_directory(
    directory: Path,
    *,
    revision: str | None = None,
    today: dt.date | None = None,
    cache: ParseCache | None = None,
) -> LoadResult:
    """Load and validate a policy directory; PolicyError lists every error at once."""
    texts = policy_files(directory)
    if revision is None:
        revision = content_revision(texts, base=directory)
    return load_texts(texts, revision=revision, today=today, cache=cache)


def load_texts(
    texts: Mapping[str, str],
    *,
    revision: str | None = None,
    today: dt.date | None = None,
    cache: ParseCache | None = None,
) -> LoadResult:
    """Load and validate a policy from file texts keyed by display name.

    Each file is read on its own first (`FileReader`: syntax, fields, values, patterns), then
    the files are put together (`Assembly`: duplicates, references between files). With a
    `cache`, a file whose name and content were read before is not read again."""
    names = sorted(texts)
    if cache is None:
        files = [FileReader(name).read(texts[name]) for name in names]
    else:
        files = [cache.parse(name, texts[name]) for name in names]
        cache.keep(files)
    assembly = Assembly(today or dt.date.today())
    before = cache.assembled if cache is not None else None
    policy = assembly.build(files, revision or content_revision(texts), tuple(names), before)
    if cache is not None:
        cache.assembled = assembly.made  # None after a failure: nothing kept of gone files
    errors = [p for p in assembly.problems if p.severity == "error"]
    if errors or policy is None:
        raise PolicyError(sorted(assembly.problems, key=_order))
    warnings = tuple(sorted(assembly.problems, key=_order))
    return LoadResult(policy, warnings)


def _order(problem: Problem) -> tuple[str, int, int]:
    loc = problem.location
    return (loc.file, loc.line, loc.column)


class ParseCache:
    """Policy files already read, by name and SHA-256 of their content, so that a reload reads
    again only the files that changed. A file whose content changed has another key and is
    read afresh; `keep` forgets every file the last load did not have. At most `size` files."""

    def __init__(self, size: int = MAX_FILES) -> None:
        self.size = size
        self._files: dict[tuple[str, bytes], ParsedFile] = {}
        self.parsed = 0  # files read (not found here), for tests and benchmarks
        self.assembled: Assembled | None = None  # the last good assembly of these files

    def __len__(self) -> int:
        return len(self._files)

    def parse(self, name: str, text: str) -> ParsedFile:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        key = (name, digest)
        found = self._files.get(key)
        if found is None:
            found = FileReader(name).read(text)
            found.key = key
            self.parsed += 1
            if len(self._files) >= self.size:
                self._files.pop(next(iter(self._files)))
            self._files[key] = found
        return found

    def keep(self, files: list[ParsedFile]) -> None:
        """Forget every file but these."""
        wanted = {f.key for f in files}
        for key in [k for k in self._files if k not in wanted]:
            del self._files[key]
