"""The policy's own tests: `tests/*.yaml` files of cases that `check` runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.policy import yamlnodes as yn
from gateway.policy.engine import Engine
from gateway.policy.load import Problem, read_yaml_files
from gateway.policy.model import Location, Subject
from gateway.policy.workloads import BUILTIN_ISSUERS, Matcher, audience_matches

_FIELDS = ("as", "scope", "granted", "description")


@dataclass(frozen=True, slots=True)
class Case:
    subject: Subject
    type: str
    name: str
    actions: tuple[str, ...]
    granted: frozenset[str]
    location: Location
    # `as: {oidc: {iss, aud, claims}}`: a CI job's token, signed in as the workload it matches
    oidc: dict[str, Any] | None = None


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
            oidc = None
            if isinstance(fields["as"], yn.MappingNode):
                oidc = _oidc_binding(fields["as"])
                if oidc is None:
                    error(
                        yn.location(fields["as"], file),
                        "as: must be a subject or {oidc: {iss: ISSUER, aud: AUDIENCE, claims: "
                        "{CLAIM: VALUE, ...}}}",
                    )
                    continue
            not_text = [k for k in ("as", "scope") if not isinstance(fields[k], yn.ScalarNode)]
            if oidc is not None:
                not_text.remove("as")
            if not_text:
                error(yn.location(fields[not_text[0]], file), f"{not_text[0]} must be one value")
                continue
            try:
                subject = (
                    Subject("workload", "?")
                    if oidc is not None
                    else Subject.parse(str(yn.scalar(fields["as"])))
                )
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
            cases.append(Case(subject, type_, name, actions, granted, loc, oidc))
    return cases, problems


def _oidc_binding(node: yn.MappingNode) -> dict[str, Any] | None:
    """`{oidc: {iss, aud, claims}}` as plain data, or None when it is not that shape."""
    data = yn_plain(node)
    inner = data.get("oidc") if isinstance(data, dict) and len(data) == 1 else None
    if not isinstance(inner, dict) or not isinstance(inner.get("iss"), str):
        return None
    if not isinstance(inner.get("claims", {}), dict) or set(inner) - {"iss", "aud", "claims"}:
        return None
    return inner


def yn_plain(node: yn.Node) -> Any:
    """A located node as plain Python data."""
    if isinstance(node, yn.MappingNode):
        return {str(yn_plain(k)): yn_plain(v) for k, v in node.value}
    if isinstance(node, yn.SequenceNode):
        return [yn_plain(item) for item in node.value]
    return yn.scalar(node) if isinstance(node, yn.ScalarNode) else None


def bound_workload(engine: Engine, oidc: dict[str, Any]) -> tuple[Subject | None, str]:
    """The workload a CI token with these `iss`, `aud` and claims would sign in as (None and
    why when none, or several, would match). `iss` is an issuer's key or its URL."""
    iss = str(oidc["iss"]).rstrip("/")
    claims = oidc.get("claims") or {}
    found = []
    for workload in engine.policy.workloads.values():
        if iss not in (workload.issuer, BUILTIN_ISSUERS.get(workload.issuer)):
            continue
        if "aud" in oidc and not audience_matches(workload, oidc["aud"]):
            continue
        if Matcher.of(workload).matches(claims):
            found.append(workload.name)
    if len(found) == 1:
        return Subject("workload", found[0]), ""
    if not found:
        return None, "no workload matches this token (it would be refused)"
    return None, f"several workloads match this token ({', '.join(found)}): it would be refused"


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
        if case.oidc is not None:
            subject, why = bound_workload(engine, case.oidc)
            if subject is None:
                if case.granted:
                    failures.append(
                        Problem(
                            case.location,
                            "error",
                            f"test failed: {why}; expected {sorted(case.granted)}",
                        )
                    )
                continue
            case = Case(subject, case.type, case.name, case.actions, case.granted, case.location)
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
