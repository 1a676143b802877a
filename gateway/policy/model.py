"""The policy's vocabulary: frozen records built by `load` and read by `engine`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

PULL, PUSH, DELETE = "pull", "push", "delete"
REPOSITORY_ACTIONS: tuple[str, ...] = (PULL, PUSH, DELETE)


class Role(StrEnum):
    """A team member's role; each implies a fixed set of actions."""

    VIEWER = "viewer"
    CONTRIBUTOR = "contributor"
    OWNER = "owner"

    @property
    def actions(self) -> frozenset[str]:
        return ROLE_ACTIONS[self]


ROLE_ACTIONS: dict[Role, frozenset[str]] = {
    Role.VIEWER: frozenset({PULL}),
    Role.CONTRIBUTOR: frozenset({PULL, PUSH}),
    Role.OWNER: frozenset({PULL, PUSH, DELETE}),
}


class Visibility(StrEnum):
    """Who may pull from a namespace without a grant."""

    PUBLIC = "public"  # anyone, anonymous included
    PROTECTED = "protected"  # any signed-in user or robot
    PRIVATE = "private"  # only those granted


class Location(NamedTuple):
    """Where a definition lives: 1-based line and column, as editors count. A named tuple,
    not a frozen dataclass: a large policy makes one per definition, and a tuple is made in a
    third of the time."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    @property
    def short(self) -> str:
        return f"{self.file}:{self.line}"


NOWHERE = Location("<builtin>", 0, 0)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a rule names: `user:NAME`, `robot:NAME`, `team:NAME`, `workload:NAME`,
    `authenticated`, `anonymous`."""

    kind: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind


AUTHENTICATED = Principal("authenticated")
ANONYMOUS = Principal("anonymous")


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is asking: a user, a robot, a CI workload (an OIDC ID token), or nobody.

    `directory` marks a user whom a directory backend (htpasswd, LDAP, an OIDC provider)
    signed in: such a user is signed in even when the policy does not list the name (see
    `Engine.known`).
    """

    kind: str  # "user" | "robot" | "workload" | "anonymous"
    name: str = ""
    groups: frozenset[str] = frozenset()  # directory (LDAP) groups, mapped to teams by the engine
    directory: bool = False
    oidc_groups: frozenset[str] = frozenset()  # an OIDC provider's groups (teams' oidc_groups)

    def __str__(self) -> str:
        return "anonymous" if self.kind == "anonymous" else f"{self.kind}:{self.name}"

    @property
    def principal(self) -> Principal:
        return ANONYMOUS if self.kind == "anonymous" else Principal(self.kind, self.name)

    @classmethod
    def parse(cls, text: str) -> Subject:
        """Read `user:NAME`, `robot:NAME`, `workload:NAME` or `anonymous`; ValueError otherwise."""
        if text == "anonymous":
            return ANONYMOUS_SUBJECT
        kind, sep, name = text.partition(":")
        if not sep or kind not in ("user", "robot", "workload") or not name:
            raise ValueError(
                f"subject {text!r}: expected user:NAME, robot:NAME, workload:NAME or anonymous"
            )
        return cls(kind, name)


ANONYMOUS_SUBJECT = Subject("anonymous")


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A personal access token of a user (hashed), possibly narrower than the user."""

    name: str
    token_sha256: str
    expires: dt.date | None
    actions: frozenset[str] | None  # None: whatever the user may do
    location: Location

    def expired(self, today: dt.date) -> bool:
        return self.expires is not None and today > self.expires


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password: str | None  # bcrypt or argon2id hash, never plaintext
    admin: bool
    location: Location
    tokens: tuple[AccessToken, ...] = ()
    full_name: str = ""
    email: str = ""


@dataclass(frozen=True, slots=True)
class Robot:
    name: str
    token_sha256: str
    expires: dt.date | None
    description: str
    location: Location

    def expired(self, today: dt.date) -> bool:
        return self.expires is not None and today > self.expires


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    members: tuple[tuple[Principal, Role], ...]  # user or robot principals
    location: Location
    ldap_groups: tuple[tuple[str, Role], ...] = ()
    description: str = ""
    oidc_groups: tuple[tuple[str, Role], ...] = ()  # an OIDC provider's group names, exact

    def role_of(self, principal: Principal) -> Role | None:
        """The highest role this principal holds in the team, if any."""
        best: Role | None = None
        for member, role in self.members:
            if member == principal and (best is None or _RANK[role] > _RANK[best]):
                best = role
        return best


_RANK = {Role.VIEWER: 0, Role.CONTRIBUTOR: 1, Role.OWNER: 2}


def stronger(a: Role | None, b: Role) -> Role:
    """The stronger of two roles."""
    return b if a is None or _RANK[b] > _RANK[a] else a


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    teams: tuple[str, ...]
    visibility: Visibility
    description: str
    location: Location
    personal: bool = False  # a user's own namespace, made by the engine


@dataclass(frozen=True, slots=True)
class Grant:
    to: tuple[Principal, ...]
    repositories: tuple[str, ...]
    actions: frozenset[str]
    role: Role | None
    location: Location


@dataclass(frozen=True, slots=True)
class Restriction:
    repositories: tuple[str, ...]
    actions: frozenset[str]
    only: tuple[Principal, ...]
    location: Location


@dataclass(frozen=True, slots=True)
class Settings:
    personal_namespaces: bool = True
    global_namespace: Visibility = Visibility.PROTECTED
    location: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook subscription: which events (on which repositories) are sent where, signed
    with a secret read from the environment or a file, never written in the policy.
    `gateway/policy/webhooks.py` reads and checks it; docs/events.md describes it."""

    name: str
    url: str
    events: frozenset[str]  # event types without the prefix, e.g. "image.pushed"
    repositories: tuple[str, ...]  # patterns; () for every repository and the global events
    secret_env: str  # the environment variable holding the secret, or ""
    secret_file: str  # the file holding the secret, or ""
    format: str  # "cloudevents" | "harbor"
    location: Location
    description: str = ""


@dataclass(frozen=True, slots=True)
class ClaimCondition:
    """One condition of a workload on an ID token's claim: the claim's value (as text) must
    equal one of `values`, where a value with `*` is a glob (`*`: any characters)."""

    claim: str
    values: tuple[str, ...]
    location: Location


@dataclass(frozen=True, slots=True)
class Workload:
    """A CI job identity: the ID tokens of `issuer` (a key of the gateway's trusted CI issuers)
    for `audience` whose claims meet every condition sign in as `workload:NAME`.
    `gateway/policy/workloads.py` reads, checks and matches it; docs/oidc.md describes it."""

    name: str
    issuer: str
    audience: str
    claims: tuple[ClaimCondition, ...]
    expires: dt.date | None
    only: tuple[str, ...] | None  # repository patterns it is confined to (None: no cap)
    location: Location
    description: str = ""

    def expired(self, today: dt.date) -> bool:
        return self.expires is not None and today > self.expires


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole, validated policy. `revision` names the source it was read from."""

    settings: Settings
    users: dict[str, User]
    robots: dict[str, Robot]
    teams: dict[str, Team]
    namespaces: dict[str, Namespace]
    grants: tuple[Grant, ...]
    restrictions: tuple[Restriction, ...]
    revision: str = "unknown"
    files: tuple[str, ...] = field(default=())
    webhooks: tuple[Webhook, ...] = ()
    workloads: dict[str, Workload] = field(default_factory=dict)
