"""ascii_json: the standard library's compact JSON text, made faster, never less safe."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.jsontext import CACHED_LENGTH, _cached, ascii_json, cached_ascii_json


def standard(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


# JSON values without floats (whose shortest spelling the two libraries may write apart:
# 1e+16 and 1e16), with any text: control characters, DEL, line separators, non-ASCII,
# lone surrogates, and integers past 64 bits.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_the_text_is_the_standard_library_s(value: Any) -> None:
    assert ascii_json(value) == standard(value)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_means_the_same(value: float) -> None:
    assert json.loads(ascii_json({"v": value})) == {"v": value}


def test_no_character_of_a_client_s_text_reaches_the_line_raw() -> None:
    text = ascii_json({"user_agent": "a\u2028b\u2029c\x7fd\x85e\ne\u00e9"})
    assert text.isascii() and "\x7f" not in text and "\n" not in text
    assert json.loads(text) == {"user_agent": "a\u2028b\u2029c\x7fd\x85e\ne\u00e9"}


def test_what_json_has_no_type_for_is_written_as_its_str() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    when = dt.datetime(2026, 12, 3, 14, 0, tzinfo=dt.UTC)
    value = {"when": when, "point": Point(1), "path": object.__name__, 1: "key"}
    assert ascii_json(value) == standard(value)


def test_only_short_strings_are_kept_in_the_cache() -> None:
    """A client sending long paths cannot fill the cache with them."""
    _cached.cache_clear()
    long, short = "/" + "\u00e9" * CACHED_LENGTH, "/" + "\u00e9" * (CACHED_LENGTH - 1)
    assert cached_ascii_json(long) == ascii_json(long)
    assert _cached.cache_info().currsize == 0
    assert cached_ascii_json(short) == ascii_json(short)
    assert cached_ascii_json(None) == "null"
    assert _cached.cache_info().currsize == 2
