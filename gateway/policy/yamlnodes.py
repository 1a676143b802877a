"""Reading YAML as located nodes, with YAML 1.2 scalars.

The policy loader needs the position of every value for its error messages. It composes
the YAML into nodes with libyaml (through PyYAML's C composer: ten times faster than a
pure-Python parser on a large policy) and resolves plain scalars itself by the YAML 1.2
core schema, so `yes` stays a string and `[team:qa]` is a list of one string.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.policy.model import Location

try:
    _Base: type[yaml.CSafeLoader] | type[yaml.SafeLoader] = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _Base = yaml.SafeLoader


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """Composes without resolving tags: `scalar` resolves plain scalars itself, so PyYAML's
    YAML 1.1 resolver (a regular expression per scalar) would only cost time (a quarter of
    composing a large policy)."""

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        return ""

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None


Node = yaml.Node
MappingNode = yaml.MappingNode
SequenceNode = yaml.SequenceNode
ScalarNode = yaml.ScalarNode

_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_INT = re.compile(r"[-+]?[0-9]+")
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
# The first characters of a plain scalar that may be anything but a string: a plain scalar
# starting otherwise, or any quoted or block scalar, is a string. `scalar` returns such a
# value as it is; `FileReader.string` and `strings` take it without calling `scalar` (1% of
# a large load), and tests/test_readfile_shortcuts.py holds them to `scalar`.
SPECIAL_START = frozenset("~nNtTfF0123456789+-")


@dataclass(frozen=True, slots=True)
class SyntaxProblem:
    """A document that is not YAML at all."""

    location: Location
    message: str


def compose(text: str, filename: str) -> Node | SyntaxProblem | None:
    """Compose one YAML document into nodes; None for an empty document."""
    try:
        loader = _Loader(text)
        try:
            node: Node | None = loader.get_single_node()
            return node
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        return SyntaxProblem(Location(filename, line, column), f"invalid YAML: {what}")
    except yaml.YAMLError as exc:
        return SyntaxProblem(Location(filename, 1, 1), f"invalid YAML: {exc}")
    except UnicodeEncodeError as exc:  # a lone surrogate: text no file read as UTF-8 can hold
        return SyntaxProblem(Location(filename, 1, 1), f"not valid text at character {exc.start}")


def location(node: Node, filename: str) -> Location:
    """The 1-based position of a node."""
    mark = node.start_mark
    return Location(filename, mark.line + 1, mark.column + 1)


def scalar(node: ScalarNode) -> Any:
    """A scalar's value by the YAML 1.2 core schema (quoted scalars are always strings)."""
    value: str = node.value
    if node.style:  # quoted or block: a string whatever it looks like
        return value
    if value and value[0] not in SPECIAL_START:  # most values: names, no regex needed
        return value
    if value in _NULL:
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if _INT.fullmatch(value):
        return int(value)
    match = _DATE.fullmatch(value)
    if match:
        try:
            return dt.date(*(int(g) for g in match.groups()))
        except ValueError:
            return value
    return value


def kind(node: Node) -> str:
    """What a node is, in words for error messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    assert isinstance(node, ScalarNode)  # what is neither a mapping nor a list
    value = scalar(node)
    if value is None:
        return "empty"
    if value == "":
        return "an empty string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, dt.date):
        return "a date"
    return "a string"


def mapping(
    node: Node, what: str, filename: str, error: Callable[[Location, str], None]
) -> Iterator[tuple[str, Node, Node]]:
    """The (key, key node, value node) triples of a mapping (nothing for an empty value);
    anything else, keys that are not plain names, merge keys and repeated keys are reported
    through `error` and left out."""
    if isinstance(node, ScalarNode) and scalar(node) is None:
        return
    if not isinstance(node, MappingNode):
        error(location(node, filename), f"{what} must be a mapping, not {kind(node)}")
        return
    seen: dict[str, Node] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            error(location(key_node, filename), f"keys of {what} must be plain names")
            continue
        key = str(key_node.value)
        if key == "<<":
            error(
                location(key_node, filename),
                "YAML merge keys ('<<') are not supported in policy files",
            )
            continue
        if key in seen:
            first = seen[key].start_mark.line + 1
            error(
                location(key_node, filename),
                f"{what}: key {key!r} is repeated (first at line {first})",
            )
            continue
        seen[key] = key_node
        yield key, key_node, value_node
