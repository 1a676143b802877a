"""Reloads with the parse cache: whatever the edits, a load that reuses what earlier loads
read and assembled gives exactly what reading every file afresh gives (the same policy, or
the same problems), re-reads only the files that changed, and keeps nothing of files gone."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from gateway.policy.engine import Engine
from gateway.policy.load import LoadResult, ParseCache, PolicyError, load_texts
from gateway.policy.model import Subject

from tests.support.policygen import PolicySpec, generate_spec, make_grant, render

EDITS = (
    "add user",
    "remove user",
    "user becomes robot",
    "add robot",
    "remove robot",
    "add grant",
    "remove grant",
    "remove team",
    "add namespace",
    "toggle personal namespaces",
    "break a file",
    "add a file",
    "remove the added file",
)


def edit(spec: PolicySpec, texts: dict[str, str], what: str, rng: random.Random) -> dict[str, str]:
    """Apply one edit to the spec (then re-rendered, so only the files it touches change) or
    to the texts directly."""
    if what == "break a file":
        name = rng.choice(sorted(texts))
        return {**texts, name: texts[name] + "\n  - [unclosed\n"}
    if what == "add a file":
        user = rng.choice(sorted(spec.users))
        text = f"grants:\n  - {{to: [{user}], repositories: ['extra/**'], actions: [pull]}}\n"
        return {**texts, "zz-extra.yaml": text}
    if what == "remove the added file":
        return {k: v for k, v in texts.items() if k != "zz-extra.yaml"}
    users = sorted(spec.users)
    if what == "add user":
        spec.users[f"new{rng.randrange(1000)}"] = {}
    elif what == "remove user" and len(users) > 1:
        del spec.users[rng.choice(users)]
    elif what == "user becomes robot" and len(users) > 1:
        name = rng.choice(users[1:])
        del spec.users[name]
        spec.robots[name] = {"token_sha256": "0" * 64}
    elif what == "add robot":
        spec.robots[f"bot{rng.randrange(1000)}"] = {"token_sha256": "1" * 64}
    elif what == "remove robot" and spec.robots:
        del spec.robots[rng.choice(sorted(spec.robots))]
    elif what == "add grant":
        spec.grants.append(make_grant(rng, spec))
    elif what == "remove grant" and spec.grants:
        spec.grants.pop(rng.randrange(len(spec.grants)))
    elif what == "remove team" and len(spec.teams) > 1:
        del spec.teams[rng.choice(sorted(spec.teams))]
    elif what == "add namespace":
        spec.namespaces[f"ns{rng.randrange(1000)}"] = {"teams": [], "visibility": "public"}
    elif what == "toggle personal namespaces":
        spec.settings["personal_namespaces"] = not spec.settings["personal_namespaces"]
    spec._lists.clear()
    extra = {k: v for k, v in texts.items() if k == "zz-extra.yaml"}
    return {**render(spec), **extra}


def load(texts: dict[str, str], cache: ParseCache | None) -> LoadResult | list[str]:
    try:
        return load_texts(texts, revision="r", cache=cache)
    except PolicyError as exc:
        return [str(p) for p in exc.problems]


def same(one: LoadResult | list[str], other: LoadResult | list[str]) -> None:
    if isinstance(one, list) or isinstance(other, list):
        assert one == other
        return
    a, b = one.policy, other.policy
    assert a.settings == b.settings
    assert list(a.users.items()) == list(b.users.items())
    assert list(a.robots.items()) == list(b.robots.items())
    assert list(a.teams.items()) == list(b.teams.items())
    assert list(a.namespaces.items()) == list(b.namespaces.items())
    assert a.grants == b.grants
    assert a.restrictions == b.restrictions
    assert [str(w) for w in one.warnings] == [str(w) for w in other.warnings]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rng=st.randoms(use_true_random=False),
    edits=st.lists(st.sampled_from(EDITS), min_size=1, max_size=8),
)
def test_a_cached_reload_is_a_fresh_load(rng: random.Random, edits: list[str]) -> None:
    spec = generate_spec(rng, users=6, teams=3, namespaces=3, grants=8, robots=3, restrictions=2)
    texts = render(spec)
    cache = ParseCache()
    same(load(texts, cache), load(texts, None))
    for what in edits:
        before = dict(texts)
        texts = edit(spec, texts, what, rng)
        note(f"{what}: {sorted(k for k in texts if texts[k] != before.get(k))} changed")
        parsed = cache.parsed
        cached = load(texts, cache)
        same(cached, load(texts, None))
        changed = [k for k in texts if texts[k] != before.get(k)]
        assert cache.parsed - parsed <= len(changed)
        assert len(cache) == len(texts)  # nothing kept of files gone or changed
        if not isinstance(cached, list):
            assert cache.assembled is not None
            assert set(cache.assembled.files) == {f.key for f in cache.assembled.files.values()}
            assert len(cache.assembled.files) == len(texts)
        else:
            assert cache.assembled is None


def test_a_changed_file_is_read_again_and_enforced() -> None:
    texts = {
        "people.yaml": "users:\n  ann: {}\n  bob: {}\n",
        "access.yaml": "grants:\n  - {to: [ann], repositories: ['a/**'], actions: [pull]}\n",
    }
    cache = ParseCache()
    engine = Engine(load_texts(texts, cache=cache).policy)
    ann, bob = Subject("user", "ann"), Subject("user", "bob")
    assert engine.granted(ann, "repository", "a/x", ["pull"]) == ("pull",)
    assert cache.parsed == 2
    texts["access.yaml"] = texts["access.yaml"].replace("[ann]", "[bob]")
    engine = Engine(load_texts(texts, cache=cache).policy, engine)
    assert cache.parsed == 3  # the changed file only
    assert engine.granted(ann, "repository", "a/x", ["pull"]) == ()
    assert engine.granted(bob, "repository", "a/x", ["pull"]) == ("pull",)


@pytest.mark.parametrize("size", [1, 2])
def test_the_cache_holds_at_most_its_size(size: int) -> None:
    cache = ParseCache(size)
    for i in range(4):
        cache.parse(f"f{i}.yaml", f"users:\n  u{i}: {{}}\n")
        assert len(cache) <= size


def test_a_bare_name_that_becomes_a_robot_is_followed() -> None:
    """`ci` in a team names a user until the user goes and a robot of that name comes; the
    team's file is unchanged, so only the assembly can notice."""
    texts: dict[str, Any] = {
        "people.yaml": "users:\n  ci: {}\n  ann: {}\n",
        "teams.yaml": "teams:\n  dev: {owners: [ci]}\nnamespaces:\n  dev: {teams: [dev]}\n",
    }
    cache = ParseCache()
    engine = Engine(load_texts(texts, cache=cache).policy)
    assert engine.granted(Subject("user", "ci"), "repository", "dev/x", ["push"]) == ("push",)
    texts["people.yaml"] = f"users:\n  ann: {{}}\nrobots:\n  ci: {{token_sha256: '{'0' * 64}'}}\n"
    engine = Engine(load_texts(texts, cache=cache).policy, engine)
    assert engine.granted(Subject("robot", "ci"), "repository", "dev/x", ["push"]) == ("push",)
    assert engine.granted(Subject("user", "ci"), "repository", "dev/x", ["push"]) == ()
