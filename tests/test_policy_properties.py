"""Properties of the policy engine over generated policies, read through the YAML loader.

Expectations are computed from the generated data (`policygen.PolicySpec`) with a matcher of
our own, not by asking the engine, so a mistake shared by loader and engine still shows.
"""

from __future__ import annotations

import fnmatch
import os
import random
from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from gateway.policy.engine import Engine
from gateway.policy.load import load_texts
from gateway.policy.model import REPOSITORY_ACTIONS, Subject

from tests.support.policygen import ROLE_KEYS, PolicySpec, generate_spec, make_grant, render

Outcome = dict[tuple[Subject, str], tuple[str, ...]]

# Examples per property: 80 in `make test`, fewer in `make test-fast` (PROPERTY_EXAMPLES).
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "80"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
UNKNOWN_USER = "nobody-here"
ACTIONS = frozenset({"pull", "push", "delete"})
ASKED = (*REPOSITORY_ACTIONS, "*")


@st.composite
def specs(draw: st.DrawFn) -> PolicySpec:
    """A small policy: a few users, robots, teams, namespaces, grants and restrictions."""
    rng = draw(st.randoms(use_true_random=False))
    return generate_spec(
        rng,
        users=draw(st.integers(1, 5)),
        teams=draw(st.integers(1, 3)),
        namespaces=draw(st.integers(1, 4)),
        grants=draw(st.integers(0, 8)),
        robots=draw(st.integers(0, 2)),
        restrictions=draw(st.integers(0, 3)),
        wildcards=draw(st.sampled_from((0.0, 0.1, 0.3))),
    )


def engine_for(texts: dict[str, str]) -> Engine:
    """The engine of a policy given as YAML texts, which a failing example then shows."""
    for name, text in sorted(texts.items()):
        note(f"--- {name}\n{text}")
    return Engine(load_texts(texts).policy)


# -- an independent reading of the spec ----------------------------------------------------


def glob_matches(pattern: str, repository: str) -> bool:
    """`*` within one component, `**` any number of components, none included (`a/**`
    matches `a`)."""
    return _match(pattern.split("/"), repository.split("/"))


def _match(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _match(rest, parts[1:])


def principals_of(spec: PolicySpec, subject: Subject) -> set[str]:
    """Every name a rule may use to reach the subject, from the spec alone."""
    me = f"{subject.kind}:{subject.name}"
    known = (subject.kind == "user" and subject.name in spec.users) or (
        subject.kind == "robot" and subject.name in spec.robots
    )
    if not known:
        return {"anonymous"}
    found = {"anonymous", "authenticated", me}
    groups = {group.lower() for group in subject.groups}
    for name, team in spec.teams.items():
        if any(spec.resolve(m) == me for key in ROLE_KEYS for m in team.get(key, ())):
            found.add(f"team:{name}")
        if groups & {dn_of(entry).lower() for entry in team.get("ldap_groups", ())}:
            found.add(f"team:{name}")
    return found


def dn_of(entry: str | dict[str, str]) -> str:
    return entry if isinstance(entry, str) else entry["group"]


def all_groups(spec: PolicySpec) -> frozenset[str]:
    """Every directory group the teams map, upper-cased (the engine must ignore case)."""
    return frozenset(
        dn_of(entry).upper()
        for team in spec.teams.values()
        for entry in team.get("ldap_groups", ())
    )


def rule_actions(rule: dict[str, Any]) -> set[str]:
    if "role" in rule:
        return {"owner": set(ACTIONS), "contributor": {"pull", "push"}, "viewer": {"pull"}}[
            rule["role"]
        ]
    return set(ACTIONS) if "*" in rule["actions"] else set(rule["actions"])


def reaches(spec: PolicySpec, rule_subjects: Iterable[str], principals: set[str]) -> bool:
    return any(spec.resolve(text) in principals for text in rule_subjects)


def anonymous_may_pull(spec: PolicySpec, repository: str) -> bool:
    """Pull without signing in: a public namespace or an anonymous grant, unless restricted."""
    namespace, slash, _ = repository.partition("/")
    if slash:
        public = spec.namespaces.get(namespace, {}).get("visibility") == "public"
    else:
        public = spec.settings["global_namespace"] == "public"
    granted = any(
        "anonymous" in grant["to"]
        and "pull" in rule_actions(grant)
        and any(glob_matches(p, repository) for p in grant["repositories"])
        for grant in spec.grants
    )
    restricted = any(
        "pull" in rule_actions(r)
        and "anonymous" not in r["only"]
        and any(glob_matches(p, repository) for p in r["repositories"])
        for r in spec.restrictions
    )
    return (public or granted) and not restricted


# -- what to ask -----------------------------------------------------------------------------


def instances(pattern: str) -> set[str]:
    """Repository names a pattern matches: `*` as `x` and `x-y`, `**` as zero to two parts."""
    names = {""}
    for segment in pattern.split("/"):
        if segment == "**":
            choices = ["", "d", "d/e"]
        else:
            choices = sorted({segment.replace("*", "x"), segment.replace("*", "x-y")})
        names = {f"{n}/{c}".strip("/") if c else n for n in names for c in choices}
    return {n for n in names if n}


def probe_repositories(spec: PolicySpec) -> list[str]:
    names = {"alpine", "unknown-ns/app", "unknown-ns/prod/api", "a/b/c/d"}
    for namespace in [*spec.namespaces, *spec.users]:
        names.update({namespace, f"{namespace}/app", f"{namespace}/prod", f"{namespace}/prod/api"})
        names.add(f"{namespace}/x/y")
    for rule in [*spec.grants, *spec.restrictions]:
        for pattern in rule["repositories"]:
            names.update(instances(pattern))
    return sorted(names)


def probe_subjects(spec: PolicySpec) -> list[Subject]:
    subjects = [Subject("anonymous"), Subject("user", UNKNOWN_USER)]
    subjects += [Subject("user", name) for name in spec.users]
    subjects += [Subject("robot", name) for name in spec.robots]
    # Names that exist, but as something else: a robot's name as a user, and so on.
    subjects += [Subject("user", name) for name in list(spec.robots)[:1]]
    subjects += [Subject("robot", name) for name in list(spec.users)[:1]]
    subjects += [Subject("user", name) for name in list(spec.namespaces)[:1]]
    # Signed in through the directory: a user with every mapped group, and a stranger with them.
    subjects += [Subject("user", name, all_groups(spec)) for name in list(spec.users)[-1:]]
    subjects += [Subject("user", UNKNOWN_USER, all_groups(spec))]
    return subjects


def outcomes(engine: Engine, spec: PolicySpec) -> Outcome:
    """The granted actions for every probe subject and repository."""
    return {
        (subject, repository): engine.decide(subject, "repository", repository, ASKED).granted
        for subject in probe_subjects(spec)
        for repository in probe_repositories(spec)
    }


def differences(
    before: Outcome, after: Outcome, keep: Callable[[set[str], set[str]], bool]
) -> list[str]:
    """Each probe whose granted actions changed in a way `keep(old, new)` rejects."""
    return [
        f"{subject} on {repository}: {old} -> {after[subject, repository]}"
        for (subject, repository), old in before.items()
        if not keep(set(old), set(after[subject, repository]))
    ]


# -- properties ----------------------------------------------------------------------------


@PROPERTY
@given(spec=specs(), layout=st.randoms(use_true_random=False), files=st.integers(1, 4))
def test_order_of_rules_members_and_files_never_matters(
    spec: PolicySpec, layout: random.Random, files: int
) -> None:
    engine = engine_for(render(spec))
    shuffled = Engine(load_texts(render(spec, layout, files=files)).policy)
    for subject in probe_subjects(spec):
        for repository in probe_repositories(spec):
            one = engine.decide(subject, "repository", repository, ASKED)
            two = shuffled.decide(subject, "repository", repository, ASKED)
            assert one.granted == two.granted, (subject, repository)
            # Reason texts list patterns in the order written, so compare how many there are.
            assert [len(a.reasons) for a in one.actions] == [len(b.reasons) for b in two.actions]
            assert ("*" in one.granted) == (set(one.granted) >= ACTIONS)


@PROPERTY
@given(spec=specs())
def test_a_restriction_beats_every_grant_and_admin(spec: PolicySpec) -> None:
    engine = engine_for(render(spec))
    for subject in probe_subjects(spec):
        principals = principals_of(spec, subject)
        for repository in probe_repositories(spec):
            reserved = set()
            for restriction in spec.restrictions:
                if not reaches(spec, restriction["only"], principals) and any(
                    glob_matches(p, repository) for p in restriction["repositories"]
                ):
                    reserved |= rule_actions(restriction)
            granted = engine.decide(subject, "repository", repository, REPOSITORY_ACTIONS).granted
            assert not reserved & set(granted), (subject, repository, granted)


@PROPERTY
@given(spec=specs(), extra=st.randoms(use_true_random=False))
def test_adding_a_grant_never_removes_access(spec: PolicySpec, extra: random.Random) -> None:
    before = outcomes(engine_for(render(spec)), spec)
    wider = spec.copy()
    wider.grants.append(make_grant(extra, wider))
    note(f"added grant: {wider.grants[-1]}")
    after = outcomes(Engine(load_texts(render(wider)).policy), spec)
    assert differences(before, after, lambda old, new: old <= new) == []


@PROPERTY
@given(spec=specs(), pick=st.randoms(use_true_random=False))
def test_removing_a_team_member_never_adds_access(spec: PolicySpec, pick: random.Random) -> None:
    before = outcomes(engine_for(render(spec)), spec)
    narrower = spec.copy()
    team = narrower.teams[pick.choice(sorted(narrower.teams))]
    key = pick.choice([k for k in ROLE_KEYS if team.get(k)])
    team[key].remove(member := pick.choice(team[key]))
    note(f"removed {member} from the {key} of a team")
    after = outcomes(Engine(load_texts(render(narrower)).policy), spec)
    assert differences(before, after, lambda old, new: new <= old) == []


@PROPERTY
@given(spec=specs())
def test_unknown_and_anonymous_subjects_pull_only_what_is_public(spec: PolicySpec) -> None:
    engine = engine_for(render(spec))
    strangers = [
        Subject("anonymous"),
        Subject("user", UNKNOWN_USER),
        Subject("user", UNKNOWN_USER, all_groups(spec)),
        *[Subject("user", name) for name in [*spec.namespaces, *spec.robots]],
        *[Subject("robot", name) for name in spec.users],
    ]
    for repository in probe_repositories(spec):
        expected = ("pull",) if anonymous_may_pull(spec, repository) else ()
        for subject in strangers:
            granted = engine.decide(subject, "repository", repository, REPOSITORY_ACTIONS).granted
            assert granted == expected, (subject, repository)
    for subject in strangers:
        assert engine.decide(subject, "registry", "catalog", ["*"]).granted == ()


# -- the token endpoint's fast path ----------------------------------------------------------

FAST_PATH = settings(PROPERTY, max_examples=max(10, EXAMPLES * 5 // 16))
INVALID_NAMES = ("", "Upper/app", "a//b", "/lead", "trail/", "-dash/app", "a" * 256, "x y")
SOME_ACTIONS = ("pull", "push", "delete", "*", "fly", "PULL", "")


@FAST_PATH
@given(
    spec=specs(),
    asked=st.lists(st.lists(st.sampled_from(SOME_ACTIONS), max_size=6), min_size=1, max_size=3),
    memo=st.sampled_from((1, 3, 10_000)),
)
def test_granted_is_what_decide_grants(spec: PolicySpec, asked: list[list[str]], memo: int) -> None:
    """`Engine.granted` (no reasons) answers as `Engine.decide(...).granted`, action for action."""
    engine = engine_for(render(spec))
    engine.SUBJECT_MEMO_SIZE = memo  # a small memo is emptied again and again
    groups = all_groups(spec)
    subjects = [
        *probe_subjects(spec),
        *[Subject("user", name, groups, directory=True) for name in list(spec.users)[:2]],
        Subject("user", UNKNOWN_USER, groups, directory=True),
        Subject("user", UNKNOWN_USER, directory=True),
        Subject("user", "", groups, directory=True),
        *[Subject("robot", name, groups) for name in list(spec.robots)[:1]],
    ]
    repositories = [
        *probe_repositories(spec),
        *INVALID_NAMES,
        *[f"{namespace.upper()}/app" for namespace in list(spec.namespaces)[:1]],
    ]
    action_sets = [*asked, list(ASKED), ["*"]]
    for subject in subjects:
        for actions in action_sets:
            for repository in repositories:
                expected = engine.decide(subject, "repository", repository, actions).granted
                got = engine.granted(subject, "repository", repository, iter(actions))
                assert got == expected, (subject, repository, actions)
            for type_, name in [
                ("registry", "catalog"),
                ("registry", "other"),
                ("plugin", "catalog"),
                ("repositories", "alpine"),
                ("", ""),
            ]:
                expected = engine.decide(subject, type_, name, actions).granted
                assert engine.granted(subject, type_, name, actions) == expected, (type_, name)
    assert len(engine._subject_facts) <= memo


# -- the index against brute force -----------------------------------------------------------

ROLE_OF_KEY = {"owners": "owner", "contributors": "contributor", "viewers": "viewer"}
RANK = {"viewer": 0, "contributor": 1, "owner": 2}


def roles_of(spec: PolicySpec, subject: Subject) -> dict[str, str]:
    """The subject's role in each of its teams, from the spec alone."""
    if "authenticated" not in principals_of(spec, subject):
        return {}
    me = f"{subject.kind}:{subject.name}"
    groups = {group.lower() for group in subject.groups}
    found: dict[str, str] = {}
    for name, team in spec.teams.items():
        held = [
            ROLE_OF_KEY[k] for k in ROLE_KEYS if any(spec.resolve(m) == me for m in team.get(k, ()))
        ]
        for entry in team.get("ldap_groups", ()):
            if dn_of(entry).lower() in groups:
                held.append(entry.get("role", "viewer") if isinstance(entry, dict) else "viewer")
        if held:
            found[name] = max(held, key=RANK.__getitem__)
    return found


def brute_force(spec: PolicySpec, subject: Subject, repository: str) -> set[str]:
    """What the subject may do on the repository, every rule tried one by one."""
    principals = principals_of(spec, subject)
    roles = roles_of(spec, subject)
    allowed: set[str] = set()
    if subject.kind == "user" and spec.users.get(subject.name, {}).get("admin"):
        allowed |= ACTIONS
    namespace, slash, _ = repository.partition("/")
    declared = spec.namespaces.get(namespace) if slash else None
    personal = bool(slash) and spec.settings["personal_namespaces"] and namespace in spec.users
    if not slash:
        visibility: str | None = spec.settings["global_namespace"]
    elif declared is not None:
        visibility = declared.get("visibility", "private")
    else:
        visibility = "private" if personal else None
    if visibility == "public" or (visibility == "protected" and "authenticated" in principals):
        allowed.add("pull")
    if personal and subject.kind == "user" and subject.name == namespace:
        allowed |= ACTIONS
    for team in (declared or {}).get("teams", ()):
        if team in roles:
            allowed |= rule_actions({"role": roles[team]})
    for grant in spec.grants:
        if reaches(spec, grant["to"], principals) and any(
            glob_matches(p, repository) for p in grant["repositories"]
        ):
            allowed |= rule_actions(grant)
    for restriction in spec.restrictions:
        if not reaches(spec, restriction["only"], principals) and any(
            glob_matches(p, repository) for p in restriction["repositories"]
        ):
            allowed -= rule_actions(restriction)
    return allowed


def wild_components(spec: PolicySpec) -> list[str]:
    """Components of every shape a pattern may have, from the spec's own names: literal, `*`,
    `**`, and text with `*` before, after, inside and around it."""
    words = sorted({*spec.namespaces, *list(spec.users)[:2], "api", "cache", "prod"})
    out = ["*", "**"]
    for word in words:
        out += [word, f"{word[:2]}*", f"*{word[-2:]}", f"{word[0]}*{word[-1]}", f"*{word[1:3]}*"]
    return out


@st.composite
def wild_patterns(draw: st.DrawFn, spec: PolicySpec) -> str:
    parts = draw(st.lists(st.sampled_from(wild_components(spec)), min_size=1, max_size=4))
    text = "/".join(parts)
    return text.replace("**/**", "**")  # the one combination the language refuses


@FAST_PATH
@given(data=st.data(), spec=specs())
def test_granted_equals_brute_force_with_wildcards_anywhere(
    data: st.DataObject, spec: PolicySpec
) -> None:
    """The indexed decision is the brute-force one, for grants and restrictions whose
    patterns have wildcards first, in the middle, last, and inside components."""
    extra = random.Random(data.draw(st.integers(0, 2**32)))
    for _ in range(data.draw(st.integers(1, 6))):
        grant = make_grant(extra, spec)
        grant["repositories"] = data.draw(st.lists(wild_patterns(spec), min_size=1, max_size=3))
        spec.grants.append(grant)
    for restriction in spec.restrictions[:1]:
        restriction["repositories"] = [data.draw(wild_patterns(spec))]
    engine = engine_for(render(spec))
    for subject in probe_subjects(spec):
        for repository in probe_repositories(spec):
            expected = brute_force(spec, subject, repository)
            got = engine.granted(subject, "repository", repository, REPOSITORY_ACTIONS)
            assert set(got) == expected, (subject, repository)
            assert (
                engine.decide(subject, "repository", repository, REPOSITORY_ACTIONS).granted == got
            )
            assert engine.may_pull(subject, repository) == ("pull" in expected)
