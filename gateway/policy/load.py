"""YAML policy directory -> `Policy`, with every problem located at file:line:column."""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import os
import re
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from gateway.policy import yamlnodes as yn
from gateway.policy.model import (
    ANONYMOUS,
    AUTHENTICATED,
    PULL,
    PUSH,
    REPOSITORY_ACTIONS,
    AccessToken,
    Grant,
    Location,
    Namespace,
    Policy,
    Principal,
    Restriction,
    Robot,
    Role,
    Settings,
    Team,
    User,
    Visibility,
    Webhook,
    Workload,
)
from gateway.policy.patterns import (
    MAX_REPOSITORY_NAME_LENGTH,
    PatternError,
    compile_pattern,
    is_component,
)
from gateway.policy.webhooks import merge_webhooks, read_webhooks
from gateway.policy.workloads import merge_workloads, read_workloads

SECTIONS = (
    "settings",
    "users",
    "robots",
    "teams",
    "namespaces",
    "grants",
    "restrictions",
    "webhooks",
    "workloads",
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_ARGON2ID = re.compile(
    r"\$argon2id\$v=19\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)
_ROLE_KEYS = {"owners": Role.OWNER, "contributors": Role.CONTRIBUTOR, "viewers": Role.VIEWER}
_E = TypeVar("_E", bound=Enum)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy, where it is, and how bad."""

    location: Location
    severity: str  # "error" | "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.severity}: {self.message}"


class PolicyError(Exception):
    """A policy that cannot be used; `problems` lists every error (and warning) found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in errors) or "invalid policy")


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

    Each file is read on its own first (`_Builder`: syntax, fields, values, patterns), then
    the files are put together (`_Assembly`: duplicates, references between files). With a
    `cache`, a file whose name and content were read before is not read again."""
    names = sorted(texts)
    if cache is None:
        files = [_Builder(name).read(texts[name]) for name in names]
    else:
        files = [cache.parse(name, texts[name]) for name in names]
        cache.keep(files)
    assembly = _Assembly(today or dt.date.today())
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


# -- one file --------------------------------------------------------------------------------

# A reference to a user, robot or team as written, checked once every file is read: the
# position in its list, the text, the kind it names ("" for a bare name) and the name, and
# where it is written (a YAML mark: a Location is made only for a problem).
_Ref = tuple[int, str, str, str, Any]


class _ParsedFile:
    """One policy file, read on its own: its definitions and rules, built as if every bare
    name in it named a user and every reference were defined (the assembly checks both), and
    the problems found in it alone. Never changed once built, so a `ParseCache` may share it
    between loads."""

    __slots__ = (
        "bare",
        "bare_members",
        "bare_rules",
        "corrected",
        "expiries",
        "grant_refs",
        "grants",
        "key",
        "member_refs",
        "name",
        "namespace_refs",
        "namespaces",
        "personal",
        "problems",
        "restriction_refs",
        "restrictions",
        "robot_refs",
        "robots",
        "settings",
        "settings_problems",
        "team_refs",
        "teams",
        "user_refs",
        "users",
        "webhooks",
        "workload_refs",
        "workloads",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.key: tuple[str, bytes] = (name, b"")
        self.problems: list[Problem] = []
        self.settings: Settings | None = None
        self.settings_problems: list[Problem] = []
        self.users: dict[str, User] = {}
        self.personal: dict[str, Namespace] = {}
        self.robots: dict[str, Robot] = {}
        self.expiries: list[tuple[dt.date, Location, str]] = []
        self.teams: dict[str, Team] = {}
        self.member_refs: dict[str, tuple[_Ref, ...]] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.namespace_refs: dict[str, tuple[tuple[str, Any], ...]] = {}
        self.grants: list[Grant] = []
        self.grant_refs: list[tuple[_Ref, ...]] = []
        self.restrictions: list[Restriction] = []
        self.restriction_refs: list[tuple[_Ref, ...]] = []
        # Every name referred to, by kind, for checking a whole file with set operations.
        self.user_refs: set[str] = set()
        self.robot_refs: set[str] = set()
        self.team_refs: set[str] = set()
        self.bare: set[str] = set()
        self.webhooks: dict[str, Webhook] = {}  # the `webhooks:` section (policy/webhooks.py)
        self.workloads: dict[str, Workload] = {}  # the `workloads:` section (policy/workloads.py)
        # `workload:NAME` references (name, YAML mark), checked against every file's workloads.
        self.workload_refs: list[tuple[str, Any]] = []
        # Where each bare name is used: the teams, and the rules ("grants" or "restrictions"
        # and index), to correct just those when the name turns out to be a robot's.
        self.bare_members: dict[str, list[str]] = {}
        self.bare_rules: dict[str, list[tuple[str, int]]] = {}
        # The corrected teams and rules of the last assembly, with what was corrected: the
        # next assembly reuses them when it corrects the same, so that an unchanged file
        # yields the very same objects (and the engine reuses what it compiled of them).
        self.corrected: dict[object, tuple[object, Any]] = {}


class ParseCache:
    """Policy files already read, by name and SHA-256 of their content, so that a reload reads
    again only the files that changed. A file whose content changed has another key and is
    read afresh; `keep` forgets every file the last load did not have. At most `size` files."""

    def __init__(self, size: int = MAX_FILES) -> None:
        self.size = size
        self._files: dict[tuple[str, bytes], _ParsedFile] = {}
        self.parsed = 0  # files read (not found here), for tests and benchmarks
        self.assembled: _Assembled | None = None  # the last good assembly of these files

    def __len__(self) -> int:
        return len(self._files)

    def parse(self, name: str, text: str) -> _ParsedFile:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        key = (name, digest)
        found = self._files.get(key)
        if found is None:
            found = _Builder(name).read(text)
            found.key = key
            self.parsed += 1
            if len(self._files) >= self.size:
                self._files.pop(next(iter(self._files)))
            self._files[key] = found
        return found

    def keep(self, files: list[_ParsedFile]) -> None:
        """Forget every file but these."""
        wanted = {f.key for f in files}
        for key in [k for k in self._files if k not in wanted]:
            del self._files[key]


_FAST_PATTERN = re.compile(
    r"(?:\*\*|[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*|[a-z0-9._-]*(?:\*[a-z0-9._-]+)*\*[a-z0-9._-]*)"
    r"(?:/(?:\*\*|[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*|[a-z0-9._-]*(?:\*[a-z0-9._-]+)*\*[a-z0-9._-]*))*"
)


def valid_pattern(text: str) -> None:
    """PatternError unless `text` is a valid repository pattern. The common shapes pass one
    regular expression; anything else is judged (and explained) by `compile_pattern`."""
    fast = len(text) <= MAX_REPOSITORY_NAME_LENGTH and "**/**" not in text
    if fast and _FAST_PATTERN.fullmatch(text):
        return
    compile_pattern(text)


class _Builder:
    """Reads one policy file into a `_ParsedFile`; knows nothing of the other files."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.out = _ParsedFile(file)
        self.problems = self.out.problems
        self._principals: dict[tuple[str, str], Principal] = {}

    def read(self, text: str) -> _ParsedFile:
        root = yn.compose(text, self.file)
        if root is None:
            return self.out
        if isinstance(root, yn.SyntaxProblem):
            self.error(root.location, root.message)
            return self.out
        for section, key, node in self.mapping(root, "a policy file"):
            reader = getattr(self, f"read_{section}", None) if section in SECTIONS else None
            if reader is None:
                hint = difflib.get_close_matches(section, SECTIONS, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                self.error(
                    self.at(key),
                    f"unknown top-level key {section!r} (expected: {', '.join(SECTIONS)})"
                    f"{suggestion}",
                )
                continue
            reader(node, key)
        return self.out

    # -- reporting -----------------------------------------------------------------------

    def at(self, node: yn.Node) -> Location:
        return yn.location(node, self.file)

    def error(self, location: Location, message: str) -> None:
        self.problems.append(Problem(location, "error", message))

    def warning(self, location: Location, message: str) -> None:
        self.problems.append(Problem(location, "warning", message))

    # -- node helpers --------------------------------------------------------------------

    def mapping(self, node: yn.Node, what: str) -> Iterator[tuple[str, yn.Node, yn.Node]]:
        """The (key, key node, value node) triples of a mapping; duplicate keys reported."""
        return yn.mapping(node, what, self.file, self.error)

    def fields(
        self, node: yn.Node, what: str, allowed: tuple[str, ...]
    ) -> dict[str, tuple[yn.Node, yn.Node]]:
        """A mapping's known fields (key node, value node); unknown ones reported with a
        suggestion."""
        out: dict[str, tuple[yn.Node, yn.Node]] = {}
        for key, key_node, value in self.mapping(node, what):
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                self.error(
                    self.at(key_node),
                    f"unknown key {key!r} in {what} (expected: {', '.join(allowed)}){suggestion}",
                )
                continue
            out[key] = (key_node, value)
        return out

    def string(self, node: yn.Node, what: str) -> str | None:
        value = yn.scalar(node) if isinstance(node, yn.ScalarNode) else None
        if isinstance(value, str) and value:
            return value
        self.error(self.at(node), f"{what} must be a non-empty string, not {yn.kind(node)}")
        return None

    def optional_string(self, f: dict[str, tuple[yn.Node, yn.Node]], key: str) -> str:
        """An optional free-text field (descriptions, names): a string when present."""
        if key not in f:
            return ""
        return self.string(f[key][1], key) or ""

    def boolean(self, node: yn.Node, what: str) -> bool | None:
        value = yn.scalar(node) if isinstance(node, yn.ScalarNode) else None
        if isinstance(value, bool):
            return value
        self.error(self.at(node), f"{what} must be true or false, not {yn.kind(node)}")
        return None

    def date(self, node: yn.Node, what: str) -> dt.date | None:
        value = yn.scalar(node) if isinstance(node, yn.ScalarNode) else None
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        self.error(self.at(node), f"{what} must be a date such as 2027-06-30")
        return None

    def strings(self, node: yn.Node, what: str) -> list[tuple[yn.Node, str]]:
        """A list of strings, or one string standing for a list of one (with their nodes)."""
        items = node.value if isinstance(node, yn.SequenceNode) else [node]
        if isinstance(node, yn.MappingNode):
            self.error(self.at(node), f"{what} must be a list, not a mapping")
            return []
        out = []
        for item in items:
            text = self.string(item, f"each entry of {what}")
            if text is not None:
                out.append((item, text))
        return out

    def choice(self, node: yn.Node, what: str, enum: type[_E]) -> _E | None:
        value = yn.scalar(node) if isinstance(node, yn.ScalarNode) else None
        try:
            return enum(value)
        except ValueError:
            names = ", ".join(member.value for member in enum)
            self.error(self.at(node), f"{what} must be one of {names}, not {value!r}")
            return None

    def check_name(self, kind: str, name: str, loc: Location) -> bool:
        if is_component(name):
            return True
        self.error(
            loc,
            f"{kind} name {name!r} must be lower-case letters and digits, optionally joined "
            "by '.', '_' or '-'",
        )
        return False

    def principal_of(self, kind: str, name: str) -> Principal:
        """One Principal object per kind and name in a file (they are compared a lot)."""
        key = (kind, name)
        found = self._principals.get(key)
        if found is None:
            found = self._principals[key] = Principal(kind, name)
        return found

    # -- sections ------------------------------------------------------------------------

    def read_settings(self, node: yn.Node, key: yn.Node) -> None:
        problems, self.problems = self.problems, self.out.settings_problems
        try:
            f = self.fields(node, "settings", ("personal_namespaces", "global_namespace"))
            personal = True
            visibility = Visibility.PROTECTED
            if "personal_namespaces" in f:
                value = self.boolean(f["personal_namespaces"][1], "personal_namespaces")
                personal = True if value is None else value
            if "global_namespace" in f:
                choice = self.choice(f["global_namespace"][1], "global_namespace", Visibility)
                visibility = choice or visibility
        finally:
            self.problems = problems
        self.out.settings = Settings(personal, visibility, self.at(key))

    def read_users(self, node: yn.Node, _: yn.Node) -> None:
        allowed = ("password", "admin", "tokens", "full_name", "email")
        users, personal = self.out.users, self.out.personal
        for name, key, value in self.mapping(node, "users"):
            loc = self.at(key)
            if not self.check_name("user", name, loc):
                continue
            f = self.fields(value, f"user {name!r}", allowed)
            password = None
            if "password" in f:
                password = self.password_hash(f["password"][1], name)
            admin = bool("admin" in f and self.boolean(f["admin"][1], "admin"))
            tokens = self.read_tokens(f["tokens"][1], name) if "tokens" in f else ()
            full_name = self.optional_string(f, "full_name")
            email = self.optional_string(f, "email")
            users[name] = User(name, password, admin, loc, tokens, full_name, email)
            personal[name] = Namespace(
                name, (), Visibility.PRIVATE, f"personal namespace of {name}", loc, personal=True
            )

    def password_hash(self, node: yn.Node, user: str) -> str | None:
        value = self.string(node, f"the password of user {user!r}")
        if value is None:
            return None
        if not value.startswith("$"):
            self.error(
                self.at(node),
                f"user {user!r}: the password looks like plaintext; put a bcrypt or argon2id "
                "hash here (registry-gateway hash-password prints one)",
            )
        elif value.startswith("$2"):
            if not _BCRYPT.fullmatch(value):
                self.error(self.at(node), f"user {user!r}: malformed bcrypt hash")
                return None
        elif value.startswith("$argon2"):
            if not _ARGON2ID.fullmatch(value):
                self.error(
                    self.at(node),
                    f"user {user!r}: malformed argon2 hash (only argon2id, version 19, works)",
                )
                return None
        else:
            scheme = value.split("$")[1] if value.count("$") > 1 else value
            self.error(
                self.at(node),
                f"user {user!r}: unsupported password hash scheme ${scheme}$; "
                "use bcrypt ($2b$) or argon2id",
            )
            return None
        return value

    def read_tokens(self, node: yn.Node, user: str) -> tuple[AccessToken, ...]:
        tokens = []
        for name, key, value in self.mapping(node, f"tokens of user {user!r}"):
            what = f"token {name!r} of user {user!r}"
            f = self.fields(value, what, ("token_sha256", "expires", "actions", "description"))
            self.optional_string(f, "description")
            digest = self.sha256(f, what, key)
            expires = self.date(f["expires"][1], "expires") if "expires" in f else None
            actions = None
            if "actions" in f:
                actions = frozenset(self.actions(f["actions"][1], what))
            if digest is not None:
                tokens.append(AccessToken(name, digest, expires, actions, self.at(key)))
        return tuple(tokens)

    def sha256(self, f: dict[str, tuple[yn.Node, yn.Node]], what: str, key: yn.Node) -> str | None:
        if "token_sha256" not in f:
            self.error(
                self.at(key), f"{what} needs token_sha256 (registry-gateway robot create makes one)"
            )
            return None
        digest = self.string(f["token_sha256"][1], "token_sha256")
        if digest is not None and not _SHA256.fullmatch(digest):
            self.error(
                self.at(f["token_sha256"][0]),
                f"{what}: token_sha256 must be 64 lower-case hex digits",
            )
            return None
        return digest

    def read_robots(self, node: yn.Node, _: yn.Node) -> None:
        for name, key, value in self.mapping(node, "robots"):
            loc = self.at(key)
            if not self.check_name("robot", name, loc):
                continue
            what = f"robot {name!r}"
            f = self.fields(value, what, ("token_sha256", "expires", "description"))
            digest = self.sha256(f, what, key)
            expires = self.date(f["expires"][1], "expires") if "expires" in f else None
            description = ""
            if "description" in f:
                description = self.string(f["description"][1], "description") or ""
            if expires is not None:
                self.out.expiries.append((expires, self.at(f["expires"][0]), name))
            if digest is not None:
                self.out.robots[name] = Robot(name, digest, expires, description, loc)

    def read_teams(self, node: yn.Node, _: yn.Node) -> None:
        allowed = ("owners", "contributors", "viewers", "ldap_groups", "oidc_groups", "description")
        for name, key, value in self.mapping(node, "teams"):
            loc = self.at(key)
            if self.check_name("team", name, loc):
                f = self.fields(value, f"team {name!r}", allowed)
                self.out.teams[name] = self.build_team(name, loc, f)

    def build_team(self, name: str, loc: Location, f: dict[str, tuple[yn.Node, yn.Node]]) -> Team:
        members: list[tuple[Principal, Role]] = []
        refs: list[_Ref] = []
        for key, role in _ROLE_KEYS.items():
            if key in f:
                for item, text in self.strings(f[key][1], f"{key} of team {name!r}"):
                    kind, sep, member = text.partition(":")
                    if not sep:
                        kind, member = "", text
                        self.out.bare.add(text)
                        self.out.bare_members.setdefault(text, []).append(name)
                    elif kind == "user":
                        self.out.user_refs.add(member)
                    elif kind == "robot":
                        self.out.robot_refs.add(member)
                    elif kind == "workload":
                        self.out.workload_refs.append((member, item.start_mark))
                    else:
                        self.error(
                            self.at(item),
                            f"team member {text!r} must be a user, robot or workload (user:NAME, "
                            "robot:NAME, workload:NAME)",
                        )
                        continue
                    refs.append((len(members), text, kind, member, item.start_mark))
                    members.append((self.principal_of(kind or "user", member), role))
        groups: list[tuple[str, Role]] = []
        if "ldap_groups" in f:
            groups = self.ldap_groups(f["ldap_groups"][1], name)
        oidc: list[tuple[str, Role]] = []
        if "oidc_groups" in f:
            oidc = self.ldap_groups(f["oidc_groups"][1], name, "oidc_groups")
        description = ""
        if "description" in f:
            description = self.string(f["description"][1], "description") or ""
        self.out.member_refs[name] = tuple(refs)
        return Team(name, tuple(members), loc, tuple(groups), description, tuple(oidc))

    def ldap_groups(
        self, node: yn.Node, team: str, key: str = "ldap_groups"
    ) -> list[tuple[str, Role]]:
        """`ldap_groups` (or `oidc_groups`): group names (members become viewers) or
        {group: NAME, role: ROLE} mappings."""
        items = node.value if isinstance(node, yn.SequenceNode) else [node]
        out = []
        for item in items:
            if isinstance(item, yn.MappingNode):
                f = self.fields(item, f"an {key} entry of team {team!r}", ("group", "role"))
                dn = self.string(f["group"][1], "group") if "group" in f else None
                role = self.choice(f["role"][1], "role", Role) if "role" in f else Role.VIEWER
                if dn is None and "group" not in f:
                    self.error(self.at(item), f"an {key} entry needs group: NAME")
                if dn and role:
                    out.append((dn, role))
            else:
                dn = self.string(item, f"an {key} entry")
                if dn:
                    out.append((dn, Role.VIEWER))
        return out

    def read_namespaces(self, node: yn.Node, _: yn.Node) -> None:
        allowed = ("teams", "visibility", "description")
        for name, key, value in self.mapping(node, "namespaces"):
            loc = self.at(key)
            if not self.check_name("namespace", name, loc):
                continue
            f = self.fields(value, f"namespace {name!r}", allowed)
            teams = []
            if "teams" in f:
                for item, team in self.strings(f["teams"][1], f"teams of namespace {name!r}"):
                    teams.append((team, item.start_mark))
                    self.out.team_refs.add(team)
            visibility = Visibility.PRIVATE
            if "visibility" in f:
                visibility = self.choice(f["visibility"][1], "visibility", Visibility) or visibility
            description = ""
            if "description" in f:
                description = self.string(f["description"][1], "description") or ""
            names = tuple(team for team, _ in teams)
            self.out.namespaces[name] = Namespace(name, names, visibility, description, loc)
            self.out.namespace_refs[name] = tuple(teams)

    def read_rules(self, node: yn.Node, kind: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(node, yn.SequenceNode):
            if not (isinstance(node, yn.ScalarNode) and yn.scalar(node) is None):
                self.error(self.at(node), f"{kind} must be a list of rules")
            return
        for index, item in enumerate(node.value):
            loc = self.at(item)
            what = f"{kind}[{index}] in {self.file}"
            fields = self.fields(item, what, allowed)
            self.optional_string(fields, "description")
            if kind == "grants":
                self.build_grant(loc, fields)
            else:
                self.build_restriction(loc, fields)

    def read_grants(self, node: yn.Node, _: yn.Node) -> None:
        self.read_rules(node, "grants", ("to", "repositories", "actions", "role", "description"))

    def read_restrictions(self, node: yn.Node, _: yn.Node) -> None:
        allowed = ("repositories", "actions", "only", "description")
        self.read_rules(node, "restrictions", allowed)

    def read_webhooks(self, node: yn.Node, _: yn.Node) -> None:
        """Subscriptions to events: read and checked by gateway/policy/webhooks.py."""
        self.out.webhooks = read_webhooks(node, self.file, self.report)

    def read_workloads(self, node: yn.Node, _: yn.Node) -> None:
        """CI jobs by their OIDC claims: read and checked by gateway/policy/workloads.py."""
        self.out.workloads = read_workloads(node, self.file, self.report)

    def report(self, location: Location, severity: str, message: str) -> None:
        self.problems.append(Problem(location, severity, message))

    def principals(
        self, node: yn.Node, what: str, rule: tuple[str, int]
    ) -> tuple[list[Principal], tuple[_Ref, ...]]:
        """Rule subjects: user:, robot:, team:, authenticated, anonymous, or a bare name (taken
        for a user until the assembly knows better); with the references to check."""
        found: list[Principal] = []
        refs: list[_Ref] = []
        for item, text in self.strings(node, what if what == "only" else "to"):
            if text == "authenticated":
                found.append(AUTHENTICATED)
                continue
            if text == "anonymous":
                found.append(ANONYMOUS)
                continue
            kind, sep, name = text.partition(":")
            if not sep:
                kind, name = "", text
                self.out.bare.add(text)
                self.out.bare_rules.setdefault(text, []).append(rule)
            elif kind == "user":
                self.out.user_refs.add(name)
            elif kind == "robot":
                self.out.robot_refs.add(name)
            elif kind == "team":
                self.out.team_refs.add(name)
            elif kind == "workload":
                self.out.workload_refs.append((name, item.start_mark))
            else:
                self.error(
                    self.at(item),
                    f"{what} {text!r}: unknown kind {kind!r} (user, robot, team or workload)",
                )
                continue
            refs.append((len(found), text, kind, name, item.start_mark))
            found.append(self.principal_of(kind or "user", name))
        return found, tuple(refs)

    def actions(self, node: yn.Node, what: str) -> set[str]:
        out: set[str] = set()
        for item, action in self.strings(node, f"the actions of {what}"):
            if action == "*":
                out.update(REPOSITORY_ACTIONS)
            elif action in REPOSITORY_ACTIONS:
                out.add(action)
            else:
                self.error(
                    self.at(item), f"{what}: unknown action {action!r} (pull, push, delete or '*')"
                )
        return out

    def patterns(
        self, fields: dict[str, tuple[yn.Node, yn.Node]], what: str, loc: Location
    ) -> tuple[str, ...]:
        if "repositories" not in fields:
            self.error(loc, f"{what} needs repositories (a list of patterns)")
            return ()
        out = []
        node = fields["repositories"][1]
        for item, text in self.strings(node, "repositories"):
            try:
                valid_pattern(text)
            except PatternError as exc:
                self.error(self.at(item), str(exc))
                continue
            out.append(text)
        if isinstance(node, yn.SequenceNode) and not node.value:
            self.warning(loc, f"{what} has an empty repositories: list and applies nowhere")
        return tuple(out)

    def build_grant(self, loc: Location, f: dict[str, tuple[yn.Node, yn.Node]]) -> None:
        what = "grant"
        to: list[Principal] = []
        refs: tuple[_Ref, ...] = ()
        if "to" not in f:
            self.error(loc, f"{what} needs to: (who is granted)")
        else:
            to, refs = self.principals(f["to"][1], "grantee", ("grants", len(self.out.grants)))
            if isinstance(f["to"][1], yn.SequenceNode) and not f["to"][1].value:
                self.warning(loc, f"{what} has an empty to: list and grants nothing")
        patterns = self.patterns(f, what, loc)
        role = None
        if ("actions" in f) == ("role" in f):
            self.error(loc, f"{what} needs either actions: or role:, not both or neither")
            return
        if "role" in f:
            role = self.choice(f["role"][1], "role", Role)
            if role is None:
                return
            actions = set(role.actions)
        else:
            actions = self.actions(f["actions"][1], what)
        if "actions" in f and not actions:
            self.warning(loc, f"{what} has no actions and grants nothing")
        if ANONYMOUS in to and actions - {PULL}:
            self.error(loc, f"{what}: anonymous may only be granted pull")
        if PUSH in actions and PULL not in actions:
            self.warning(loc, f"{what} grants push without pull; the registry needs both to upload")
        self.out.grants.append(Grant(tuple(to), patterns, frozenset(actions), role, loc))
        self.out.grant_refs.append(refs)

    def build_restriction(self, loc: Location, f: dict[str, tuple[yn.Node, yn.Node]]) -> None:
        what = "restriction"
        patterns = self.patterns(f, what, loc)
        actions: set[str] = set()
        if "actions" not in f:
            self.error(loc, f"{what} needs actions: (which actions it reserves)")
        else:
            actions = self.actions(f["actions"][1], what)
        only: list[Principal] = []
        refs: tuple[_Ref, ...] = ()
        if "only" not in f:
            self.error(loc, f"{what} needs only: (who may still act; [] for nobody)")
        else:
            rule = ("restrictions", len(self.out.restrictions))
            only, refs = self.principals(f["only"][1], "only", rule)
        if ANONYMOUS in only:
            self.warning(
                loc, f"{what} lists anonymous in only:, which reaches everyone: it restricts nobody"
            )
        self.out.restrictions.append(Restriction(patterns, frozenset(actions), tuple(only), loc))
        self.out.restriction_refs.append(refs)


# -- all files together ----------------------------------------------------------------------


@dataclass(slots=True)
class _Outcome:
    """What one file gave the last good assembly: its rules with their subjects checked (and
    corrected where a bare name is a robot's), and its teams so corrected."""

    grants: tuple[Grant, ...]
    restrictions: tuple[Restriction, ...]
    teams: dict[str, Team]


@dataclass(slots=True)
class _Assembled:
    """The last good assembly, for the next one to start from: its files, what they defined
    (merged), and each file's outcome."""

    files: dict[tuple[str, bytes], _ParsedFile]
    settings: Settings
    users: dict[str, User]
    robots: dict[str, Robot]
    teams: dict[str, Team]
    namespaces: dict[str, Namespace]
    outcomes: dict[tuple[str, bytes], _Outcome]


class _Assembly:
    """Puts parsed files together: first definitions win, later ones are errors; references
    are checked against every file; bare names that turn out to be robots are corrected.

    Given the last good assembly (`before`), only what the change can affect is done again:
    a file that was there before keeps its outcome unless a name it refers to came or went,
    and when no definition changed, the merged definitions are kept as they were."""

    def __init__(self, today: dt.date) -> None:
        self.today = today
        self.problems: list[Problem] = []
        self.made: _Assembled | None = None

    def error(self, location: Location, message: str) -> None:
        self.problems.append(Problem(location, "error", message))

    def report(self, location: Location, severity: str, message: str) -> None:
        self.problems.append(Problem(location, severity, message))

    def build(
        self,
        files: list[_ParsedFile],
        revision: str,
        names: tuple[str, ...],
        before: _Assembled | None = None,
    ) -> Policy | None:
        for f in files:
            self.problems.extend(f.problems)
        came, gone = files, []
        if before is not None:
            keys = {f.key for f in files}
            came = [f for f in files if before.files.get(f.key) is not f]
            gone = [f for key, f in before.files.items() if key not in keys]
        changed = came + gone
        if before is not None and not any(_defines(f) for f in changed):
            settings, users, robots = before.settings, before.users, before.robots
            # Teams are copied: checking a file may correct them (never the others: no file
            # changes them when no definition changed).
            teams, namespaces = dict(before.teams), before.namespaces
            winner = next((f for f in files if f.settings is not None), None)
            if winner is not None:
                self.problems.extend(winner.settings_problems)
            touched: tuple[set[str], set[str]] | None = (set(), set())
        else:
            settings, users, robots, teams, namespaces = self.definitions(files)
            touched = None if before is None else _touched(changed, gone)
        for f in files:
            for expires, where, name in f.expiries:
                if expires < self.today and robots.get(name) is not None:
                    message = f"robot {name!r} expired on {expires}; it cannot sign in"
                    self.problems.append(Problem(where, "warning", message))
        outcomes: dict[tuple[str, bytes], _Outcome] = {}
        grants: list[Grant] = []
        restrictions: list[Restriction] = []
        for f in files:
            outcome = None
            if before is not None and touched is not None and f not in came:
                outcome = before.outcomes.get(f.key)
                if outcome is not None and not _affected(f, *touched):
                    for name, team in outcome.teams.items():
                        if teams.get(name) is f.teams[name]:
                            teams[name] = team
                else:
                    outcome = None
            if outcome is None:
                errors = len(self.problems)
                outcome = self.check(f, users, robots, teams)
                if len(self.problems) > errors:
                    continue
            outcomes[f.key] = outcome
            grants.extend(outcome.grants)
            restrictions.extend(outcome.restrictions)
        webhooks = merge_webhooks((f.webhooks for f in files), self.report)
        workloads = merge_workloads((f.workloads for f in files), self.report)
        for f in files:
            for name, mark in f.workload_refs:
                if name not in workloads:
                    self.error(_at(f, mark), f"workload:{name} refers to no defined workload")
        if any(p.severity == "error" for p in self.problems):
            return None
        self.made = _Assembled(
            {f.key: f for f in files}, settings, users, robots, teams, namespaces, outcomes
        )
        return Policy(
            settings=settings,
            users=users,
            robots=robots,
            teams=teams,
            namespaces=namespaces,
            grants=tuple(grants),
            restrictions=tuple(restrictions),
            revision=revision,
            files=names,
            webhooks=webhooks,
            workloads=workloads,
        )

    def definitions(
        self, files: list[_ParsedFile]
    ) -> tuple[Settings, dict[str, User], dict[str, Robot], dict[str, Team], dict[str, Namespace]]:
        """Settings, users, robots, teams and namespaces (personal ones included) of all files."""
        settings: Settings | None = None
        users: dict[str, User] = {}
        robots: dict[str, Robot] = {}
        teams: dict[str, Team] = {}
        declared: dict[str, Namespace] = {}
        for f in files:
            if f.settings is not None:
                if settings is None:
                    settings = f.settings
                    self.problems.extend(f.settings_problems)
                else:
                    self.error(
                        f.settings.location,
                        f"settings are defined twice (first at {settings.location})",
                    )
            self.merge("user", users, f.users)
            self.merge("robot", robots, f.robots)
            self.merge("team", teams, f.teams)
            self.merge("namespace", declared, f.namespaces)
        for name, robot in robots.items():
            if name in users:
                self.error(
                    robot.location,
                    f"robot {name!r} has the name of a user (at {users[name].location}); "
                    "users and robots sign in by name, so names must be unique",
                )
        settings = settings or Settings()
        namespaces = declared
        if settings.personal_namespaces:
            namespaces = dict(declared)
            for f in files:
                if declared.keys().isdisjoint(f.personal):
                    namespaces.update(f.personal)
                    continue
                for name, personal in f.personal.items():
                    if name in declared:
                        self.error(
                            declared[name].location,
                            f"namespace {name!r} collides with the personal namespace of user "
                            f"{name!r} (at {users[name].location}); rename it or set "
                            "settings.personal_namespaces: false",
                        )
                    else:
                        namespaces[name] = personal
        return settings, users, robots, teams, namespaces

    def check(
        self,
        f: _ParsedFile,
        users: Mapping[str, User],
        robots: Mapping[str, Robot],
        teams: dict[str, Team],
    ) -> _Outcome:
        """Check one file's references (correcting its teams in `teams`): its outcome."""
        corrected: dict[str, Team] = {}
        if self.all_known(f, users, robots, teams):
            robots_named = f.bare.difference(users)  # bare names of robots, not users
            if not robots_named:
                return _Outcome(tuple(f.grants), tuple(f.restrictions), corrected)
            return self.correct(f, robots_named, teams, users, robots)
        for name, team in f.teams.items():
            if teams.get(name) is team:
                teams[name] = corrected[name] = self.resolve_team(f, team, users, robots)
        for name, named in f.namespace_refs.items():
            for team_name, mark in named:
                if team_name not in teams:
                    self.error(
                        _at(f, mark), f"namespace {name!r}: team {team_name!r} is not defined"
                    )
        grants = []
        for index, (grant, refs) in enumerate(zip(f.grants, f.grant_refs, strict=True)):
            to = self.resolve(f, grant.to, refs, "grantee", users, robots, teams)
            grants.append(_rule(f, ("grants", index), grant, to))
        restrictions = []
        for index, (restriction, refs) in enumerate(
            zip(f.restrictions, f.restriction_refs, strict=True)
        ):
            only = self.resolve(f, restriction.only, refs, "only", users, robots, teams)
            restrictions.append(_rule(f, ("restrictions", index), restriction, only))
        return _Outcome(tuple(grants), tuple(restrictions), corrected)

    def merge(self, kind: str, into: dict[str, Any], found: Mapping[str, Any]) -> None:
        """Definitions of one kind from one more file; a name defined before is an error."""
        if into.keys().isdisjoint(found):
            into.update(found)
            return
        for name, definition in found.items():
            first = into.get(name)
            if first is None:
                into[name] = definition
            else:
                self.error(
                    definition.location,
                    f"{kind} {name!r} is defined twice (first at {first.location})",
                )

    def correct(
        self,
        f: _ParsedFile,
        robots_named: set[str],
        teams: dict[str, Team],
        users: Mapping[str, User],
        robots: Mapping[str, Robot],
    ) -> _Outcome:
        """The outcome of a file whose references all hold: just the teams and rules where a
        bare name is a robot's (read as a user's until now) are corrected."""
        corrected: dict[str, Team] = {}
        for name in {t for bare in robots_named for t in f.bare_members.get(bare, ())}:
            if teams.get(name) is f.teams[name]:
                teams[name] = corrected[name] = self.resolve_team(f, f.teams[name], users, robots)
        uses = {rule for bare in robots_named for rule in f.bare_rules.get(bare, ())}
        grants, restrictions = list(f.grants), list(f.restrictions)
        for kind, index in uses:
            if kind == "grants":
                grant, refs = grants[index], f.grant_refs[index]
                to = self.resolve(f, grant.to, refs, "grantee", users, robots, teams)
                grants[index] = _rule(f, ("grants", index), grant, to)
            else:
                restriction, refs = restrictions[index], f.restriction_refs[index]
                only = self.resolve(f, restriction.only, refs, "only", users, robots, teams)
                restrictions[index] = _rule(f, ("restrictions", index), restriction, only)
        return _Outcome(tuple(grants), tuple(restrictions), corrected)

    @staticmethod
    def all_known(
        f: _ParsedFile,
        users: Mapping[str, User],
        robots: Mapping[str, Robot],
        teams: Mapping[str, Team],
    ) -> bool:
        """Whether every reference in `f` is to a defined name (checked with set operations:
        fast), so that what `f` built stands, but for bare names that are robots'."""
        return not (
            f.bare.difference(users).difference(robots)
            or f.user_refs.difference(users)
            or f.robot_refs.difference(robots)
            or f.team_refs.difference(teams)
        )

    def resolve_team(
        self, f: _ParsedFile, team: Team, users: Mapping[str, User], robots: Mapping[str, Robot]
    ) -> Team:
        members = list(team.members)
        changed = []
        for position, text, kind, name, mark in f.member_refs[team.name]:
            if kind == "workload":  # checked against every file's workloads by `build`
                continue
            if (kind == "robot" and name in robots) or (kind != "robot" and name in users):
                continue
            if not kind and name in robots:
                members[position] = (Principal("robot", name), members[position][1])
                changed.append(position)
                continue
            self.error(_at(f, mark), f"team member {text!r} is no known {kind or 'user or robot'}")
        if not changed:
            return team
        return _corrected(
            f, team.name, tuple(changed), lambda: replace(team, members=tuple(members))
        )

    def resolve(
        self,
        f: _ParsedFile,
        principals: tuple[Principal, ...],
        refs: tuple[_Ref, ...],
        what: str,
        users: Mapping[str, User],
        robots: Mapping[str, Robot],
        teams: Mapping[str, Team],
    ) -> tuple[Principal, ...] | None:
        """Check a rule's subjects; the corrected tuple when a bare name is a robot's."""
        found = list(principals)
        changed = False
        for position, text, kind, name, mark in refs:
            if not kind:
                if name in users:
                    continue
                if name in robots:
                    found[position] = Principal("robot", name)
                    changed = True
                    continue
                self.error(
                    _at(f, mark),
                    f"{what} {text!r} is unknown; write user:NAME, robot:NAME, team:NAME, "
                    "authenticated or anonymous",
                )
                continue
            if kind == "workload":  # checked against every file's workloads by `build`
                continue
            known: Container[str] = {"user": users, "robot": robots, "team": teams}[kind]
            if name not in known:
                self.error(_at(f, mark), f"{what} {text!r} refers to no defined {kind}")
        return tuple(found) if changed else None


_T = TypeVar("_T")
_R = TypeVar("_R", Grant, Restriction)


def _corrected(f: _ParsedFile, key: object, what: object, make: Callable[[], _T]) -> _T:
    """`make()`, or the object made for the same correction of the same thing last time."""
    found = f.corrected.get(key)
    if found is not None and found[0] == what:
        made: _T = found[1]
        return made
    made = make()
    f.corrected[key] = (what, made)
    return made


def _rule(
    f: _ParsedFile, key: tuple[str, int], rule: _R, principals: tuple[Principal, ...] | None
) -> _R:
    """A grant or restriction with its subjects corrected (`principals`), or as it was."""
    if principals is None:
        return rule
    if isinstance(rule, Grant):
        return _corrected(f, key, principals, lambda: replace(rule, to=principals))
    return _corrected(f, key, principals, lambda: replace(rule, only=principals))


def _defines(f: _ParsedFile) -> bool:
    """Whether a file defines anything another file may depend on (or settings)."""
    return bool(f.users or f.robots or f.teams or f.namespaces or f.settings is not None)


def _touched(changed: list[_ParsedFile], gone: list[_ParsedFile]) -> tuple[set[str], set[str]]:
    """The names of users and robots, and of teams, that came or went with a change: defined
    by the files that went and not by those that came, or the other way round."""
    went = [f for f in changed if f in gone]
    came = [f for f in changed if f not in gone]

    def names(files: list[_ParsedFile], kind: str) -> set[str]:
        return {name for f in files for name in getattr(f, kind)}

    people = set()
    for kind in ("users", "robots"):
        people |= names(went, kind) ^ names(came, kind)
    return people, names(went, "teams") ^ names(came, "teams")


def _affected(f: _ParsedFile, people: set[str], teams: set[str]) -> bool:
    """Whether a change of these names may change what `f`'s references resolve to."""
    return not (
        people.isdisjoint(f.bare)
        and people.isdisjoint(f.user_refs)
        and people.isdisjoint(f.robot_refs)
        and teams.isdisjoint(f.team_refs)
    )


def _at(f: _ParsedFile, mark: Any) -> Location:
    return Location(f.name, mark.line + 1, mark.column + 1)
