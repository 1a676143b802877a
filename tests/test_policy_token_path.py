"""The token path decides without reasons: `Engine.granted` and `Engine.may_pull` build no
`Reason` and describe no rule, whatever the policy; `decide` (explain, the UI) does."""

from __future__ import annotations

import random
from pathlib import Path
from typing import NoReturn

import pytest

import gateway.policy.engine as engine_module
from gateway.policy.engine import Engine
from gateway.policy.load import load_directory, load_texts
from gateway.policy.model import ANONYMOUS_SUBJECT, Subject

from tests.support.policygen import generate_spec, render


def no_reasons(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("a reason was built on the token path")


@pytest.fixture(params=["example", "generated"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "example":
        return Engine(load_directory(Path("policies")).policy)
    spec = generate_spec(
        random.Random(3), users=40, teams=8, namespaces=12, grants=120, wildcards=0.2
    )
    return Engine(load_texts(render(spec)).policy)


def test_granted_and_may_pull_build_no_reasons(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = engine.policy
    subjects = [ANONYMOUS_SUBJECT, Subject("user", "nobody")]
    subjects += [Subject("user", name) for name in list(policy.users)[:10]]
    subjects += [Subject("robot", name) for name in list(policy.robots)[:5]]
    names = [f"{ns}/{app}" for ns in list(policy.namespaces)[:15] for app in ("api", "prod/x")]
    names += ["alpine", "a/b/c/cache", "tools"]
    expected = {
        (s, n): engine.decide(s, "repository", n, ["pull", "push", "delete"]).granted
        for s in subjects
        for n in names
    }
    monkeypatch.setattr(engine_module, "Reason", no_reasons)
    monkeypatch.setattr(engine_module, "_describe_grant", no_reasons)
    fresh = Engine(engine.policy)  # nothing remembered from the decisions above
    for (subject, name), granted in expected.items():
        assert fresh.granted(subject, "repository", name, ["pull", "push", "delete"]) == granted
        assert fresh.may_pull(subject, name) == ("pull" in granted)
    with pytest.raises(AssertionError, match="token path"):
        fresh.decide(subjects[2], "repository", names[0], ["pull"])
