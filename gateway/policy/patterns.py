"""Repository patterns: `*` matches within one path component, `**` zero or more components.

`X/**` matches `X` itself as well as everything below it, in grants and restrictions alike:
a restriction on `platform/prod/**` protects the repository `platform/prod` too.
"""

from __future__ import annotations

import re
from functools import lru_cache

# The repository-name grammar of distribution's reference package, without a host part: the
# one definition in the gateway (token scopes, the catalog and the UI use it too).
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
REPOSITORY_NAME = re.compile(rf"{_COMPONENT.pattern}(?:/{_COMPONENT.pattern})*")
MAX_REPOSITORY_NAME_LENGTH = 255  # reference.NameTotalLengthMax
# What a pattern component may hold: the component alphabet plus '*' as a wildcard.
_GLOB_COMPONENT = re.compile(r"[a-z0-9._*-]+")


class PatternError(ValueError):
    """A repository pattern that cannot be compiled; the message says why."""


def is_repository_name(name: str) -> bool:
    """Whether `name` is a valid repository name in the distribution grammar."""
    return len(name) <= MAX_REPOSITORY_NAME_LENGTH and REPOSITORY_NAME.fullmatch(name) is not None


def is_component(name: str) -> bool:
    """Whether `name` is one valid path component (a namespace, user or robot name)."""
    return _COMPONENT.fullmatch(name) is not None


def namespace_of(repository: str) -> str:
    """A repository's namespace: its first path component, or '' when it has no '/'."""
    head, sep, _ = repository.partition("/")
    return head if sep else ""


class Pattern:
    """A validated repository pattern. A literal name matches by comparison; a wildcard
    pattern compiles its regular expression on first use (a large policy has tens of
    thousands of patterns, most of which a given gateway never needs to match)."""

    __slots__ = ("_compiled", "_source", "prefix", "text")

    def __init__(self, text: str, source: str, prefix: str | None) -> None:
        self.text = text
        self.prefix = prefix  # the literal first component, when there is one (for indexing)
        self._source = source
        self._compiled: re.Pattern[str] | None = None

    @property
    def regex(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = re.compile(self._source)
        return self._compiled

    def matches(self, repository: str) -> bool:
        if "*" not in self.text:
            return repository == self.text
        return self.regex.fullmatch(repository) is not None

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


@lru_cache(maxsize=65536)
def compile_pattern(text: str) -> Pattern:
    """Validate a pattern such as `platform/*`, `team/**/cache` or `**`; PatternError if invalid.

    Cached: the loader validates every pattern and the engine then reuses the same objects."""
    if not isinstance(text, str) or not text:
        raise PatternError("a repository pattern must be a non-empty string")
    if len(text) > MAX_REPOSITORY_NAME_LENGTH:
        raise PatternError(
            f"pattern {text!r} is longer than {MAX_REPOSITORY_NAME_LENGTH} characters"
        )
    segments = text.split("/")
    parts: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment == "**":
            if i > 0 and segments[i - 1] == "**":
                raise PatternError(f"pattern {text!r}: '**/**' is redundant, use one '**'")
            if last == 0:
                parts.append(r".+")
            elif i == 0:
                parts.append(r"(?:[^/]+/)*")
            else:  # in the middle or at the end: zero or more (`team/**` matches `team`)
                parts.append(r"(?:/[^/]+)*")
            continue
        if not segment:
            raise PatternError(f"pattern {text!r} has an empty path component")
        if "**" in segment:
            raise PatternError(
                f"pattern {text!r}: '**' must be a whole path component, as in 'team/**'"
            )
        if not _GLOB_COMPONENT.fullmatch(segment):
            raise PatternError(
                f"pattern {text!r}: component {segment!r} may hold only lower-case letters, "
                "digits, '.', '_', '-' and '*'"
            )
        if "*" not in segment and not _COMPONENT.fullmatch(segment):
            raise PatternError(
                f"pattern {text!r}: {segment!r} is not a valid repository path component"
            )
        body = "[^/]*".join(re.escape(piece) for piece in segment.split("*"))
        # No separator at the start, nor right after a leading '**' (its group ends in '/').
        sep = "" if i == 0 or (i == 1 and segments[0] == "**") else "/"
        parts.append(sep + body)
    first = segments[0]
    prefix = first if "*" not in first else None
    return Pattern(text, "".join(parts), prefix)
