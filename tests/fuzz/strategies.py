"""Strategies for hostile input: text built from the pieces each grammar cares about, mixed
with anything at all (control characters, non-ASCII, surrogates, huge runs)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Characters every parser here treats specially, and some it must refuse.
SPECIAL = ":/()[],;=&+% \t\r\n\x00\x7f\x85\u2028#?@\\\"'*.-_"

pieces = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=SPECIAL, max_size=10),
    st.sampled_from(
        [
            "repository",
            "registry",
            "catalog",
            "library/alpine",
            "a" * 300,
            "pull",
            "push",
            "*",
            "..",
            "%00",
            "%0A",
            "%ff",
            "%",
            "+",
            "=",
            "&",
            "ÿ",
            "\udcff",
        ]
    ),
)


def joined(parts: st.SearchStrategy[str] = pieces, max_size: int = 12) -> st.SearchStrategy[str]:
    """Text made of `parts` glued together."""
    return st.lists(parts, max_size=max_size).map("".join)


hostile_text = st.one_of(st.text(), joined())

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any JSON value, nested a little."""
    return st.recursive(
        json_scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(hostile_text, children, max_size=4),
        ),
        max_leaves=max_leaves,
    )
