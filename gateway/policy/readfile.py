"""One policy file read on its own (`FileReader` -> `ParsedFile`): its syntax, fields, values
and patterns checked, and every name it refers to noted for the assembly to check against all
the files."""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Iterator
from enum import Enum
from typing import Any, TypeVar

from gateway.policy import yamlnodes as yn
from gateway.policy.hashformats import ARGON2ID, BCRYPT
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
from gateway.policy.problems import Problem
from gateway.policy.webhooks import read_webhooks
from gateway.policy.workloads import read_workloads

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
_ROLE_KEYS = {"owners": Role.OWNER, "contributors": Role.CONTRIBUTOR, "viewers": Role.VIEWER}
_E = TypeVar("_E", bound=Enum)

# A reference to a user, robot or team as written, checked once every file is read: the
# position in its list, the text, the kind it names ("" for a bare name) and the name, and
# where it is written (a YAML mark: a Location is made only for a problem).
Ref = tuple[int, str, str, str, Any]


class ParsedFile:
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
        self.member_refs: dict[str, tuple[Ref, ...]] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.namespace_refs: dict[str, tuple[tuple[str, Any], ...]] = {}
        self.grants: list[Grant] = []
        self.grant_refs: list[tuple[Ref, ...]] = []
        self.restrictions: list[Restriction] = []
        self.restriction_refs: list[tuple[Ref, ...]] = []
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


class FileReader:
    """Reads one policy file into a `ParsedFile`; knows nothing of the other files."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.out = ParsedFile(file)
        self.problems = self.out.problems
        self._principals: dict[tuple[str, str], Principal] = {}

    def read(self, text: str) -> ParsedFile:
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
        if type(node) is yn.MappingNode:
            # Most mappings: known keys, each once, as plain scalars. Anything else is read
            # again below, which reports it.
            for key_node, value in node.value:
                key = key_node.value
                if type(key_node) is not yn.ScalarNode or key not in allowed or key in out:
                    out.clear()
                    break
                out[key] = (key_node, value)
            else:
                return out
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
        if type(node) is yn.ScalarNode:
            text: str = node.value
            if text and (node.style or text[0] not in yn.SPECIAL_START):  # surely a string
                return text
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
        out: list[tuple[yn.Node, str]] = []
        for item in items:
            if type(item) is yn.ScalarNode:
                value: str = item.value
                if value and (item.style or value[0] not in yn.SPECIAL_START):  # as `string`
                    out.append((item, value))
                    continue
            text = self.string(item, f"each entry of {what}")
            if text is not None:
                out.append((item, text))
        return out

    def choice(self, node: yn.Node, what: str, enum: type[_E]) -> _E | None:
        value = yn.scalar(node) if isinstance(node, yn.ScalarNode) else None
        # What `enum(value)` looks up first, without its exception for the wrong ones (a
        # scalar is hashable: a string, number, boolean, date or None).
        member: _E | None = enum._value2member_map_.get(value)  # type: ignore[assignment]
        if member is None:
            names = ", ".join(each.value for each in enum)
            self.error(self.at(node), f"{what} must be one of {names}, not {value!r}")
        return member

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
            if not BCRYPT.fullmatch(value):
                self.error(self.at(node), f"user {user!r}: malformed bcrypt hash")
                return None
        elif value.startswith("$argon2"):
            if not ARGON2ID.fullmatch(value):
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
        refs: list[Ref] = []
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
    ) -> tuple[list[Principal], tuple[Ref, ...]]:
        """Rule subjects: user:, robot:, team:, authenticated, anonymous, or a bare name (taken
        for a user until the assembly knows better); with the references to check."""
        found: list[Principal] = []
        refs: list[Ref] = []
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
        refs: tuple[Ref, ...] = ()
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
        refs: tuple[Ref, ...] = ()
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
