"""Compact JSON text for the lines written on every request: log lines, audit fields, claims.

`ascii_json(value)` is `json.dumps(value, separators=(",", ":"), default=str)`: compact and
ASCII only, so that no character in a client's text (a line separator, DEL) can end or fake a
line for a reader that splits lines its own way. orjson makes it, about eight times faster
than the standard library; when orjson cannot (an integer past 64 bits, a lone surrogate) or
its text is not plain ASCII (it writes non-ASCII as UTF-8, not as escapes), the standard
library makes it instead. Either way the text means the same; the standard library's is what
any value with a non-ASCII character gets.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import orjson

# As the standard library does: non-string keys become strings, and datetimes and dataclasses
# go to `default` (str) rather than orjson's own formats.
_OPTIONS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)
_STANDARD = json.JSONEncoder(default=str, separators=(",", ":")).encode  # made once


def ascii_json(value: Any) -> str:
    """`value` as compact JSON text, ASCII only (non-ASCII as \\u escapes), str() for
    anything JSON has no type for."""
    try:
        text = orjson.dumps(value, default=str, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one
        return _STANDARD(value)
    if text.isascii() and b"\x7f" not in text:
        return text.decode("ascii")
    return _STANDARD(value)


CACHED_LENGTH = 256  # longer strings are escaped every time: the cache stays small
_cached = functools.lru_cache(maxsize=1024)(ascii_json)


def cached_ascii_json(value: str | None) -> str:
    """`ascii_json(value)`, kept for the short strings that come with request after request
    (clients, user agents, methods, paths: the audit line and the access line share them).
    A client choosing long paths cannot fill the cache with them: at most 1,024 entries of
    `CACHED_LENGTH` characters each."""
    if value is not None and len(value) > CACHED_LENGTH:
        return ascii_json(value)
    return _cached(value)
