"""A server freezes each policy out of the cyclic collector's reach as soon as it is built
(`collector.building`). That is sound only if nothing a load builds is in a reference cycle,
for a frozen cycle is never freed: these tests hold a load, a failed load and the decisions
of a loaded policy (which compile its index) to that, and a server's frozen objects to a
constant count over reloads."""

from __future__ import annotations

import gc
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import collector
from gateway.policy.engine import Engine
from gateway.policy.load import PolicyError, load_texts
from gateway.policy.model import Subject
from gateway.policy.source import PolicySource

from tests.support.policygen import generate_spec, render

EXAMPLE = Path(__file__).resolve().parents[1] / "policies"
GRANT = """  - to: [authenticated]
    repositories: ["edit-{i}/**/cache", "**/tools-{i}", "edit-{i}/*/x-*"]
    actions: [pull]
"""


@pytest.fixture
def no_collection() -> Iterator[None]:
    """The cyclic collector off, and nothing left for it when the test starts."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def decide_many(engine: Engine, rng: random.Random) -> None:
    """Decisions over names that meet literal, `*`, `**` and glob patterns, enough to
    compile many groups of the index and to let the automata grow and start afresh."""
    users = list(engine.policy.users)
    namespaces = [*engine.policy.namespaces, "platform", "edit-1", "x"]
    tails = ["cache", "tools-1", "x-api", "prod", "a/b/cache", "prod/app", "y"]
    for _ in range(3000):
        name = f"{rng.choice(namespaces)}/{rng.choice(tails)}"
        subject = Subject("user", rng.choice(users))
        engine.granted(subject, "repository", name, ["pull", "push"])


def test_the_example_policy_with_its_tests_and_decisions_leaves_no_cycle(
    no_collection: None, tmp_path: Path
) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "policies")
    PolicySource(tmp_path / "policies").reload()  # once for what importing leaves behind
    gc.collect()
    source = PolicySource(tmp_path / "policies")
    assert source.reload()  # the policy's own tests make decisions: the index compiles
    assert source.engine is not None
    decide_many(source.engine, random.Random(1))
    del source
    assert gc.collect() == 0


def test_a_large_policy_full_of_wildcards_leaves_no_cycle(no_collection: None) -> None:
    rng = random.Random(7)
    gc.collect()
    spec = generate_spec(rng, users=300, teams=40, namespaces=60, grants=600, wildcards=0.3)
    engine = Engine(load_texts(render(spec, rng)).policy)
    decide_many(engine, rng)
    del engine
    assert gc.collect() == 0


def test_a_rejected_policy_leaves_no_cycle(no_collection: None) -> None:
    texts = {
        "a.yaml": "users: {alice: {password: nope}}\ngrants: [{to: [bob], repositories: [x]}]\n",
        "b.yaml": "teams: {qa: {owners: [carol]}}\nnamespaces: [\n",
    }
    gc.collect()
    for _ in range(2):
        try:
            load_texts(texts)
        except PolicyError:
            pass
        else:
            raise AssertionError("the policy should be rejected")
    assert gc.collect() == 0


def test_reloads_keep_the_frozen_objects_at_one_policy(tmp_path: Path) -> None:
    """As `serve` runs: each reload freezes the new policy; the one it replaces, and the
    index its decisions compiled, are freed (a cycle among them would stay frozen)."""
    shutil.copytree(EXAMPLE, tmp_path / "policies")
    access = tmp_path / "policies" / "access.yaml"
    original = access.read_text()
    source = PolicySource(tmp_path / "policies", building=collector.building)
    rng = random.Random(3)
    counts = []
    try:
        for i in range(8):
            access.write_text(original.replace("grants:\n", "grants:\n" + GRANT.format(i=i)))
            assert source.reload()
            assert source.engine is not None
            # Built and frozen: no later collection walks the policy.
            assert not any(o is source.engine for o in gc.get_objects())
            decide_many(source.engine, rng)
            counts.append(gc.get_freeze_count())
    finally:
        gc.unfreeze()
    # The first reloads freeze what the first decisions cache for good (interned names);
    # from then on each reload frees as many frozen objects as it freezes.
    assert counts[-1] == counts[2], counts
