"""YAML policy directory -> `Policy`, with every problem located at file:line:column."""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import os
import re
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
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
)
from gateway.policy.patterns import PatternError, compile_pattern, is_component
from gateway.policy.webhooks import merge_webhooks, read_webhooks

SECTIONS = (
    "settings",
    "users",
    "robots",
    "teams",
    "namespaces",
    "grants",
    "restrictions",
    "webhooks",
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
    directory: Path, *, revision: str | None = None, today: dt.date | None = None
) -> LoadResult:
    """Load and validate a policy directory; PolicyError lists every error at once."""
    texts = policy_files(directory)
    if revision is None:
        revision = content_revision(texts, base=directory)
    return load_texts(texts, revision=revision, today=today)


def load_texts(
    texts: Mapping[str, str], *, revision: str | None = None, today: dt.date | None = None
) -> LoadResult:
    """Load and validate a policy from file texts keyed by display name."""
    builder = _Builder(today or dt.date.today())
    for name in sorted(texts):
        builder.read_file(name, texts[name])
    policy = builder.build(revision or content_revision(texts), tuple(sorted(texts)))
    errors = [p for p in builder.problems if p.severity == "error"]
    if errors or policy is None:
        raise PolicyError(sorted(builder.problems, key=_order))
    warnings = tuple(sorted((p for p in builder.problems), key=_order))
    return LoadResult(policy, warnings)


def _order(problem: Problem) -> tuple[str, int, int]:
    loc = problem.location
    return (loc.file, loc.line, loc.column)


class _Builder:
    """Collects definitions across files, then resolves references between them."""

    def __init__(self, today: dt.date) -> None:
        self.today = today
        self.problems: list[Problem] = []
        self.settings: Settings | None = None
        self.users: dict[str, User] = {}
        self.robots: dict[str, Robot] = {}
        self.raw_teams: dict[str, tuple[Location, dict[str, Any]]] = {}
        self.raw_namespaces: dict[str, tuple[Location, dict[str, Any]]] = {}
        self.raw_grants: list[tuple[Location, dict[str, Any]]] = []
        self.raw_restrictions: list[tuple[Location, dict[str, Any]]] = []
        self.defined: dict[tuple[str, str], Location] = {}
        self.webhooks: list[dict[str, Webhook]] = []  # per file (gateway/policy/webhooks.py)

    # -- reporting -----------------------------------------------------------------------

    def error(self, location: Location, message: str) -> None:
        self.problems.append(Problem(location, "error", message))

    def warning(self, location: Location, message: str) -> None:
        self.problems.append(Problem(location, "warning", message))

    def report(self, location: Location, severity: str, message: str) -> None:
        self.problems.append(Problem(location, severity, message))

    # -- node helpers --------------------------------------------------------------------

    def mapping(
        self, node: yn.Node, file: str, what: str
    ) -> Iterator[tuple[str, Location, yn.Node]]:
        """The (key, key location, value node) pairs of a mapping; duplicate keys reported."""
        if isinstance(node, yn.ScalarNode) and yn.scalar(node) is None:
            return
        if not isinstance(node, yn.MappingNode):
            self.error(yn.location(node, file), f"{what} must be a mapping, not {yn.kind(node)}")
            return
        seen: dict[str, Location] = {}
        for key_node, value_node in node.value:
            loc = yn.location(key_node, file)
            if not isinstance(key_node, yn.ScalarNode):
                self.error(loc, f"keys of {what} must be plain names")
                continue
            key = str(key_node.value)
            if key == "<<":
                self.error(loc, "YAML merge keys ('<<') are not supported in policy files")
                continue
            if key in seen:
                self.error(loc, f"{what}: key {key!r} is repeated (first at line {seen[key].line})")
                continue
            seen[key] = loc
            yield key, loc, value_node

    def fields(
        self, node: yn.Node, file: str, what: str, allowed: tuple[str, ...]
    ) -> dict[str, tuple[Location, yn.Node]]:
        """A mapping's known fields; unknown ones are reported with a suggestion."""
        out: dict[str, tuple[Location, yn.Node]] = {}
        for key, loc, value in self.mapping(node, file, what):
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                self.error(
                    loc,
                    f"unknown key {key!r} in {what} (expected: {', '.join(allowed)}){suggestion}",
                )
                continue
            out[key] = (loc, value)
        return out

    def string(self, node: yn.Node, file: str, what: str) -> str | None:
        value = yn.scalar(node) if isinstance(node, yn.ScalarNode) else None
        if isinstance(value, str) and value:
            return value
        self.error(
            yn.location(node, file), f"{what} must be a non-empty string, not {yn.kind(node)}"
        )
        return None

    def optional_string(self, f: dict[str, tuple[Location, yn.Node]], key: str, file: str) -> str:
        """An optional free-text field (descriptions, names): a string when present."""
        if key not in f:
            return ""
        return self.string(f[key][1], file, key) or ""

    def boolean(self, node: yn.Node, file: str, what: str) -> bool | None:
        value = yn.scalar(node) if isinstance(node, yn.ScalarNode) else None
        if isinstance(value, bool):
            return value
        self.error(yn.location(node, file), f"{what} must be true or false, not {yn.kind(node)}")
        return None

    def date(self, node: yn.Node, file: str, what: str) -> dt.date | None:
        value = yn.scalar(node) if isinstance(node, yn.ScalarNode) else None
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        self.error(yn.location(node, file), f"{what} must be a date such as 2027-06-30")
        return None

    def strings(self, node: yn.Node, file: str, what: str) -> list[tuple[Location, str]]:
        """A list of strings, or one string standing for a list of one."""
        items = node.value if isinstance(node, yn.SequenceNode) else [node]
        if isinstance(node, yn.MappingNode):
            self.error(yn.location(node, file), f"{what} must be a list, not a mapping")
            return []
        out = []
        for item in items:
            text = self.string(item, file, f"each entry of {what}")
            if text is not None:
                out.append((yn.location(item, file), text))
        return out

    def choice(self, node: yn.Node, file: str, what: str, enum: type[_E]) -> _E | None:
        value = yn.scalar(node) if isinstance(node, yn.ScalarNode) else None
        try:
            return enum(value)
        except ValueError:
            names = ", ".join(member.value for member in enum)
            self.error(yn.location(node, file), f"{what} must be one of {names}, not {value!r}")
            return None

    # -- pass 1: read each file ----------------------------------------------------------

    def read_file(self, file: str, text: str) -> None:
        root = yn.compose(text, file)
        if root is None:
            return
        if isinstance(root, yn.SyntaxProblem):
            self.error(root.location, root.message)
            return
        for section, loc, node in self.mapping(root, file, "a policy file"):
            reader = getattr(self, f"read_{section}", None) if section in SECTIONS else None
            if reader is None:
                hint = difflib.get_close_matches(section, SECTIONS, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                self.error(
                    loc,
                    f"unknown top-level key {section!r} (expected: {', '.join(SECTIONS)})"
                    f"{suggestion}",
                )
                continue
            reader(node, file, loc)

    def define(self, kind: str, name: str, loc: Location) -> bool:
        """Record a definition; report a second one of the same kind and name."""
        first = self.defined.get((kind, name))
        if first is not None:
            self.error(loc, f"{kind} {name!r} is defined twice (first at {first})")
            return False
        self.defined[(kind, name)] = loc
        return True

    def check_name(self, kind: str, name: str, loc: Location) -> bool:
        if is_component(name):
            return True
        self.error(
            loc,
            f"{kind} name {name!r} must be lower-case letters and digits, optionally joined "
            "by '.', '_' or '-'",
        )
        return False

    def read_settings(self, node: yn.Node, file: str, loc: Location) -> None:
        if self.settings is not None:
            self.error(loc, f"settings are defined twice (first at {self.settings.location})")
            return
        f = self.fields(node, file, "settings", ("personal_namespaces", "global_namespace"))
        personal = True
        visibility = Visibility.PROTECTED
        if "personal_namespaces" in f:
            value = self.boolean(f["personal_namespaces"][1], file, "personal_namespaces")
            personal = True if value is None else value
        if "global_namespace" in f:
            choice = self.choice(f["global_namespace"][1], file, "global_namespace", Visibility)
            visibility = choice or visibility
        self.settings = Settings(personal, visibility, loc)

    def read_users(self, node: yn.Node, file: str, _: Location) -> None:
        allowed = ("password", "admin", "tokens", "full_name", "email")
        for name, loc, value in self.mapping(node, file, "users"):
            if not self.check_name("user", name, loc) or not self.define("user", name, loc):
                continue
            f = self.fields(value, file, f"user {name!r}", allowed)
            password = None
            if "password" in f:
                password = self.password_hash(f["password"][1], file, name)
            admin = bool("admin" in f and self.boolean(f["admin"][1], file, "admin"))
            tokens = self.read_tokens(f["tokens"][1], file, name) if "tokens" in f else ()
            full_name = self.optional_string(f, "full_name", file)
            email = self.optional_string(f, "email", file)
            self.users[name] = User(name, password, admin, loc, tokens, full_name, email)

    def password_hash(self, node: yn.Node, file: str, user: str) -> str | None:
        value = self.string(node, file, f"the password of user {user!r}")
        if value is None:
            return None
        loc = yn.location(node, file)
        if not value.startswith("$"):
            self.error(
                loc,
                f"user {user!r}: the password looks like plaintext; put a bcrypt or argon2id "
                "hash here (registry-gateway hash-password prints one)",
            )
        elif value.startswith("$2"):
            if not _BCRYPT.fullmatch(value):
                self.error(loc, f"user {user!r}: malformed bcrypt hash")
                return None
        elif value.startswith("$argon2"):
            if not _ARGON2ID.fullmatch(value):
                self.error(
                    loc,
                    f"user {user!r}: malformed argon2 hash (only argon2id, version 19, works)",
                )
                return None
        else:
            scheme = value.split("$")[1] if value.count("$") > 1 else value
            self.error(
                loc,
                f"user {user!r}: unsupported password hash scheme ${scheme}$; "
                "use bcrypt ($2b$) or argon2id",
            )
            return None
        return value

    def read_tokens(self, node: yn.Node, file: str, user: str) -> tuple[AccessToken, ...]:
        tokens = []
        for name, loc, value in self.mapping(node, file, f"tokens of user {user!r}"):
            what = f"token {name!r} of user {user!r}"
            f = self.fields(
                value, file, what, ("token_sha256", "expires", "actions", "description")
            )
            self.optional_string(f, "description", file)
            digest = self.sha256(f, file, what, loc)
            expires = self.date(f["expires"][1], file, "expires") if "expires" in f else None
            actions = None
            if "actions" in f:
                actions = frozenset(self.actions(f["actions"][1], file, what))
            if digest is not None:
                tokens.append(AccessToken(name, digest, expires, actions, loc))
        return tuple(tokens)

    def sha256(
        self, f: dict[str, tuple[Location, yn.Node]], file: str, what: str, loc: Location
    ) -> str | None:
        if "token_sha256" not in f:
            self.error(loc, f"{what} needs token_sha256 (registry-gateway robot create makes one)")
            return None
        digest = self.string(f["token_sha256"][1], file, "token_sha256")
        if digest is not None and not _SHA256.fullmatch(digest):
            self.error(
                f["token_sha256"][0], f"{what}: token_sha256 must be 64 lower-case hex digits"
            )
            return None
        return digest

    def read_robots(self, node: yn.Node, file: str, _: Location) -> None:
        for name, loc, value in self.mapping(node, file, "robots"):
            if not self.check_name("robot", name, loc) or not self.define("robot", name, loc):
                continue
            what = f"robot {name!r}"
            f = self.fields(value, file, what, ("token_sha256", "expires", "description"))
            digest = self.sha256(f, file, what, loc)
            expires = self.date(f["expires"][1], file, "expires") if "expires" in f else None
            description = ""
            if "description" in f:
                description = self.string(f["description"][1], file, "description") or ""
            if expires is not None and expires < self.today:
                self.warning(
                    f["expires"][0], f"robot {name!r} expired on {expires}; it cannot sign in"
                )
            if digest is not None:
                self.robots[name] = Robot(name, digest, expires, description, loc)

    def read_teams(self, node: yn.Node, file: str, _: Location) -> None:
        for name, loc, value in self.mapping(node, file, "teams"):
            if self.check_name("team", name, loc) and self.define("team", name, loc):
                allowed = ("owners", "contributors", "viewers", "ldap_groups", "description")
                self.raw_teams[name] = (
                    loc,
                    {"file": file, **self.fields(value, file, f"team {name!r}", allowed)},
                )

    def read_namespaces(self, node: yn.Node, file: str, _: Location) -> None:
        for name, loc, value in self.mapping(node, file, "namespaces"):
            if self.check_name("namespace", name, loc) and self.define("namespace", name, loc):
                allowed = ("teams", "visibility", "description")
                fields = self.fields(value, file, f"namespace {name!r}", allowed)
                self.raw_namespaces[name] = (loc, {"file": file, **fields})

    def read_rules(self, node: yn.Node, file: str, kind: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(node, yn.SequenceNode):
            if not (isinstance(node, yn.ScalarNode) and yn.scalar(node) is None):
                self.error(yn.location(node, file), f"{kind} must be a list of rules")
            return
        out = self.raw_grants if kind == "grants" else self.raw_restrictions
        for index, item in enumerate(node.value):
            loc = yn.location(item, file)
            what = f"{kind}[{index}] in {file}"
            fields = self.fields(item, file, what, allowed)
            self.optional_string(fields, "description", file)
            out.append((loc, {"file": file, **fields}))

    def read_grants(self, node: yn.Node, file: str, _: Location) -> None:
        self.read_rules(
            node, file, "grants", ("to", "repositories", "actions", "role", "description")
        )

    def read_restrictions(self, node: yn.Node, file: str, _: Location) -> None:
        allowed = ("repositories", "actions", "only", "description")
        self.read_rules(node, file, "restrictions", allowed)

    def read_webhooks(self, node: yn.Node, file: str, _: Location) -> None:
        """Subscriptions to events: read and checked by gateway/policy/webhooks.py."""
        self.webhooks.append(read_webhooks(node, file, self.report))

    # -- pass 2: resolve references ------------------------------------------------------

    def member(self, loc: Location, text: str) -> Principal | None:
        """A team member: `user:NAME`, `robot:NAME`, or a bare name of either."""
        kind, sep, name = text.partition(":")
        if not sep:
            kind, name = ("user" if text in self.users else "robot"), text
        if kind == "user" and name in self.users:
            return Principal("user", name)
        if kind == "robot" and name in self.robots:
            return Principal("robot", name)
        if kind not in ("user", "robot"):
            self.error(loc, f"team member {text!r} must be a user or robot (user:NAME, robot:NAME)")
        else:
            self.error(
                loc, f"team member {text!r} is no known {'user or robot' if not sep else kind}"
            )
        return None

    def principal(self, loc: Location, text: str, what: str) -> Principal | None:
        """A rule subject: user:, robot:, team:, authenticated, anonymous, or a bare name."""
        if text == "authenticated":
            return AUTHENTICATED
        if text == "anonymous":
            return ANONYMOUS
        kind, sep, name = text.partition(":")
        if not sep:
            if text in self.users or text in self.robots:
                return self.member(loc, text)
            self.error(
                loc,
                f"{what} {text!r} is unknown; write user:NAME, robot:NAME, team:NAME, "
                "authenticated or anonymous",
            )
            return None
        kinds: dict[str, Container[str]] = {
            "user": self.users,
            "robot": self.robots,
            "team": self.raw_teams,
        }
        known = kinds.get(kind)
        if known is None:
            self.error(loc, f"{what} {text!r}: unknown kind {kind!r} (user, robot or team)")
            return None
        if name not in known:
            self.error(loc, f"{what} {text!r} refers to no defined {kind}")
            return None
        return Principal(kind, name)

    def actions(self, node: yn.Node, file: str, what: str) -> set[str]:
        out: set[str] = set()
        for loc, action in self.strings(node, file, f"the actions of {what}"):
            if action == "*":
                out.update(REPOSITORY_ACTIONS)
            elif action in REPOSITORY_ACTIONS:
                out.add(action)
            else:
                self.error(loc, f"{what}: unknown action {action!r} (pull, push, delete or '*')")
        return out

    def patterns(self, fields: dict[str, Any], what: str, loc: Location) -> tuple[str, ...]:
        if "repositories" not in fields:
            self.error(loc, f"{what} needs repositories (a list of patterns)")
            return ()
        out = []
        for item_loc, text in self.strings(
            fields["repositories"][1], fields["file"], "repositories"
        ):
            try:
                compile_pattern(text)
            except PatternError as exc:
                self.error(item_loc, str(exc))
                continue
            out.append(text)
        node = fields["repositories"][1]
        if isinstance(node, yn.SequenceNode) and not node.value:
            self.warning(loc, f"{what} has an empty repositories: list and applies nowhere")
        return tuple(out)

    def build_team(self, name: str, loc: Location, f: dict[str, Any]) -> Team:
        file = f["file"]
        members: list[tuple[Principal, Role]] = []
        for key, role in _ROLE_KEYS.items():
            if key in f:
                for item_loc, text in self.strings(f[key][1], file, f"{key} of team {name!r}"):
                    principal = self.member(item_loc, text)
                    if principal is not None:
                        members.append((principal, role))
        groups: list[tuple[str, Role]] = []
        if "ldap_groups" in f:
            groups = self.ldap_groups(f["ldap_groups"][1], file, name)
        description = ""
        if "description" in f:
            description = self.string(f["description"][1], file, "description") or ""
        return Team(name, tuple(members), loc, tuple(groups), description)

    def ldap_groups(self, node: yn.Node, file: str, team: str) -> list[tuple[str, Role]]:
        """`ldap_groups`: DNs (members become viewers) or {group: DN, role: ROLE} mappings."""
        items = node.value if isinstance(node, yn.SequenceNode) else [node]
        out = []
        for item in items:
            if isinstance(item, yn.MappingNode):
                f = self.fields(
                    item, file, f"an ldap_groups entry of team {team!r}", ("group", "role")
                )
                dn = self.string(f["group"][1], file, "group") if "group" in f else None
                role = self.choice(f["role"][1], file, "role", Role) if "role" in f else Role.VIEWER
                if dn is None and "group" not in f:
                    self.error(yn.location(item, file), "an ldap_groups entry needs group: DN")
                if dn and role:
                    out.append((dn, role))
            else:
                dn = self.string(item, file, "an ldap_groups entry")
                if dn:
                    out.append((dn, Role.VIEWER))
        return out

    def build_namespace(self, name: str, loc: Location, f: dict[str, Any]) -> Namespace:
        file = f["file"]
        teams = []
        if "teams" in f:
            for item_loc, team in self.strings(f["teams"][1], file, f"teams of namespace {name!r}"):
                if team not in self.raw_teams:
                    self.error(item_loc, f"namespace {name!r}: team {team!r} is not defined")
                else:
                    teams.append(team)
        visibility = Visibility.PRIVATE
        if "visibility" in f:
            visibility = (
                self.choice(f["visibility"][1], file, "visibility", Visibility) or visibility
            )
        description = ""
        if "description" in f:
            description = self.string(f["description"][1], file, "description") or ""
        return Namespace(name, tuple(teams), visibility, description, loc)

    def build_grant(self, index: int, loc: Location, f: dict[str, Any]) -> Grant | None:
        file, what = f["file"], "grant"
        to = []
        if "to" not in f:
            self.error(loc, f"{what} needs to: (who is granted)")
        else:
            for item_loc, text in self.strings(f["to"][1], file, "to"):
                principal = self.principal(item_loc, text, "grantee")
                if principal is not None:
                    to.append(principal)
            if isinstance(f["to"][1], yn.SequenceNode) and not f["to"][1].value:
                self.warning(loc, f"{what} has an empty to: list and grants nothing")
        patterns = self.patterns(f, what, loc)
        role = None
        if ("actions" in f) == ("role" in f):
            self.error(loc, f"{what} needs either actions: or role:, not both or neither")
            return None
        if "role" in f:
            role = self.choice(f["role"][1], file, "role", Role)
            if role is None:
                return None
            actions = set(role.actions)
        else:
            actions = self.actions(f["actions"][1], file, what)
        if "actions" in f and not actions:
            self.warning(loc, f"{what} has no actions and grants nothing")
        if ANONYMOUS in to and actions - {PULL}:
            self.error(loc, f"{what}: anonymous may only be granted pull")
        if PUSH in actions and PULL not in actions:
            self.warning(loc, f"{what} grants push without pull; the registry needs both to upload")
        return Grant(tuple(to), patterns, frozenset(actions), role, loc)

    def build_restriction(self, loc: Location, f: dict[str, Any]) -> Restriction:
        file, what = f["file"], "restriction"
        patterns = self.patterns(f, what, loc)
        actions: set[str] = set()
        if "actions" not in f:
            self.error(loc, f"{what} needs actions: (which actions it reserves)")
        else:
            actions = self.actions(f["actions"][1], file, what)
        only = []
        if "only" not in f:
            self.error(loc, f"{what} needs only: (who may still act; [] for nobody)")
        else:
            for item_loc, text in self.strings(f["only"][1], file, "only"):
                principal = self.principal(item_loc, text, "only")
                if principal is not None:
                    only.append(principal)
        if ANONYMOUS in only:
            self.warning(
                loc, f"{what} lists anonymous in only:, which reaches everyone: it restricts nobody"
            )
        return Restriction(patterns, frozenset(actions), tuple(only), loc)

    def build(self, revision: str, files: tuple[str, ...]) -> Policy | None:
        for (kind, name), loc in self.defined.items():
            if kind == "robot" and ("user", name) in self.defined:
                self.error(
                    loc,
                    f"robot {name!r} has the name of a user (at {self.defined[('user', name)]}); "
                    "users and robots sign in by name, so names must be unique",
                )
        settings = self.settings or Settings()
        teams = {name: self.build_team(name, loc, f) for name, (loc, f) in self.raw_teams.items()}
        namespaces = {
            name: self.build_namespace(name, loc, f)
            for name, (loc, f) in self.raw_namespaces.items()
        }
        if settings.personal_namespaces:
            for name, user in self.users.items():
                if name in namespaces:
                    self.error(
                        namespaces[name].location,
                        f"namespace {name!r} collides with the personal namespace of user "
                        f"{name!r} (at {user.location}); rename it or set "
                        "settings.personal_namespaces: false",
                    )
                    continue
                namespaces[name] = Namespace(
                    name,
                    (),
                    Visibility.PRIVATE,
                    f"personal namespace of {name}",
                    user.location,
                    personal=True,
                )
        grants = []
        for index, (loc, f) in enumerate(self.raw_grants):
            grant = self.build_grant(index, loc, f)
            if grant is not None:
                grants.append(grant)
        restrictions = [self.build_restriction(loc, f) for loc, f in self.raw_restrictions]
        webhooks = merge_webhooks(self.webhooks, self.report)
        if any(p.severity == "error" for p in self.problems):
            return None
        return Policy(
            settings=settings,
            users=self.users,
            robots=self.robots,
            teams=teams,
            namespaces=namespaces,
            grants=tuple(grants),
            restrictions=tuple(restrictions),
            revision=revision,
            files=files,
            webhooks=webhooks,
        )
