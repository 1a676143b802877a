"""The policy's own tests: `tests/*.yaml` files of cases that `check` runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.policy import yamlnodes as yn
from gateway.policy.engine import Engine
from gateway.policy.load import Problem, read_yaml_files
from gateway.policy.model import Location, Subject

_FIELDS = ("as", "scope", "granted", "description")


@dataclass(frozen=True, slots=True)
class Case:
    subject: Subject
    type: str
    name: str
    actions: tuple[str, ...]
    granted: frozenset[str]
    location: Location


def parse_case_scope(text: str) -> tuple[str, str, tuple[str, ...]]:
    """`type:name:actions` as in a token request; ValueError when malformed."""
    type_, sep, rest = text.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not (sep and sep2 and type_ and name and actions):
        raise ValueError(f"scope {text!r}: expected type:name:actions")
    return type_.split("(")[0], name, tuple(a for a in actions.split(",") if a)


def read_cases(texts: dict[str, str]) -> tuple[list[Case], list[Problem]]:
    """Parse case files; every malformed case is a located problem."""
    cases: list[Case] = []
    problems: list[Problem] = []

    def error(loc: Location, message: str) -> None:
        problems.append(Problem(loc, "error", message))

    for file in sorted(texts):
        root = yn.compose(texts[file], file)
        if root is None:
            continue
        if isinstance(root, yn.SyntaxProblem):
            error(root.location, root.message)
            continue
        if not isinstance(root, yn.SequenceNode):
            error(yn.location(root, file), "a policy test file must be a list of cases")
            continue
        for item in root.value:
            loc = yn.location(item, file)
            if not isinstance(item, yn.MappingNode):
                error(loc, "a test case must be a mapping with as, scope and granted")
                continue
            fields = {str(k.value): v for k, v in item.value}
            unknown = set(fields) - set(_FIELDS)
            missing = {"as", "scope", "granted"} - set(fields)
            if unknown or missing:
                error(loc, f"test case: unknown keys {sorted(unknown)}, missing {sorted(missing)}")
                continue
            not_text = [k for k in ("as", "scope") if not isinstance(fields[k], yn.ScalarNode)]
            if not_text:
                error(yn.location(fields[not_text[0]], file), f"{not_text[0]} must be one value")
                continue
            try:
                subject = Subject.parse(str(yn.scalar(fields["as"])))
                type_, name, actions = parse_case_scope(str(yn.scalar(fields["scope"])))
            except ValueError as exc:
                error(loc, str(exc))
                continue
            granted_node = fields["granted"]
            if isinstance(granted_node, yn.SequenceNode):
                odd = [n for n in granted_node.value if not isinstance(n, yn.ScalarNode)]
                if odd:
                    error(yn.location(odd[0], file), "each granted action must be one value")
                    continue
                granted = frozenset(str(yn.scalar(n)) for n in granted_node.value)
            else:
                value = yn.scalar(granted_node) if isinstance(granted_node, yn.ScalarNode) else 0
                if value is not None:
                    error(
                        yn.location(granted_node, file),
                        "granted must be a list of actions, [] for none",
                    )
                    continue
                granted = frozenset()
            cases.append(Case(subject, type_, name, actions, granted, loc))
    return cases, problems


def case_files(directory: Path) -> dict[str, str]:
    """The test files of a policy directory, by display name (read as `policy_files` reads
    the policy's: regular files only, size-limited, UTF-8; PolicyError otherwise)."""
    tests = Path(directory) / "tests"
    if not tests.is_dir() or tests.is_symlink():
        return {}
    return read_yaml_files(tests, lambda relative: True)


def run_cases(engine: Engine, cases: list[Case]) -> list[Problem]:
    """Decide every case; each mismatch is a problem at the case's location."""
    failures = []
    for case in cases:
        if case.subject.kind != "anonymous" and not engine.known(case.subject):
            failures.append(
                Problem(case.location, "error", f"test case: {case.subject} is not in the policy")
            )
            continue
        decision = engine.decide(case.subject, case.type, case.name, case.actions)
        got = frozenset(decision.granted)
        if got != case.granted:
            why = "; ".join(
                f"{d.action}: {'allowed' if d.allowed else 'denied'} by "
                + ", ".join(map(str, d.reasons))
                for d in decision.actions
            )
            failures.append(
                Problem(
                    case.location,
                    "error",
                    f"test failed: {case.subject} on {case.type}:{case.name} expected "
                    f"{sorted(case.granted)} but got {sorted(got)} ({why})",
                )
            )
    return failures
