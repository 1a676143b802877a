"""Sections of named entries (`webhooks:`, `workloads:`): reading one file's mapping of names,
and putting every file's entries together, with the problems reported where they are."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from gateway.policy import yamlnodes as yn
from gateway.policy.model import Location
from gateway.policy.patterns import is_component

# (where, severity "error" | "warning", message)
Report = Callable[[Location, str, str], None]


class Located(Protocol):
    @property
    def location(self) -> Location: ...


E = TypeVar("E", bound=Located)
# Reads one entry: (its name, where its name is, its value node, the file, report).
ReadOne = Callable[[str, Location, yn.Node, str, Report], "E | None"]


def mapping(
    node: yn.Node, what: str, file: str, report: Report
) -> Iterable[tuple[str, yn.Node, yn.Node]]:
    """yamlnodes.mapping, its problems reported as errors."""
    return yn.mapping(node, what, file, lambda at, message: report(at, "error", message))


def read_named(
    node: yn.Node, kind: str, file: str, report: Report, read_one: ReadOne[E]
) -> dict[str, E]:
    """The entries of one file's section (`kind` names one entry: "webhook"), each read by
    `read_one`, by name; a name that is not a policy name is an error."""
    out: dict[str, E] = {}
    for name, key, value in mapping(node, f"{kind}s", file, report):
        where = yn.location(key, file)
        if not is_component(name):
            report(
                where,
                "error",
                f"{kind} name {name!r} must be lower-case letters and digits, optionally "
                "joined by '.', '_' or '-'",
            )
            continue
        entry = read_one(name, where, value, file, report)
        if entry is not None:
            out[name] = entry
    return out


def merge_named(files: Iterable[dict[str, E]], kind: str, report: Report) -> dict[str, E]:
    """Every file's entries together; a name defined twice is an error."""
    seen: dict[str, E] = {}
    for found in files:
        for name, entry in found.items():
            first = seen.get(name)
            if first is not None:
                report(
                    entry.location,
                    "error",
                    f"{kind} {name!r} is defined twice (first at {first.location})",
                )
                continue
            seen[name] = entry
    return seen
