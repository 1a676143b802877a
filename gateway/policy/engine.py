"""The decision engine: a compiled policy that answers who may do what, and why.

Rights come from five sources: admin, namespace visibility, personal namespaces, owning
teams and grants. Restrictions then remove actions from everyone they do not list. Grants and
restrictions are filed in a `PatternIndex` by their patterns, and under each pattern by the
principal they name, so a decision meets only the rules whose patterns match the repository,
whatever their wildcards, and reads only the entries of the caller's own principals.

Two ways to decide: `decide` (and `repository_rights`) with the reasons for every action, for
`explain`, policy tests and the UI's explain pages; `granted` (and `may_pull`) with the same
answer and no reasons, for the token endpoint and the catalog's filter.
"""

from __future__ import annotations

import bisect
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from gateway.policy.index import Groups, PatternIndex, group
from gateway.policy.model import (
    ANONYMOUS,
    AUTHENTICATED,
    PULL,
    PUSH,
    REPOSITORY_ACTIONS,
    Grant,
    Location,
    Policy,
    Principal,
    Restriction,
    Role,
    Subject,
    Team,
    Visibility,
    stronger,
)
from gateway.policy.patterns import compile_pattern, is_repository_name, namespace_of

ALL = "*"
CATALOG = ("registry", "catalog")
_EVERY_ACTION = frozenset(REPOSITORY_ACTIONS)
_EVERY_ACTION_AND_ALL = _EVERY_ACTION | {ALL}

# Under one pattern, by principal (as text: "team:qa"): the union of the actions granted to
# it there (for `granted`), and the grants (for reasons).
_Granted = dict[str, tuple[frozenset[str], tuple[Grant, ...]]]
# The teams each principal is listed in, with its strongest role in each.
_Memberships = dict[Principal, dict[str, Role]]
# Under one pattern: each restriction, with its place and `only` as principal texts.
_Restricted = tuple[tuple[int, frozenset[str], Restriction], ...]
# What the index files: grants, and restrictions with their places in the policy.
_Rule = Grant | tuple[int, Restriction]
_Rules = tuple[_Granted, _Restricted]
_NO_GRANTS: _Granted = {}


@dataclass(frozen=True, slots=True)
class Reason:
    """Why an action is allowed or denied: a rule in words and where it is written."""

    effect: str  # "allow" | "deny"
    rule: str
    location: Location | None = None
    # The principal the rule names (a grant's, a namespace's team), so that explain can say
    # how the subject is among them (a team membership, an LDAP group, being signed in).
    via: Principal | None = None

    def __str__(self) -> str:
        where = f" ({self.location.short})" if self.location and self.location.line else ""
        return f"{self.rule}{where}"


NO_RULE = Reason("deny", "no rule grants this")


@dataclass(frozen=True, slots=True)
class ActionDecision:
    action: str
    allowed: bool
    reasons: tuple[Reason, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one resource: the granted subset of the requested actions, with reasons."""

    type: str
    name: str
    requested: tuple[str, ...]
    granted: tuple[str, ...]
    actions: tuple[ActionDecision, ...]
    revision: str

    def access(self) -> dict[str, object]:
        """The token's `access` entry for this resource (actions may be empty)."""
        return {"type": self.type, "name": self.name, "actions": list(self.granted)}


class Engine:
    """A policy compiled for fast decisions. Immutable once built; safe to share."""

    def __init__(self, policy: Policy, previous: Engine | None = None) -> None:
        """Compile `policy`. With `previous` (the engine of the policy before a reload), what
        it compiled for a file whose grants or teams are the very same objects (a cached
        parse) is reused, so a reload after a one-file edit compiles about that file."""
        self._compile(policy, previous)

    # At most this many subjects in the memo of `_facts`, which is emptied when full.
    SUBJECT_MEMO_SIZE = 10_000

    def _compile(self, policy: Policy, previous: Engine | None) -> None:
        self.policy = policy
        self.revision = policy.revision
        before = previous._grant_parts if previous is not None else {}
        self._grant_parts: dict[tuple[str, int], tuple[tuple[Grant, ...], Groups[_Rule]]] = {}
        for key, run in _runs(policy.grants):
            reused = before.get(key)
            if reused is not None and _same(reused[0], run):
                groups = reused[1]
            else:
                groups = group((grant.repositories, grant) for grant in run)
            self._grant_parts[key] = (run, groups)
        # Grants and restrictions in one index: one walk per decision finds both.
        restrictions: Groups[_Rule] = group(
            (r.repositories, (i, r)) for i, r in enumerate(policy.restrictions)
        )
        self._rules: PatternIndex[_Rule, _Rules] = PatternIndex(
            [*(groups for _, groups in self._grant_parts.values()), restrictions],
            _rules_value,
            _merge_rules,
        )
        old = previous._team_parts if previous is not None else {}
        self._team_parts: dict[tuple[str, int], tuple[tuple[Team, ...], _Memberships]] = {}
        for key, teams in _runs(tuple(policy.teams.values())):
            kept = old.get(key)
            if kept is not None and _same(kept[0], teams):
                self._team_parts[key] = kept
            else:
                self._team_parts[key] = (teams, _memberships(teams))
        self._memberships = [part for _, part in self._team_parts.values() if part]
        self._groups: dict[str, list[tuple[str, Role]]] = defaultdict(list)
        for team in policy.teams.values():
            for group_dn, role in team.ldap_groups:
                self._groups[group_dn.lower()].append((team.name, role))
        # OIDC group names are compared exactly (a provider's names and ids are case-sensitive).
        self._oidc_groups: dict[str, list[tuple[str, Role]]] = defaultdict(list)
        for team in policy.teams.values():
            for name, role in team.oidc_groups:
                self._oidc_groups[name].append((team.name, role))
        # For `granted`: Subject -> (is admin, teams, principals as text). Only plain dict
        # get/set/clear touch it, each atomic under the GIL, so concurrent callers at worst
        # derive the same facts twice. The engine never changes (a new policy builds a new
        # engine), so nothing in the memo goes stale.
        self._subject_facts: dict[Subject, tuple[bool, dict[str, Role], frozenset[str]]] = {}

    # -- who is asking -------------------------------------------------------------------

    def known(self, subject: Subject) -> bool:
        """Whether the subject is signed in: a user or robot of this policy, or a directory user.

        A directory user the policy does not list gets what any signed-in user gets (protected
        pulls, `authenticated` grants) and the teams its directory groups map to; no personal
        namespace, no admin rights and no team membership by name, since rules can only name
        users the policy defines.
        """
        if subject.kind == "user":
            return subject.name in self.policy.users or (subject.directory and bool(subject.name))
        if subject.kind == "robot":
            return subject.name in self.policy.robots
        if subject.kind == "workload":
            return subject.name in self.policy.workloads
        return False

    def confined(self, subject: Subject, repository: str) -> str | None:
        """For a workload with `only:` that does not reach `repository`: the patterns it is
        confined to, as text; None when nothing confines the subject there."""
        if subject.kind != "workload":
            return None
        workload = self.policy.workloads.get(subject.name)
        if workload is None or workload.only is None:
            return None
        if any(compile_pattern(p).matches(repository) for p in workload.only):
            return None
        return ", ".join(workload.only)

    def teams_of(self, subject: Subject) -> dict[str, Role]:
        """The subject's teams and roles: listed memberships plus mapped directory groups."""
        if not self.known(subject):
            return {}
        teams: dict[str, Role] = {}
        principal = subject.principal
        for part in self._memberships:
            held = part.get(principal)
            if held is not None:
                teams.update(held)  # a team is in one file: no two parts name the same team
        for dn in subject.groups:
            for team, role in self._groups.get(dn.lower(), ()):
                teams[team] = stronger(teams.get(team), role)
        for name in subject.oidc_groups:
            for team, role in self._oidc_groups.get(name, ()):
                teams[team] = stronger(teams.get(team), role)
        return teams

    def principals(
        self, subject: Subject, teams: Mapping[str, Role] | None = None
    ) -> set[Principal]:
        """Every principal a rule may name to reach this subject."""
        if not self.known(subject):
            return {ANONYMOUS}
        teams = self.teams_of(subject) if teams is None else teams
        found = {ANONYMOUS, AUTHENTICATED, subject.principal}
        found.update(Principal("team", name) for name in teams)
        return found

    def is_admin(self, subject: Subject) -> bool:
        user = self.policy.users.get(subject.name) if subject.kind == "user" else None
        return bool(user and user.admin)

    # -- decisions -----------------------------------------------------------------------

    def decide(self, subject: Subject, type_: str, name: str, actions: Iterable[str]) -> Decision:
        """The granted subset of `actions` on one resource, with the reasons for each."""
        requested = tuple(dict.fromkeys(actions))
        if type_ == "repository" and is_repository_name(name):
            rights = self.repository_rights(subject, name)
        elif (type_, name) == CATALOG:
            rights = self._catalog_rights(subject)
        else:
            rights = {}
            unknown = Reason("deny", f"no rights exist on resource type {type_!r} name {name!r}")
            decisions = tuple(ActionDecision(a, False, (unknown,)) for a in requested)
            return Decision(type_, name, requested, (), decisions, self.revision)
        decisions = tuple(self._one(action, rights, type_) for action in requested)
        granted = tuple(d.action for d in decisions if d.allowed)
        return Decision(type_, name, requested, granted, decisions, self.revision)

    def _one(
        self, action: str, rights: dict[str, tuple[bool, tuple[Reason, ...]]], type_: str
    ) -> ActionDecision:
        if action in rights:
            allowed, reasons = rights[action]
            return ActionDecision(action, allowed, reasons)
        if action == ALL and type_ == "repository":
            parts = [rights[a] for a in REPOSITORY_ACTIONS]
            allowed = all(ok for ok, _ in parts)
            reasons = tuple(dict.fromkeys(r for ok, rs in parts for r in rs if ok == allowed))
            return ActionDecision(action, allowed, reasons)
        return ActionDecision(action, False, (Reason("deny", f"{action!r} is not an action"),))

    def _catalog_rights(self, subject: Subject) -> dict[str, tuple[bool, tuple[Reason, ...]]]:
        if self.is_admin(subject):
            user = self.policy.users[subject.name]
            return {
                ALL: (True, (Reason("allow", f"user {subject.name} is an admin", user.location),))
            }
        return {ALL: (False, (Reason("deny", "only admins may list the registry's catalog"),))}

    def repository_rights(
        self, subject: Subject, repository: str
    ) -> dict[str, tuple[bool, tuple[Reason, ...]]]:
        """For pull, push and delete on a repository: allowed or not, and why.

        Keep in sync with `_allowed_repository_actions`, which computes the same rights
        without reasons for `granted`; a property test checks that the two agree.
        """
        policy = self.policy
        teams = self.teams_of(subject)
        principals = self.principals(subject, teams)
        allows: dict[str, list[Reason]] = {action: [] for action in REPOSITORY_ACTIONS}

        def allow(actions: Iterable[str], reason: Reason) -> None:
            for action in actions:
                allows[action].append(reason)

        if self.is_admin(subject):
            user = policy.users[subject.name]
            allow(
                REPOSITORY_ACTIONS,
                Reason("allow", f"user {subject.name} is an admin", user.location),
            )

        ns_name = namespace_of(repository)
        namespace = policy.namespaces.get(ns_name)
        if not ns_name:
            visibility = policy.settings.global_namespace
            where = policy.settings.location
            self._visibility(
                principals, visibility, "the global namespace (names without a slash)", where, allow
            )
        elif namespace is not None:
            what = f"namespace {ns_name}"
            self._visibility(principals, namespace.visibility, what, namespace.location, allow)
            if namespace.personal and subject.kind == "user" and subject.name == ns_name:
                allow(
                    Role.OWNER.actions,
                    Reason("allow", f"personal namespace of user {ns_name}", namespace.location),
                )
            for team in namespace.teams:
                role = teams.get(team)
                if role is not None:
                    rule = (
                        f"{subject} is {role.value} in team {team}, which owns namespace {ns_name}"
                    )
                    via = Principal("team", team)
                    allow(role.actions, Reason("allow", rule, namespace.location, via))

        by_key = {str(p): p for p in principals}
        grants: dict[tuple[int, str], Grant] = {}
        matched = self._rules.matching(repository)
        for granted, _ in matched:
            for key in by_key:
                entry = granted.get(key)
                if entry is not None:
                    for grant in entry[1]:
                        grants[id(grant), key] = grant
        for (_, key), grant in sorted(grants.items(), key=_written_order):
            principal = by_key[key]
            rule = _describe_grant(grant, principal)
            allow(grant.actions, Reason("allow", rule, grant.location, principal))

        denies: dict[str, list[Reason]] = {action: [] for action in REPOSITORY_ACTIONS}
        restrictions = {
            place: restriction
            for _, restricted in matched
            for place, only, restriction in restricted
            if by_key.keys().isdisjoint(only)
        }
        for _, restriction in sorted(restrictions.items(), key=lambda item: item[0]):
            only = ", ".join(str(p) for p in restriction.only) or "nobody"
            rule = f"restricted to {only} on {', '.join(restriction.repositories)}"
            for action in restriction.actions:
                denies[action].append(Reason("deny", rule, restriction.location))

        confined = self.confined(subject, repository)
        if confined is not None:
            workload = policy.workloads[subject.name]
            rule = f"workload {subject.name} is confined to {confined} (only:)"
            for action in REPOSITORY_ACTIONS:
                denies[action].insert(0, Reason("deny", rule, workload.location))

        rights: dict[str, tuple[bool, tuple[Reason, ...]]] = {}
        for action in REPOSITORY_ACTIONS:
            if denies[action]:
                rights[action] = (False, tuple(denies[action]))
            elif allows[action]:
                rights[action] = (True, tuple(allows[action]))
            else:
                rights[action] = (False, (NO_RULE,))
        return rights

    @staticmethod
    def _visibility(
        principals: set[Principal],
        visibility: Visibility,
        what: str,
        where: Location,
        allow: Callable[[Iterable[str], Reason], None],
    ) -> None:
        if visibility is Visibility.PUBLIC:
            allow((PULL,), Reason("allow", f"{what} is public: anyone may pull", where))
        elif visibility is Visibility.PROTECTED and AUTHENTICATED in principals:
            allow(
                (PULL,),
                Reason(
                    "allow", f"{what} is protected: any signed-in user or robot may pull", where
                ),
            )

    def may_pull(self, subject: Subject, repository: str) -> bool:
        """Whether `subject` may pull `repository` (for the catalog's filter): no reasons."""
        return is_repository_name(repository) and PULL in self._allowed_repository_actions(
            subject, repository
        )

    # -- the token endpoint's fast path --------------------------------------------------

    def granted(
        self, subject: Subject, type_: str, name: str, actions: Iterable[str]
    ) -> tuple[str, ...]:
        """`decide(subject, type_, name, actions).granted` without building any reasons.

        Same order, deduplication and meaning of `*`, `registry:catalog:*`, unknown resource
        types, invalid repository names and unknown actions as `decide`.
        """
        requested = dict.fromkeys(actions)
        if type_ == "repository" and is_repository_name(name):
            allowed = self._allowed_repository_actions(subject, name)
            if allowed == _EVERY_ACTION:
                allowed = _EVERY_ACTION_AND_ALL  # `*` means all three repository actions
            return tuple([action for action in requested if action in allowed])
        if type_ == CATALOG[0] and name == CATALOG[1] and ALL in requested:
            return (ALL,) if self._facts(subject)[0] else ()
        return ()

    def _facts(self, subject: Subject) -> tuple[bool, dict[str, Role], frozenset[str]]:
        """What `granted` needs of a subject whatever the repository, memoised per subject:
        whether an admin, its teams, and its principals as text (the index's keys)."""
        facts = self._subject_facts.get(subject)
        if facts is None:
            teams = self.teams_of(subject)
            keys = frozenset(str(p) for p in self.principals(subject, teams))
            facts = (self.is_admin(subject), teams, keys)
            memo = self._subject_facts
            if len(memo) >= self.SUBJECT_MEMO_SIZE:
                memo.clear()
            memo[subject] = facts
        return facts

    def _allowed_repository_actions(self, subject: Subject, repository: str) -> frozenset[str]:
        """The repository actions (pull, push, delete) `subject` may perform, without reasons.

        Mirrors `repository_rights` rule for rule -- admin, global namespace visibility,
        namespace visibility, personal namespace, team roles on namespaces, grants, then
        restrictions that list none of the subject's principals -- and must be kept in sync
        with it; a property test checks that the two agree.
        """
        if subject.kind == "workload" and self.confined(subject, repository) is not None:
            return frozenset()
        admin, teams, keys = self._facts(subject)
        allowed = set(_EVERY_ACTION) if admin else set()
        policy = self.policy
        ns_name = namespace_of(repository)
        if not ns_name:
            if _may_see(keys, policy.settings.global_namespace):
                allowed.add(PULL)
        else:
            namespace = policy.namespaces.get(ns_name)
            if namespace is not None:
                if _may_see(keys, namespace.visibility):
                    allowed.add(PULL)
                if namespace.personal and subject.kind == "user" and subject.name == ns_name:
                    allowed |= Role.OWNER.actions
                for team in namespace.teams:
                    role = teams.get(team)
                    if role is not None:
                        allowed |= role.actions
        matched = self._rules.matching(repository)
        if len(allowed) < len(_EVERY_ACTION):
            for granted, _ in matched:
                for key in granted.keys() & keys:  # in C, over the smaller of the two
                    allowed |= granted[key][0]
        for _, restricted in matched:
            for _, only, restriction in restricted:
                if keys.isdisjoint(only):
                    allowed -= restriction.actions
        return frozenset(allowed)


_AUTHENTICATED = str(AUTHENTICATED)


def _may_see(keys: frozenset[str], visibility: Visibility) -> bool:
    """Whether a namespace's visibility lets these principals pull (as `Engine._visibility`)."""
    return visibility is Visibility.PUBLIC or (
        visibility is Visibility.PROTECTED and _AUTHENTICATED in keys
    )


_Run = TypeVar("_Run", Grant, Team)


def _runs(rules: tuple[_Run, ...]) -> list[tuple[tuple[str, int], tuple[_Run, ...]]]:
    """The rules in runs written in one file, each keyed by its file and its place among the
    runs. A loaded policy lists its rules file by file, in the order of the file names, so
    each run's end is found by bisection; in any other order runs may mix files, which costs
    only reuse (an index of a run is right whatever the run holds)."""
    runs: list[tuple[tuple[str, int], tuple[_Run, ...]]] = []
    start = 0
    while start < len(rules):
        file = rules[start].location.file
        end = bisect.bisect_right(rules, file, lo=start, key=_file_of)
        runs.append(((file, len(runs)), rules[start:end]))
        start = end
    return runs


def _file_of(rule: Grant | Team) -> str:
    return rule.location.file


def _same(one: tuple[object, ...], other: tuple[object, ...]) -> bool:
    """Whether two tuples hold the very same objects (not merely equal ones)."""
    return len(one) == len(other) and all(map(operator.is_, one, other))


def _memberships(teams: tuple[Team, ...]) -> _Memberships:
    found: _Memberships = {}
    for team in teams:
        for member, role in team.members:
            held = found.get(member)
            if held is None:
                held = found[member] = {}
            held[team.name] = stronger(held.get(team.name), role)
    return found


def _granted_value(grants: list[Grant]) -> _Granted:
    """What the grant index holds under one pattern (see `_Granted`)."""
    actions: dict[str, set[str]] = {}
    found: dict[str, dict[int, Grant]] = {}
    for grant in grants:
        for principal in grant.to:
            key = str(principal)
            actions.setdefault(key, set()).update(grant.actions)
            found.setdefault(key, {})[id(grant)] = grant
    return {key: (frozenset(actions[key]), tuple(found[key].values())) for key in actions}


def _rules_value(items: list[_Rule]) -> _Rules:
    """What the index holds under one pattern: its grants and its restrictions."""
    grants = [item for item in items if isinstance(item, Grant)]
    restrictions = [item for item in items if not isinstance(item, Grant)]
    return (
        _granted_value(grants) if grants else _NO_GRANTS,
        _restricted_value(restrictions) if restrictions else (),
    )


def _merge_rules(values: list[_Rules]) -> _Rules:
    """The rules of several patterns as if under one."""
    grants = [granted for granted, _ in values if granted]
    restrictions = [restricted for _, restricted in values if restricted]
    return (
        _merge_granted(grants) if len(grants) > 1 else grants[0] if grants else _NO_GRANTS,
        _merge_restricted(restrictions) if restrictions else (),
    )


def _merge_granted(values: list[_Granted]) -> _Granted:
    """The grants of several patterns as if under one (each grant once)."""
    actions: dict[str, set[str]] = {}
    found: dict[str, dict[int, Grant]] = {}
    for value in values:
        for key, (granted, grants) in value.items():
            actions.setdefault(key, set()).update(granted)
            found.setdefault(key, {}).update((id(g), g) for g in grants)
    return {key: (frozenset(actions[key]), tuple(found[key].values())) for key in actions}


def _merge_restricted(values: list[_Restricted]) -> _Restricted:
    """The restrictions of several patterns as if under one (each restriction once)."""
    unique = {entry[0]: entry for value in values for entry in value}
    return tuple(unique[place] for place in sorted(unique))


def _written_order(item: tuple[tuple[int, str], Grant]) -> tuple[str, int, int, str]:
    """Reasons for grants in the order they are written: file, line, column, principal."""
    (_, key), grant = item
    where = grant.location
    return (where.file, where.line, where.column, key)


def _restricted_value(items: list[tuple[int, Restriction]]) -> _Restricted:
    """What the restriction index holds under one pattern (see `_Restricted`)."""
    unique = dict(items)
    return tuple(
        (place, frozenset(str(p) for p in r.only), r) for place, r in sorted(unique.items())
    )


def _describe_grant(grant: Grant, principal: Principal) -> str:
    what = (
        f"role {grant.role.value}"
        if grant.role
        else ", ".join(a for a in REPOSITORY_ACTIONS if a in grant.actions)
    )
    return f"grant of {what} to {principal} on {', '.join(grant.repositories)}"


__all__ = ["ALL", "PUSH", "ActionDecision", "Decision", "Engine", "Reason"]
