"""Repository patterns: `*` matches within one path component, `**` across components."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The distribution grammar for one path component, with '*' allowed as a wildcard.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_GLOB_COMPONENT = re.compile(r"[a-z0-9._*-]+")
REPOSITORY_NAME = re.compile(rf"{_COMPONENT.pattern}(?:/{_COMPONENT.pattern})*")
MAX_NAME = 255


class PatternError(ValueError):
    """A repository pattern that cannot be compiled; the message says why."""


def is_repository_name(name: str) -> bool:
    """Whether `name` is a valid repository name in the distribution grammar."""
    return len(name) <= MAX_NAME and REPOSITORY_NAME.fullmatch(name) is not None


def is_component(name: str) -> bool:
    """Whether `name` is one valid path component (a namespace, user or robot name)."""
    return _COMPONENT.fullmatch(name) is not None


def namespace_of(repository: str) -> str:
    """A repository's namespace: its first path component, or '' when it has no '/'."""
    head, sep, _ = repository.partition("/")
    return head if sep else ""


@dataclass(frozen=True, slots=True)
class Pattern:
    """A compiled repository pattern."""

    text: str
    regex: re.Pattern[str]
    prefix: str | None  # the literal first component, when there is one (for indexing)

    def matches(self, repository: str) -> bool:
        return self.regex.fullmatch(repository) is not None


def compile_pattern(text: str) -> Pattern:
    """Compile a pattern such as `platform/*`, `team/**/cache` or `**`; PatternError if invalid."""
    if not isinstance(text, str) or not text:
        raise PatternError("a repository pattern must be a non-empty string")
    if len(text) > MAX_NAME:
        raise PatternError(f"pattern {text!r} is longer than {MAX_NAME} characters")
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
            elif i == last:
                parts.append(r"(?:/[^/]+)+")
            else:
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
    return Pattern(text, re.compile("".join(parts)), prefix)
