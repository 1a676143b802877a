"""Parse and format registry token scopes (`type[(class)]:name:actions`)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.policy.patterns import MAX_REPOSITORY_NAME_LENGTH, is_repository_name

__all__ = [
    "MAX_REPOSITORY_NAME_LENGTH",
    "Scope",
    "ScopeError",
    "format_scope",
    "is_valid_repository_name",
    "parse_scope",
    "parse_scopes",
]

# Generous bound for one scope: a maximal repository name plus type, class and actions fits
# easily; anything longer is garbage and is refused before any regex runs on it.
MAX_SCOPE_LENGTH = 1024

_TYPE = re.compile(r"(?P<type>[a-z0-9]+)(?:\((?P<class>[a-zA-Z0-9]+)\))?")
# Other resource types (e.g. `registry:catalog`) have no name grammar; printable ASCII keeps
# control characters and whitespace out of tokens and logs.
_OTHER_NAME = re.compile(r"[\x21-\x7e]+")
_ACTION = re.compile(r"\*|[a-z]+(?:[-_][a-z]+)*")


class ScopeError(ValueError):
    """A scope string that does not follow `type[(class)]:name:actions`."""


@dataclass(frozen=True, slots=True)
class Scope:
    """One requested resource and the actions asked on it."""

    type: str
    name: str
    actions: tuple[str, ...]
    type_class: str | None = None

    def __post_init__(self) -> None:
        # Canonical actions make equal scopes compare equal however they were written.
        object.__setattr__(self, "actions", tuple(sorted(set(self.actions))))

    def resource(self) -> tuple[str, str]:
        """The (type, name) pair the registry matches access entries on."""
        return (self.type, self.name)


# The repository-name grammar is the policy library's; this name stays for its importers.
is_valid_repository_name = is_repository_name


def _quote(text: str) -> str:
    # Keep error messages (which end up in logs and HTTP bodies) bounded.
    return repr(text if len(text) <= 80 else text[:77] + "...")


@functools.lru_cache(maxsize=4096)
def parse_scope(text: str) -> Scope:
    """Parse one scope such as `repository:library/alpine:pull,push`.

    Cached: clients ask for the same few scopes again and again, and a Scope is immutable
    (errors are not cached: they are raised again).
    """
    if len(text) > MAX_SCOPE_LENGTH:
        raise ScopeError(f"invalid scope {_quote(text)}: longer than {MAX_SCOPE_LENGTH} characters")
    first, last = text.find(":"), text.rfind(":")
    if first < 0 or first == last:
        raise ScopeError(
            f"invalid scope {_quote(text)}: expected 'type:name:actions', "
            "e.g. 'repository:library/alpine:pull'"
        )
    type_text, name, actions_text = text[:first], text[first + 1 : last], text[last + 1 :]

    type_match = _TYPE.fullmatch(type_text)
    if type_match is None:
        raise ScopeError(
            f"invalid scope {_quote(text)}: resource type {_quote(type_text)} must be "
            "lower-case letters and digits, optionally followed by '(class)'"
        )
    resource_type = type_match["type"]

    if not name:
        raise ScopeError(f"invalid scope {_quote(text)}: the resource name is empty")
    if resource_type == "repository":
        if len(name) > MAX_REPOSITORY_NAME_LENGTH:
            raise ScopeError(
                f"invalid scope {_quote(text)}: repository name is {len(name)} characters, "
                f"at most {MAX_REPOSITORY_NAME_LENGTH} are allowed"
            )
        if not is_valid_repository_name(name):
            raise ScopeError(
                f"invalid scope {_quote(text)}: repository name {_quote(name)} must be "
                "lower-case components of letters and digits separated by '.', '_', '__' "
                "or '-', joined by '/'"
            )
    elif not _OTHER_NAME.fullmatch(name):
        raise ScopeError(
            f"invalid scope {_quote(text)}: resource name {_quote(name)} contains "
            "whitespace or non-ASCII characters"
        )

    if not actions_text:
        raise ScopeError(f"invalid scope {_quote(text)}: no actions after the last ':'")
    actions = actions_text.split(",")
    for action in actions:
        if not _ACTION.fullmatch(action):
            raise ScopeError(
                f"invalid scope {_quote(text)}: action {_quote(action)} must be '*' or "
                "lower-case letters (actions are separated by ',')"
            )
    return Scope(resource_type, name, tuple(actions), type_match["class"])


def parse_scopes(values: Iterable[str], *, max_scopes: int = 100) -> list[Scope]:
    """Parse repeated and space-separated scopes, merging those on the same resource."""
    merged: dict[tuple[str, str], Scope] = {}
    count = 0
    for value in values:
        for text in value.split():
            count += 1
            # Counted before merging so a flood of duplicates is refused, not parsed.
            if count > max_scopes:
                raise ScopeError(f"too many scopes: at most {max_scopes} per request")
            scope = parse_scope(text)
            seen = merged.get(scope.resource())
            if seen is not None:
                # The first spelling's class wins; the token carries only the bare type.
                scope = Scope(seen.type, seen.name, seen.actions + scope.actions, seen.type_class)
            merged[scope.resource()] = scope
    return list(merged.values())


@functools.lru_cache(maxsize=4096)
def format_scope(scope: Scope) -> str:
    """Render a scope back to its `type[(class)]:name:actions` text."""
    type_text = f"{scope.type}({scope.type_class})" if scope.type_class else scope.type
    return f"{type_text}:{scope.name}:{','.join(scope.actions)}"
