"""The permission diff between two policies without git: more kinds of change, and the shortcut
against asking every subject about every probe. Read from a real git history, and through the
command and the pre-commit hook: tests/realworld/test_diff.py."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from gateway.policy.diff import _Differ, diff_policies
from gateway.policy.diffrender import render_markdown
from gateway.policy.load import load_texts, policy_files
from gateway.policy.model import Policy

from tests.support.policygen import generate_spec, make_grant, make_restriction, render

EXAMPLE = Path(__file__).resolve().parents[1] / "policies"


# -- without git: more kinds of change -------------------------------------------------


def example_texts() -> dict[str, str]:
    return {Path(name).name: text for name, text in policy_files(EXAMPLE).items()}


def changed(edits: dict[str, tuple[str, str]]) -> tuple[Policy, Policy]:
    before = example_texts()
    after = dict(before)
    for name, (old, new) in edits.items():
        assert after[name].count(old) == 1, (name, old)
        after[name] = after[name].replace(old, new)
    return (
        load_texts(before, revision="before").policy,
        load_texts(after, revision="after").policy,
    )


def test_admin_and_restriction_changes_come_first() -> None:
    old, new = changed(
        {
            "people.yaml": (
                "    full_name: Dave Tester\n",
                "    full_name: Dave Tester\n    admin: true\n",
            ),
            "access.yaml": ("only: [robot:release, user:alice]", "only: [robot:release]"),
        }
    )
    assert render_markdown(diff_policies(old, new)) == textwrap.dedent(
        """\
        ### Policy diff `before` → `after`

        #### Needs attention

        - `user:dave` becomes an admin: every action on every repository, and the catalog
        - restriction on `platform/prod/**` changes: push, delete only for robot:release, user:alice → push, delete only for robot:release

        #### Access

        | Who | Repositories | Gains | Loses |
        |---|---|---|---|
        | `user:alice` | `platform/prod/**` |  | push, delete |
        | `user:dave` | `**` except `dave/**`, `platform/prod/**`, `qa/**` | push, delete |  |
        | `user:dave` | `<other>/**` | pull |  |
        | `user:dave` | `alice/**` | pull |  |
        | `user:dave` | `bob/**` | pull |  |
        | `user:dave` | `carol/**` | pull |  |
        | `user:dave` | `erin/**` | pull |  |"""
    )


def test_a_removed_user_loses_what_it_had_beyond_any_signed_in_user() -> None:
    old, new = changed(
        {
            "people.yaml": ("  bob:\n", "  bobby:\n"),
            "teams.yaml": (
                "contributors: [bob, robot:ci-deploy]",
                "contributors: [robot:ci-deploy]",
            ),
        }
    )
    diff = diff_policies(old, new)
    assert render_markdown(diff) == textwrap.dedent(
        """\
        ### Policy diff `before` → `after`

        #### Needs attention

        - `user:bob` is removed
        - `user:bobby` is new

        #### Access

        | Who | Repositories | Gains | Loses |
        |---|---|---|---|
        | `user:bob` (removed) | `bob/**` |  | pull, push, delete |
        | `user:bob` (removed) | `library/**` |  | push |
        | `user:bob` (removed) | `platform/**` |  | pull |
        | `user:bob` (removed) | `platform/**` except `platform/prod/**` |  | push |
        | `user:bobby` (new) | `bobby/**` | pull, push, delete |  |

        #### Teams

        - `team:platform`
          - left: `user:bob` (contributor)"""
    )


def test_a_team_change_is_reported_once_for_the_team_not_for_each_member() -> None:
    old, new = changed(
        {
            "teams.yaml": (
                "  library:\n",
                "  tools:\n    teams: [qa]\n  library:\n",
            ),
            "access.yaml": (
                "restrictions:",
                "  - to: [team:qa]\n    repositories: [platform/tools/*]\n    actions: [pull, push]\n\nrestrictions:",
            ),
        }
    )
    diff = diff_policies(old, new)
    assert [s.subject for s in diff.subjects] == []
    assert render_markdown(diff) == textwrap.dedent(
        """\
        ### Policy diff `before` → `after`

        #### Access

        | Who | Repositories | Gains | Loses |
        |---|---|---|---|
        | `team:qa` members | `platform/tools/*` | push |  |
        | `team:qa` owners | `tools/**` | pull, push, delete |  |
        | `team:qa` viewers | `tools/**` | pull |  |

        #### Teams

        - `team:qa`
          - now owns `tools`"""
    )


def test_global_namespace_and_settings_changes_are_called_out() -> None:
    old, new = changed(
        {
            "settings.yaml": (
                "  global_namespace: protected",
                "  global_namespace: public",
            )
        }
    )
    diff = diff_policies(old, new)
    assert [n.kind for n in diff.attention] == ["visibility", "anonymous-pull"]
    assert render_markdown(diff).splitlines()[4:6] == [
        "- the global namespace (`*`, names without a slash) becomes public (was protected): "
        "anyone may pull, without signing in",
        "- anyone, without signing in, can now pull `*`",
    ]


# -- the shortcut agrees with asking about everything ----------------------------------


def mutated(seed: int) -> tuple[Policy, Policy, Policy]:
    """A small generated policy, a changed copy, and the same policy shuffled and re-split."""
    rng = random.Random(seed)
    spec = generate_spec(
        rng,
        users=rng.randint(1, 10),
        teams=rng.randint(1, 4),
        namespaces=rng.randint(1, 5),
        grants=rng.randint(0, 10),
    )
    other = spec.copy()
    for _ in range(3):
        roll = rng.random()
        if roll < 0.25:
            other.grants.append(make_grant(rng, other))
        elif roll < 0.4:
            other.restrictions.append(make_restriction(rng, other))
        elif roll < 0.55:
            ns = rng.choice(other.names("namespaces"))
            other.namespaces[ns]["visibility"] = rng.choice(["public", "protected", "private"])
        elif roll < 0.7:
            team = rng.choice(other.names("teams"))
            key = rng.choice(["owners", "contributors", "viewers"])
            other.teams[team].setdefault(key, []).append(rng.choice(other.names("users")))
        elif roll < 0.85:
            user = rng.choice(other.names("users"))
            other.users[user]["admin"] = not other.users[user].get("admin", False)
        else:
            ns = rng.choice(other.names("namespaces"))
            other.namespaces[ns]["teams"] = [rng.choice(other.names("teams"))]
    return (
        load_texts(render(spec, rng)).policy,
        load_texts(render(other, rng)).policy,
        load_texts(render(spec, rng)).policy,
    )


@pytest.mark.parametrize("seed", range(40))
def test_the_shortcut_agrees_with_asking_every_subject_about_every_probe(seed: int) -> None:
    old, new, shuffled = mutated(seed)
    assert _Differ(old, new).diff() == _Differ(old, new, exhaustive=True).diff()
    assert not diff_policies(old, shuffled).changed


def test_a_large_policy_reshuffled_is_no_change_and_one_edit_is_found() -> None:
    rng = random.Random(5)
    spec = generate_spec(rng, users=600, teams=60, namespaces=120, grants=1200)
    old = load_texts(render(spec)).policy
    assert not diff_policies(old, load_texts(render(spec, rng)).policy).changed
    edited = spec.copy()
    ns = next(n for n, f in edited.namespaces.items() if f["visibility"] != "public")
    edited.namespaces[ns]["visibility"] = "public"
    diff = diff_policies(old, load_texts(render(edited, rng)).policy)
    assert [(n.kind, n.name) for n in diff.attention] == [
        ("visibility", ns),
        ("anonymous-pull", f"{ns}/**"),
    ]


def test_webhooks_added_moved_and_removed_need_attention() -> None:
    base = "namespaces:\n  library: {visibility: public}\n"
    hook = (
        "webhooks:\n  {name}:\n    url: {url}\n    events: [image.pushed]\n"
        "    repositories: ['library/**']\n    secret_env: HOOK_SECRET\n"
    )
    old = load_texts(
        {
            "p/a.yaml": base,
            "p/h.yaml": hook.format(name="deploy", url="https://ci.example.com/hook")
            + hook.format(name="chat", url="https://chat.example.com/hook")[len("webhooks:\n") :],
        },
        revision="old",
    ).policy
    new = load_texts(
        {
            "p/a.yaml": base,
            "p/h.yaml": hook.format(name="deploy", url="https://elsewhere.example.net/hook")
            + hook.format(name="audit", url="https://audit.example.com/in")[len("webhooks:\n") :],
        },
        revision="new",
    ).policy
    notices = {(n.kind, n.name, n.change) for n in diff_policies(old, new).attention}
    assert notices >= {
        ("webhook", "webhook:deploy", "changed"),
        ("webhook", "webhook:chat", "removed"),
        ("webhook", "webhook:audit", "added"),
    }
    text = render_markdown(diff_policies(old, new))
    assert "https://elsewhere.example.net/hook" in text
    assert "secret from env HOOK_SECRET" in text
    assert not [n for n in diff_policies(old, old).attention if n.kind == "webhook"]
