"""All policy files put together (`Assembly`): first definitions win, later ones are
errors, references are checked against every file, and bare names that are robots' are
corrected; the last good assembly (`Assembled`) lets the next redo only what a change affects."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from gateway.policy.model import (
    Grant,
    Location,
    Namespace,
    Policy,
    Principal,
    Restriction,
    Robot,
    Settings,
    Team,
    User,
)
from gateway.policy.problems import Problem
from gateway.policy.readfile import ParsedFile, Ref
from gateway.policy.webhooks import merge_webhooks
from gateway.policy.workloads import merge_workloads


@dataclass(slots=True)
class _Outcome:
    """What one file gave the last good assembly: its rules with their subjects checked (and
    corrected where a bare name is a robot's), and its teams so corrected."""

    grants: tuple[Grant, ...]
    restrictions: tuple[Restriction, ...]
    teams: dict[str, Team]


@dataclass(slots=True)
class Assembled:
    """The last good assembly, for the next one to start from: its files, what they defined
    (merged), and each file's outcome."""

    files: dict[tuple[str, bytes], ParsedFile]
    settings: Settings
    users: dict[str, User]
    robots: dict[str, Robot]
    teams: dict[str, Team]
    namespaces: dict[str, Namespace]
    outcomes: dict[tuple[str, bytes], _Outcome]


class Assembly:
    """Puts parsed files together: first definitions win, later ones are errors; references
    are checked against every file; bare names that turn out to be robots are corrected.

    Given the last good assembly (`before`), only what the change can affect is done again:
    a file that was there before keeps its outcome unless a name it refers to came or went,
    and when no definition changed, the merged definitions are kept as they were."""

    def __init__(self, today: dt.date) -> None:
        self.today = today
        self.problems: list[Problem] = []
        self.made: Assembled | None = None

    def error(self, location: Location, message: str) -> None:
        self.problems.append(Problem(location, "error", message))

    def report(self, location: Location, severity: str, message: str) -> None:
        self.problems.append(Problem(location, severity, message))

    def build(
        self,
        files: list[ParsedFile],
        revision: str,
        names: tuple[str, ...],
        before: Assembled | None = None,
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
        self.made = Assembled(
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
        self, files: list[ParsedFile]
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
        f: ParsedFile,
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
        f: ParsedFile,
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
        f: ParsedFile,
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
        self, f: ParsedFile, team: Team, users: Mapping[str, User], robots: Mapping[str, Robot]
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
        f: ParsedFile,
        principals: tuple[Principal, ...],
        refs: tuple[Ref, ...],
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


def _corrected(f: ParsedFile, key: object, what: object, make: Callable[[], _T]) -> _T:
    """`make()`, or the object made for the same correction of the same thing last time."""
    found = f.corrected.get(key)
    if found is not None and found[0] == what:
        made: _T = found[1]
        return made
    made = make()
    f.corrected[key] = (what, made)
    return made


def _rule(
    f: ParsedFile, key: tuple[str, int], rule: _R, principals: tuple[Principal, ...] | None
) -> _R:
    """A grant or restriction with its subjects corrected (`principals`), or as it was."""
    if principals is None:
        return rule
    if isinstance(rule, Grant):
        return _corrected(f, key, principals, lambda: replace(rule, to=principals))
    return _corrected(f, key, principals, lambda: replace(rule, only=principals))


def _defines(f: ParsedFile) -> bool:
    """Whether a file defines anything another file may depend on (or settings)."""
    return bool(f.users or f.robots or f.teams or f.namespaces or f.settings is not None)


def _touched(changed: list[ParsedFile], gone: list[ParsedFile]) -> tuple[set[str], set[str]]:
    """The names of users and robots, and of teams, that came or went with a change: defined
    by the files that went and not by those that came, or the other way round."""
    went = [f for f in changed if f in gone]
    came = [f for f in changed if f not in gone]

    def names(files: list[ParsedFile], kind: str) -> set[str]:
        return {name for f in files for name in getattr(f, kind)}

    people = set()
    for kind in ("users", "robots"):
        people |= names(went, kind) ^ names(came, kind)
    return people, names(went, "teams") ^ names(came, "teams")


def _affected(f: ParsedFile, people: set[str], teams: set[str]) -> bool:
    """Whether a change of these names may change what `f`'s references resolve to."""
    return not (
        people.isdisjoint(f.bare)
        and people.isdisjoint(f.user_refs)
        and people.isdisjoint(f.robot_refs)
        and teams.isdisjoint(f.team_refs)
    )


def _at(f: ParsedFile, mark: Any) -> Location:
    return Location(f.name, mark.line + 1, mark.column + 1)
