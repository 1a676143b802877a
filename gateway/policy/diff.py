"""The permission diff: who gains or loses which actions where, between two policies.

Effective access, not text. Both policies are compiled into engines and asked the same
questions: what may each subject (every user and robot of either policy, `anonymous`, a
signed-in user with no rights of its own, and a member of each team in each role) do on a
set of probe repositories. The answers that differ are grouped back to the namespaces and
patterns that explain them, as the plain records below; `gateway.policy.diffrender` turns
them into Markdown, JSON and sentences (docs/gitops.md describes the output).

Probes: the repositories asked about, and what a decision on one depends on, are in
`gateway.policy.probes`.

Reporting: each change is reported once, by the most general subject that has it: a change
anonymous callers get is not repeated for signed-in users, nor one that every signed-in user
gets for each user, nor one a team's members get for a member whose role did not change.

Work: see `_Differ`. Each subject is asked only about probes whose rules changed and that
name it or its teams, and answers are shared between subjects alike to a probe's rules.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from gateway.policy.engine import Engine
from gateway.policy.model import (
    ANONYMOUS_SUBJECT,
    REPOSITORY_ACTIONS,
    Policy,
    Role,
    Subject,
    Visibility,
    Webhook,
    Workload,
    stronger,
)
from gateway.policy.probes import (
    OTHER,
    ROLES,
    SIGNED_IN,
    _augment,
    _Facts,
    _group,
    _namespace_context,
    _Probes,
    _rules_by_pattern,
    _signed_in,
    _Who,
)

__all__ = [
    "OTHER",
    "ROLES",
    "SIGNED_IN",
    "Change",
    "Notice",
    "PolicyDiff",
    "SubjectChange",
    "TeamChange",
    "diff_policies",
]

T = TypeVar("T")
_NONE: frozenset[str] = frozenset()
_MAX_EXCEPTIONS = 3
_SLACK = 64  # how many more probes than changed ones a group may have and still be tried


@dataclass(frozen=True, slots=True)
class Change:
    """Actions gained and lost on the repositories a pattern names, minus `exceptions`."""

    repositories: str
    gained: tuple[str, ...]
    lost: tuple[str, ...]
    exceptions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SubjectChange:
    """One subject's change. `subject` is `user:NAME`, `robot:NAME`, `anonymous` or
    `authenticated` (any signed-in user). For an added or removed user or robot, `access` is
    what it has beyond any signed-in user (gained when added, lost when removed)."""

    subject: str
    status: str  # "added" | "removed" | "changed"
    access: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class TeamChange:
    """A team's membership, directory groups, namespaces and its members' access."""

    team: str
    status: str  # "added" | "removed" | "changed"
    joined: tuple[tuple[str, str], ...] = ()  # (member, role)
    left: tuple[tuple[str, str], ...] = ()
    roles_changed: tuple[tuple[str, str, str], ...] = ()  # (member, before, after)
    ldap_joined: tuple[tuple[str, str], ...] = ()  # (group DN, role)
    ldap_left: tuple[tuple[str, str], ...] = ()
    ldap_roles_changed: tuple[tuple[str, str, str], ...] = ()
    owns_added: tuple[str, ...] = ()
    owns_removed: tuple[str, ...] = ()
    # (roles, change): what a member with only this team's role gets; roles is ("members",)
    # when the change is the same for every role someone in the team holds
    access: tuple[tuple[tuple[str, ...], Change], ...] = ()


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a reviewer must see first.

    kind: admin, user, robot, workload, webhook, visibility, anonymous-pull, restriction or
    settings.
    change: added, removed or changed (anonymous-pull: gained or lost).
    """

    kind: str
    name: str  # a subject, namespace, setting, or the patterns of a rule
    change: str
    before: str | None = None
    after: str | None = None
    exceptions: tuple[str, ...] = ()  # anonymous-pull: repositories the change leaves out


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    old_revision: str
    new_revision: str
    attention: tuple[Notice, ...]
    subjects: tuple[SubjectChange, ...]
    teams: tuple[TeamChange, ...]

    @property
    def access_changed(self) -> bool:
        """Whether anyone's effective access differs."""
        return any(s.access for s in self.subjects) or any(t.access for t in self.teams)

    @property
    def changed(self) -> bool:
        """Whether the diff reports anything at all."""
        return bool(self.attention or self.subjects or self.teams)


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    """What changes in effective access from `old` to `new`."""
    return _Differ(old, new).diff()


# -- evaluating subjects -----------------------------------------------------------------


_Delta = tuple[frozenset[str], frozenset[str]]  # gained, lost


class _Differ:
    """Asks both engines about subjects and probes, as few times as the answers need.

    A decision on a probe depends only on the probe's namespace and matching rules, and on
    the subject's admin flag, personal namespace, roles in the owning teams and which of the
    rules' principals it has. Answers are shared between subjects alike in those, and a
    probe whose namespace and rules are the same in both policies is asked about only for
    subjects whose admin flag or team roles changed. `exhaustive` asks everything (tests).
    """

    def __init__(self, old: Policy, new: Policy, *, exhaustive: bool = False) -> None:
        self.policies = (old, new)
        self.engines = (Engine(_augment(old)), Engine(_augment(new)))
        self.probes = probes = _Probes(old, new)
        self.exhaustive = exhaustive
        self.index: dict[str, set[int]] = defaultdict(set)  # principal -> probes naming it
        self.changed: set[int] = set()
        self.facts: tuple[list[_Facts], list[_Facts]] = ([], [])
        rules = [_rules_by_pattern(policy) for policy in self.policies]
        for pid, name in enumerate(probes.names):
            contexts = []
            for which, (grants, restrictions) in enumerate(rules):
                ns_key, facts = _namespace_context(self.policies[which], name)
                matched_grants = {g for t in probes.matched[pid] for g in grants.get(t, ())}
                matched_restrictions = {
                    r for t in probes.matched[pid] for r in restrictions.get(t, ())
                }
                named = frozenset().union(
                    *(names for _, names in (*matched_grants, *matched_restrictions))
                )
                facts = dataclasses.replace(facts, named=named)
                self.facts[which].append(facts)
                for principal in (*named, *(f"team:{t}" for t in facts.ns_teams)):
                    if ":" in principal:
                        self.index[principal].add(pid)
                if facts.personal:
                    self.index[f"user:{facts.personal}"].add(pid)
                contexts.append((ns_key, matched_grants, matched_restrictions))
            if contexts[0] != contexts[1] or exhaustive:
                self.changed.add(pid)
        self._rights: dict[tuple[int, int, object], frozenset[str]] = {}
        self.anonymous = self.deltas(self.who(ANONYMOUS_SUBJECT), self.changed)
        self.signed_in = self.who(_signed_in())
        self.baseline = self.deltas(self.signed_in, self.changed)
        self.team_deltas: dict[tuple[str, Role], dict[int, _Delta]] = {}

    def diff(self) -> PolicyDiff:
        old, new = self.policies
        subjects = self.subject_changes()
        anonymous = next((s.access for s in subjects if s.subject == "anonymous"), ())
        return PolicyDiff(
            old.revision,
            new.revision,
            tuple(_attention(old, new, anonymous)),
            tuple(subjects),
            self.team_changes(),
        )

    # rights and deltas

    def who(self, subject: Subject) -> _Who:
        old, new = self.engines
        teams = (old.teams_of(subject), new.teams_of(subject))
        return _Who(
            subject,
            (old.known(subject), new.known(subject)),
            (old.is_admin(subject), new.is_admin(subject)),
            teams,
            (
                frozenset(map(str, old.principals(subject, teams[0]))),
                frozenset(map(str, new.principals(subject, teams[1]))),
            ),
        )

    def signature(self, which: int, who: _Who, pid: int) -> object:
        """All that a decision on this probe under this policy depends on about `who`."""
        facts = self.facts[which][pid]
        subject = who.subject
        return (
            who.known[which],
            who.admin[which],
            subject.kind == "user" and subject.name == facts.personal,
            tuple(who.teams[which].get(team) for team in facts.ns_teams),
            facts.named & who.principals[which],
        )

    def rights(self, which: int, who: _Who, pid: int, signature: object = None) -> frozenset[str]:
        """The actions `who` may take on a probe under one policy."""
        if self.exhaustive:
            signature = who.subject
        elif signature is None:
            signature = self.signature(which, who, pid)
        found = self._rights.get((which, pid, signature))
        if found is None:
            answer = self.engines[which].repository_rights(who.subject, self.probes.names[pid])
            found = frozenset(a for a, (ok, _) in answer.items() if ok)
            self._rights[(which, pid, signature)] = found
        return found

    def deltas(self, who: _Who, pids: Iterable[int]) -> dict[int, _Delta]:
        out = {}
        for pid in pids:
            old, new = self.signature(0, who, pid), self.signature(1, who, pid)
            if old == new and pid not in self.changed:
                continue  # same rules, and the subject stands the same to them
            before, after = self.rights(0, who, pid, old), self.rights(1, who, pid, new)
            if before != after:
                out[pid] = (after - before, before - after)
        return out

    def relevant(self, principals: Iterable[str]) -> set[int]:
        """Probes where subjects with these principals may differ from any signed-in user."""
        if self.exhaustive:
            return set(range(len(self.probes.names)))
        out: set[int] = set()
        for principal in principals:
            out |= self.index.get(principal, set())
        return out

    # subjects

    def subject_changes(self) -> list[SubjectChange]:
        out = []
        anonymous = self.anonymous
        if anonymous:
            out.append(SubjectChange("anonymous", "changed", self.group(anonymous)))
        signed_in = _minus(self.baseline, anonymous.get)
        if signed_in:
            out.append(SubjectChange("authenticated", "changed", self.group(signed_in)))
        old, new = self.policies
        for kind in ("user", "robot", "workload"):
            before: Mapping[str, object] = getattr(old, f"{kind}s")
            after: Mapping[str, object] = getattr(new, f"{kind}s")
            for name in sorted(set(before) | set(after)):
                change = self.subject_change(Subject(kind, name), name in before, name in after)
                if change is not None:
                    out.append(change)
        return out

    def subject_change(self, subject: Subject, in_old: bool, in_new: bool) -> SubjectChange | None:
        who = self.who(subject)
        teams = who.teams
        unchanged = in_old == in_new and who.admin[0] == who.admin[1] and teams[0] == teams[1]
        if unchanged and not self.changed:
            return None
        principals = {str(subject.principal)} | {f"team:{t}" for t in (*teams[0], *teams[1])}
        everywhere = any(who.admin)  # an admin differs from a signed-in user on every probe
        pids = set(range(len(self.probes.names))) if everywhere else self.relevant(principals)
        if in_old != in_new:  # added or removed: what it has beyond any signed-in user
            which = 1 if in_new else 0
            extra = {}
            for pid in sorted(pids):
                more = self.rights(which, who, pid) - self.rights(which, self.signed_in, pid)
                if more:
                    extra[pid] = (more, _NONE) if in_new else (_NONE, more)
            status = "added" if in_new else "removed"
            return SubjectChange(str(subject), status, self.group(extra))
        if unchanged:
            pids &= self.changed
        same_role = [t for t, role in teams[0].items() if teams[1].get(t) == role]

        def explained(pid: int) -> _Delta | None:
            # Where a team's delta was not computed, it is the baseline's.
            parts = [self.baseline.get(pid)]
            parts += [self.team_delta(team, teams[0][team]).get(pid) for team in same_role]
            found = [p for p in parts if p]
            if not found:
                return None
            gained = frozenset().union(*(g for g, _ in found))
            return gained, frozenset().union(*(lost for _, lost in found))

        residual = _minus(self.deltas(who, sorted(pids)), explained)
        if not residual:
            return None
        return SubjectChange(str(subject), "changed", self.group(residual))

    def team_delta(self, team: str, role: Role) -> dict[int, _Delta]:
        """How a member of `team` with `role` (and nothing else) is affected, by probe."""
        key = (team, role)
        if key not in self.team_deltas:
            who = self.who(_signed_in(_group(team, role)))
            pids = self.relevant([f"team:{team}"])
            if all(team in p.teams for p in self.policies):
                pids &= self.changed
            self.team_deltas[key] = self.deltas(who, sorted(pids))
        return self.team_deltas[key]

    def team_changes(self) -> tuple[TeamChange, ...]:
        old, new = self.policies
        owned = (_owned(old), _owned(new))
        out = []
        for name in sorted(set(old.teams) | set(new.teams)):
            held = {  # the roles someone holds; the others would be hypothetical
                role
                for team in (old.teams.get(name), new.teams.get(name))
                if team is not None
                for _, role in (*team.members, *team.ldap_groups)
            }
            rows: dict[Change, list[str]] = defaultdict(list)
            for role in (r for r in ROLES if r in held):
                residual = _minus(self.team_delta(name, role), self.baseline.get)
                for change in self.group(residual):
                    rows[change].append(role.value)
            access = tuple(
                (("members",) if len(roles) == len(held) else tuple(roles), change)
                for change, roles in rows.items()
            )
            team = _team_change(name, old, new, access, owned)
            if team is not None:
                out.append(team)
        return tuple(out)

    # grouping

    def group(self, deltas: Mapping[int, _Delta]) -> tuple[Change, ...]:
        """Per-probe changes summarised by the most general namespaces and patterns."""
        rows: dict[tuple[str, tuple[str, ...]], tuple[set[str], set[str]]] = {}
        for direction in (0, 1):
            for action in REPOSITORY_ACTIONS:
                hit = {pid for pid, delta in deltas.items() if action in delta[direction]}
                for label, exceptions in self.cover(hit):
                    row = rows.setdefault((label, exceptions), (set(), set()))
                    row[direction].add(action)
        return tuple(
            Change(label, _ordered(gained), _ordered(lost), exceptions)
            for (label, exceptions), (gained, lost) in sorted(rows.items())
        )

    def cover(self, hit: set[int]) -> list[tuple[str, tuple[str, ...]]]:
        probes = self.probes
        remaining = set(hit)
        out = []
        for pid in sorted(hit, key=probes.names.__getitem__):
            if pid not in remaining:
                continue
            for label in probes.candidates(pid):
                members = probes.members[label]
                if len(members) > len(hit) + _SLACK or not probes.own[label] <= hit:
                    continue
                rest = members - hit
                exceptions = self.exceptions(rest, label) if rest else ()
                if exceptions is None:
                    continue
                out.append((label, exceptions))
                remaining -= members
                break
            else:
                out.append((probes.display(pid), ()))
                remaining.discard(pid)
        return out

    def exceptions(self, rest: set[int], label: str) -> tuple[str, ...] | None:
        """A few groups that together are exactly `rest`, or None."""
        probes = self.probes
        uncovered = set(rest)
        chosen: list[str] = []
        while uncovered and len(chosen) < _MAX_EXCEPTIONS:
            options = {
                candidate
                for pid in uncovered
                for candidate in probes.candidates(pid)
                if candidate != label and probes.members[candidate] <= rest
            }
            if not options:
                return None
            best = max(options, key=lambda c: (len(probes.members[c] & uncovered), c))
            chosen.append(best)
            uncovered -= probes.members[best]
        return None if uncovered else tuple(sorted(chosen))


def _minus(
    deltas: Mapping[int, _Delta], explained: Callable[[int], _Delta | None]
) -> dict[int, _Delta]:
    """Each probe's delta without what `explained` already accounts for."""
    out = {}
    for pid, (gained, lost) in deltas.items():
        known = explained(pid)
        if known is not None:
            gained, lost = gained - known[0], lost - known[1]
        if gained or lost:
            out[pid] = (gained, lost)
    return out


def _ordered(actions: Iterable[str]) -> tuple[str, ...]:
    chosen = set(actions)
    return tuple(a for a in REPOSITORY_ACTIONS if a in chosen)


# -- teams -------------------------------------------------------------------------------


def _roles(pairs: Iterable[tuple[str, Role]]) -> dict[str, Role]:
    out: dict[str, Role] = {}
    for key, role in pairs:
        out[key] = stronger(out.get(key), role)
    return out


_Pairs = tuple[tuple[str, str], ...]
_Moves = tuple[tuple[str, str, str], ...]


def _compare(
    before: Mapping[str, Role], after: Mapping[str, Role]
) -> tuple[_Pairs, _Pairs, _Moves]:
    """Who joined (with role), who left (with role), and whose role changed."""
    joined = tuple((k, after[k].value) for k in sorted(after.keys() - before.keys()))
    left = tuple((k, before[k].value) for k in sorted(before.keys() - after.keys()))
    changed = tuple(
        (k, before[k].value, after[k].value)
        for k in sorted(before.keys() & after.keys())
        if before[k] != after[k]
    )
    return joined, left, changed


def _owned(policy: Policy) -> dict[str, set[str]]:
    """The namespaces each team owns."""
    out: dict[str, set[str]] = defaultdict(set)
    for ns in policy.namespaces.values():
        for team in ns.teams:
            out[team].add(ns.name)
    return out


def _team_change(
    name: str,
    old: Policy,
    new: Policy,
    access: tuple[tuple[tuple[str, ...], Change], ...],
    owners: tuple[dict[str, set[str]], dict[str, set[str]]],
) -> TeamChange | None:
    teams = [p.teams.get(name) for p in (old, new)]
    members = [_roles((str(m), r) for m, r in t.members) if t else {} for t in teams]
    groups = [_roles((dn.lower(), r) for dn, r in t.ldap_groups) if t else {} for t in teams]
    owned = [owners[0].get(name, set()), owners[1].get(name, set())]
    status = "changed" if all(teams) else "added" if teams[1] else "removed"
    owns = (tuple(sorted(owned[1] - owned[0])), tuple(sorted(owned[0] - owned[1])))
    change = TeamChange(name, status, *_compare(*members), *_compare(*groups), *owns, access)
    if status == "changed" and change == TeamChange(name, status):
        return None
    return change


# -- needs attention ---------------------------------------------------------------------


def _attention(old: Policy, new: Policy, anonymous: Iterable[Change]) -> list[Notice]:
    out: list[Notice] = []
    personal = [str(p.settings.personal_namespaces).lower() for p in (old, new)]
    if personal[0] != personal[1]:
        out.append(Notice("settings", "personal_namespaces", "changed", personal[0], personal[1]))
    for name in sorted(set(old.users) | set(new.users)):
        was, now = (p.users.get(name) for p in (old, new))
        if bool(was and was.admin) != bool(now and now.admin):
            out.append(Notice("admin", f"user:{name}", "added" if now and now.admin else "removed"))
    for kind, before, after in (("user", old.users, new.users), ("robot", old.robots, new.robots)):
        for name in sorted(before.keys() ^ after.keys()):
            out.append(Notice(kind, f"{kind}:{name}", "added" if name in after else "removed"))
    # Which CI jobs a workload is: a new binding can let other jobs in as much as a grant.
    out += _described("workload", old.workloads, new.workloads, _binding)
    # Where events go: a new or moved webhook sends pushes and refusals to another system.
    hooks = [{w.name: w for w in p.webhooks} for p in (old, new)]
    out += _described("webhook", hooks[0], hooks[1], _subscription)
    visibility = [old.settings.global_namespace, new.settings.global_namespace]
    if visibility[0] != visibility[1]:
        out.append(Notice("visibility", "*", "changed", visibility[0].value, visibility[1].value))
    for ns in sorted(set(old.namespaces) | set(new.namespaces)):
        old_ns, new_ns = old.namespaces.get(ns), new.namespaces.get(ns)
        seen = (old_ns.visibility if old_ns else None, new_ns.visibility if new_ns else None)
        if seen[0] == seen[1] or set(seen) <= {None, Visibility.PRIVATE}:
            continue
        change = "changed" if old_ns and new_ns else "added" if new_ns else "removed"
        values = [v.value if v else None for v in seen]
        out.append(Notice("visibility", ns, change, values[0], values[1]))
    for c in anonymous:
        for direction, actions in (("gained", c.gained), ("lost", c.lost)):
            if "pull" in actions:
                out.append(
                    Notice("anonymous-pull", c.repositories, direction, None, None, c.exceptions)
                )
    out.extend(_restriction_notices(old, new))
    return out


def _described(
    kind: str,
    before: Mapping[str, T],
    after: Mapping[str, T],
    describe: Callable[[T | None], str | None],
) -> list[Notice]:
    """A notice per name whose one-line description (`describe`) differs between the two."""
    out = []
    for name in sorted(before.keys() | after.keys()):
        was, now = describe(before.get(name)), describe(after.get(name))
        if was != now:
            change = "changed" if was and now else "added" if now else "removed"
            out.append(Notice(kind, f"{kind}:{name}", change, was, now))
    return out


def _binding(workload: Workload | None) -> str | None:
    """Which jobs a workload takes in, as one line: issuer, audience, claims, only."""
    if workload is None:
        return None
    claims = ", ".join(f"{c.claim}={'|'.join(c.values)}" for c in workload.claims)
    only = f"; only {', '.join(workload.only)}" if workload.only is not None else ""
    expires = f"; expires {workload.expires}" if workload.expires else ""
    return f"{workload.issuer} aud={workload.audience}: {claims}{only}{expires}"


def _subscription(webhook: Webhook | None) -> str | None:
    """Which events a webhook sends where, as one line: URL, events, repositories, format,
    and where its secret comes from (the name of the variable or file, never the secret)."""
    if webhook is None:
        return None
    events = ", ".join(sorted(webhook.events))
    on = f" on {', '.join(webhook.repositories)}" if webhook.repositories else ""
    secret = f"env {webhook.secret_env}" if webhook.secret_env else f"file {webhook.secret_file}"
    return f"{webhook.url}: {events}{on} ({webhook.format}; secret from {secret})"


def _restriction_notices(old: Policy, new: Policy) -> list[Notice]:
    def by_patterns(policy: Policy) -> dict[tuple[str, ...], Counter[str]]:
        found: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
        for r in policy.restrictions:
            only = ", ".join(sorted(str(p) for p in r.only)) or "nobody"
            found[tuple(sorted(set(r.repositories)))][
                f"{', '.join(_ordered(r.actions))} only for {only}"
            ] += 1
        return found

    before, after = by_patterns(old), by_patterns(new)
    out = []
    for key in sorted(before.keys() | after.keys()):
        was, now = before.get(key, Counter()), after.get(key, Counter())
        if was == now:
            continue
        name = ", ".join(key)
        removed, added = list((was - now).elements()), list((now - was).elements())
        if len(removed) == 1 and len(added) == 1:
            out.append(Notice("restriction", name, "changed", removed[0], added[0]))
            continue
        out.extend(Notice("restriction", name, "removed", text, None) for text in removed)
        out.extend(Notice("restriction", name, "added", None, text) for text in added)
    return out
