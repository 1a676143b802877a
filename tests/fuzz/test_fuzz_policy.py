"""The policy loader: a Policy or PolicyError (every problem at file:line:column), whatever
the files hold; never another exception."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.load import LoadResult, PolicyError, load_texts

from tests.fuzz.profiles import FUZZ
from tests.fuzz.strategies import hostile_text, json_values

SURROGATE = re.compile("[\ud800-\udfff]")

# What a policy file can hold: it is read as UTF-8, so never a lone surrogate (see
# test_a_lone_surrogate_is_a_policy_error for what the loader does with one).
file_text = hostile_text.filter(lambda text: not SURROGATE.search(text))
EXAMPLE = {
    path.name: path.read_text()
    for path in sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))
}
KEYS = [
    "settings", "users", "robots", "teams", "namespaces", "grants", "restrictions",
    "password", "admin", "full_name", "token_sha256", "expires", "description", "owners",
    "contributors", "viewers", "maintainers", "teams", "visibility", "to", "repositories",
    "actions", "role", "only", "personal_namespaces", "global_namespace", "ldap_groups",
    "group", "tokens", "public", "private", "protected", "alice", "bob", "platform",
]  # fmt: skip
words = st.one_of(st.sampled_from(KEYS), file_text)
scalars = st.one_of(
    words,
    st.sampled_from(["platform/**", "**", "*", "user:bob", "team:qa", "robot:release", "pull"]),
    st.integers(),
    st.booleans(),
    st.none(),
    st.dates(),
    st.sampled_from(["$2b$12$" + "a" * 53, "$argon2id$v=19$m=65536,t=3,p=4$x$y", "9" * 64]),
)
documents: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(words, children, max_size=5)
    ),
    max_leaves=30,
)


def dumped(value: Any) -> str:
    return yaml.safe_dump(value, allow_unicode=True)


def mutated(draw: st.DrawFn) -> str:
    """An example policy file with a few characters changed, cut or added."""
    text = draw(st.sampled_from(sorted(EXAMPLE.values())))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        added = draw(st.text(max_size=5).filter(lambda text: not SURROGATE.search(text)))
        text = text[:at] + added + text[at + draw(st.integers(0, 5)) :]
    return text


files = st.one_of(
    documents.map(dumped),
    st.composite(mutated)(),
    file_text,
    json_values(10).map(lambda value: yaml.safe_dump(value)),
    st.sampled_from(["a: &x [*x]", "&a [*a, *a]", "!!python/object:os.system {}", "{", "- - -"]),
)


@FUZZ
@given(st.dictionaries(st.sampled_from(["a.yaml", "b.yaml", "settings.yaml"]), files, max_size=3))
def test_the_loader_raises_only_policy_error(texts: dict[str, str]) -> None:
    try:
        result = load_texts(texts, today=dt.date(2025, 1, 1))
    except PolicyError as exc:
        assert exc.problems
        return
    assert isinstance(result, LoadResult)


def test_a_lone_surrogate_is_a_policy_error() -> None:
    # Found by this fuzzer: libyaml raised UnicodeEncodeError (only a caller of load_texts
    # can pass one: files are read as UTF-8).
    with pytest.raises(PolicyError):
        load_texts({"a.yaml": "users:\n  \udcff: {}\n"})
