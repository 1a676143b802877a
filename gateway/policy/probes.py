"""Probe repositories for the permission diff, and what a decision on one depends on.

Probes: `ns/P` and `ns/P/P` for every namespace (personal ones included), `P` for the
global namespace, and every grant and restriction pattern with `*` replaced by `P` and `**`
by zero, one and two components (`X/**` matches `X` too); a restriction pattern that
starts with a wildcard is also tried in every declared namespace. `P` is a component that
no pattern names, so `ns/P` stands for "any other repository in ns".

A decision on a probe depends only on the probe's namespace and matching rules, and on the
subject's admin flag, personal namespace, roles in the owning teams and which of the rules'
principals it has: `_Facts` and `_Who` hold those, for `gateway.policy.diff._Differ`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.policy.model import Policy, Role, Subject
from gateway.policy.patterns import Pattern, compile_pattern, is_repository_name, namespace_of

OTHER = "<other>"  # in labels: any namespace that neither policy declares
SIGNED_IN = "@signed-in"  # the synthetic user's name; '@' keeps it from clashing with a real one
ROLES = (Role.OWNER, Role.CONTRIBUTOR, Role.VIEWER)


# -- probes ------------------------------------------------------------------------------


def _pattern_texts(policy: Policy) -> Iterable[str]:
    for grant in policy.grants:
        yield from grant.repositories
    for restriction in policy.restrictions:
        yield from restriction.repositories


def _choose_token(policies: tuple[Policy, Policy]) -> str:
    """A path component that no pattern, namespace, user or robot name singles out."""
    literals: set[str] = set()
    segments: set[str] = set()
    for policy in policies:
        literals.update(policy.namespaces, policy.users, policy.robots)
        for text in _pattern_texts(policy):
            segments.update(text.split("/"))
    literals.update(s for s in segments if "*" not in s)
    globs = [compile_pattern(s) for s in segments if "*" in s and s not in ("*", "**")]
    for i in itertools.count():
        token = "zz-probe" if i == 0 else f"zz-probe-{i}"
        if token not in literals and not any(glob.matches(token) for glob in globs):
            return token
    raise AssertionError("unreachable")  # pragma: no cover


def _instances(segments: list[str], token: str) -> list[str]:
    """Concrete names for a pattern: `*` is the token, `**` zero, one and two components
    (zero too at the end: `platform/prod/**` probes `platform/prod` itself)."""
    options: list[list[list[str]]] = []
    for segment in segments:
        if segment == "**":
            options.append([[token] * n for n in (0, 1, 2)])
        else:
            options.append([[segment.replace("*", token)]])
    names = (
        "/".join(part for parts in combo for part in parts) for combo in itertools.product(*options)
    )
    return [name for name in dict.fromkeys(names) if is_repository_name(name)]


class _Probes:
    """Probe repositories, the groups (namespaces, patterns) they stand for, and their rules."""

    def __init__(self, old: Policy, new: Policy) -> None:
        self.token = _choose_token((old, new))
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
        self.own: dict[str, set[int]] = defaultdict(set)  # group label -> its instances
        token = self.token
        namespaces = sorted(set(old.namespaces) | set(new.namespaces))
        for ns in namespaces:
            for name in (f"{ns}/{token}", f"{ns}/{token}/{token}"):
                self.add(name, f"{ns}/**")
        self.add(token, "*")
        self.add(f"{token}/{token}", OTHER + "/**")
        self.add(f"{token}/{token}/{token}", OTHER + "/**")
        self.own["**"] |= {self.ids[token], self.ids[f"{token}/{token}"]}
        declared = [n for n in namespaces if not _is_personal(n, old, new)]
        texts = sorted({*_pattern_texts(old), *_pattern_texts(new)})
        for text in texts:
            segments = text.split("/")
            # `X/**` matches `X` too, but `X` does not stand for the pattern's group: a change
            # on `X/**` that leaves `X` alone may still be shown as `X/**` except `X`.
            bare = set(_instances(segments[:-1], token)) if segments[-1] == "**" else set()
            for name in _instances(segments, token):
                self.add(name, None if name in bare else text)
        wild_restrictions = {
            text
            for policy in (old, new)
            for restriction in policy.restrictions
            for text in restriction.repositories
            if "*" in text.split("/")[0]
        }
        for text in sorted(wild_restrictions):
            first, *rest = text.split("/")
            head = compile_pattern(first) if first != "**" else None
            for ns in declared:
                if head is not None and not head.matches(ns):
                    continue
                heads = [[ns], [ns, token]] if first == "**" else [[ns]]
                for prefix in heads:
                    for name in _instances(prefix + rest, token):
                        self.add(name, None)
        buckets: dict[str | None, list[Pattern]] = defaultdict(list)
        for text in texts:
            if "*" in text:  # a literal pattern matches its own name only: no regex needed
                pattern = compile_pattern(text)
                buckets[pattern.prefix].append(pattern)
        self.members: dict[str, set[int]] = defaultdict(set)  # group label -> matching probes
        literal = {text for text in texts if "*" not in text}
        self.matched = [_match(buckets, literal, name) for name in self.names]
        # Groups by pattern. In the diff's rows `X/**` stands for namespace X (docs/gitops.md),
        # so the repository `X` of the global namespace, which the pattern `X/**` matches as
        # well, is left out of that group (it is shown on its own, as `X`).
        self.grouped = [
            [t for t in texts_ if t != f"{name}/**"] if "/" not in name else texts_
            for name, texts_ in zip(self.names, self.matched, strict=True)
        ]
        self._candidates: dict[int, list[str]] = {}
        for pid, texts_ in enumerate(self.grouped):
            self.members["**"].add(pid)
            self.members[self.namespace_label(pid)].add(pid)
            for text in texts_:
                self.members[text].add(pid)
            if token not in self.names[pid]:  # a real name is a group of its own
                self.members[self.names[pid]].add(pid)

    def add(self, name: str, label: str | None) -> None:
        pid = self.ids.get(name)
        if pid is None:
            pid = self.ids[name] = len(self.names)
            self.names.append(name)
        if label is not None:
            self.own[label].add(pid)

    def namespace_label(self, pid: int) -> str:
        ns = namespace_of(self.names[pid])
        return "*" if not ns else f"{OTHER if ns == self.token else ns}/**"

    def display(self, pid: int) -> str:
        """A probe in pattern syntax: the token shows as `*`, or `<other>` as a namespace."""
        head, sep, tail = self.names[pid].partition("/")
        if sep and head == self.token:
            head = OTHER
        return (head + sep + tail).replace(self.token, "*")

    def candidates(self, pid: int) -> list[str]:
        """Groups a probe belongs to, most general first."""
        found = self._candidates.get(pid)
        if found is None:
            labels = ["**", self.namespace_label(pid)]
            patterns = sorted(self.grouped[pid], key=lambda t: (-len(self.members[t]), t))
            itself = [self.names[pid]] if self.token not in self.names[pid] else []
            found = self._candidates[pid] = list(dict.fromkeys(labels + patterns + itself))
        return found


def _match(buckets: Mapping[str | None, list[Pattern]], literal: set[str], name: str) -> list[str]:
    """The texts of the patterns that match a repository name."""
    head = name.partition("/")[0]
    found = [name] if name in literal else []
    found.extend(p.text for p in buckets.get(head, ()) if p.matches(name))
    found.extend(p.text for p in buckets.get(None, ()) if p.matches(name))
    return found


def _is_personal(ns: str, old: Policy, new: Policy) -> bool:
    return any(p.namespaces.get(ns) is not None and p.namespaces[ns].personal for p in (old, new))


# -- what a decision depends on ----------------------------------------------------------


def _augment(policy: Policy) -> Policy:
    """The policy plus one directory group per team and role, for a member with nothing else."""
    teams = {
        name: dataclasses.replace(
            team, ldap_groups=team.ldap_groups + tuple((_group(name, r), r) for r in ROLES)
        )
        for name, team in policy.teams.items()
    }
    return dataclasses.replace(policy, teams=teams)


def _group(team: str, role: Role) -> str:
    return f"@team:{team}:{role.value}"


def _signed_in(*groups: str) -> Subject:
    """A directory user the policy does not name: any signed-in user, plus `groups`."""
    return Subject("user", SIGNED_IN, frozenset(groups), directory=True)


@dataclass(frozen=True, slots=True)
class _Facts:
    """What one policy's decisions on one probe depend on, besides the subject."""

    ns_teams: tuple[str, ...]  # the teams owning the probe's namespace
    personal: str | None  # the owner, when the probe is in a personal namespace
    named: frozenset[str]  # principals named by the grants and restrictions that match


@dataclass(frozen=True, slots=True)
class _Who:
    """A subject and, per policy, everything its decisions depend on."""

    subject: Subject
    known: tuple[bool, bool]
    admin: tuple[bool, bool]
    teams: tuple[dict[str, Role], dict[str, Role]]
    principals: tuple[frozenset[str], frozenset[str]]


_RuleKey = tuple[frozenset[str], frozenset[str]]  # actions, principals named


def _rules_by_pattern(
    policy: Policy,
) -> tuple[dict[str, list[_RuleKey]], dict[str, list[_RuleKey]]]:
    """Grants and restrictions as (actions, principals), keyed by each of their patterns."""
    grants: dict[str, list[_RuleKey]] = defaultdict(list)
    restrictions: dict[str, list[_RuleKey]] = defaultdict(list)
    for grant in policy.grants:
        key = (grant.actions, frozenset(map(str, grant.to)))
        for text in grant.repositories:
            grants[text].append(key)
    for restriction in policy.restrictions:
        key = (restriction.actions, frozenset(map(str, restriction.only)))
        for text in restriction.repositories:
            restrictions[text].append(key)
    return grants, restrictions


def _namespace_context(policy: Policy, repository: str) -> tuple[object, _Facts]:
    """What a repository's namespace contributes to a decision, as a key and as facts."""
    ns = namespace_of(repository)
    if not ns:
        return ("global", policy.settings.global_namespace), _Facts((), None, frozenset())
    namespace = policy.namespaces.get(ns)
    if namespace is None:
        return None, _Facts((), None, frozenset())
    key = (namespace.visibility, frozenset(namespace.teams), namespace.personal)
    return key, _Facts(namespace.teams, ns if namespace.personal else None, frozenset())
