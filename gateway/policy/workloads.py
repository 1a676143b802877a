"""The policy's `workloads:` section: CI jobs that sign in with their own OIDC ID token.

A workload binds an issuer (a key of the gateway's trusted CI issuers: `github`, `gitlab`,
or one the operator adds), an audience, and conditions on the token's claims (exact values
or globs, one value or a list of alternatives) to a name that rules use as `workload:NAME`
(grants, team members, restrictions' `only:`), with its own `expires` and an optional
`only:` (the repository patterns it is confined to, whatever grants say). docs/oidc.md
describes it. Everything here is pure: reading, checking and matching claims.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.policy import yamlnodes as yn
from gateway.policy.model import ClaimCondition, Location, Policy, Workload
from gateway.policy.patterns import PatternError, compile_pattern, is_component
from gateway.policy.sections import Report, mapping, merge_named, read_named

# Issuers every gateway knows by key; the `oidc_ci_issuers` setting adds others (self-hosted
# GitLab, Buildkite, CircleCI, ...) or points these keys elsewhere.
BUILTIN_ISSUERS: dict[str, str] = {
    "github": "https://token.actions.githubusercontent.com",
    "gitlab": "https://gitlab.com",
}
FIELDS = ("issuer", "audience", "claims", "expires", "only", "description")
# Claims that say which repository or project a job runs for: a workload must bind one of
# them (or `sub`) to something narrower than "anything", or every job on the issuer matches.
IDENTIFYING = frozenset(
    {
        "sub",
        "repository",
        "repository_id",
        "repository_owner",
        "repository_owner_id",
        "job_workflow_ref",
        "project_path",
        "project_id",
        "namespace_id",
        "namespace_path",
        "organization_id",  # Buildkite, CircleCI
        "pipeline_slug",
    }
)
# Claims the token's envelope already decides: a condition on them is not a claim condition.
RESERVED = frozenset({"iss", "aud", "exp", "nbf", "iat", "jti"})
_NUMERIC = frozenset(
    {"repository_id", "repository_owner_id", "project_id", "namespace_id", "user_id", "run_id"}
)
_CHOICES: dict[str, frozenset[str]] = {
    "ref_protected": frozenset({"true", "false"}),
    "ref_type": frozenset({"branch", "tag"}),
    "environment_protected": frozenset({"true", "false"}),
}
MAX_VALUE_LENGTH = 1024
MAX_CONDITIONS = 32


def read_workloads(node: yn.Node, file: str, report: Report) -> dict[str, Workload]:
    """The workloads of one file's `workloads:` mapping; every problem is reported."""
    found = read_named(node, "workload", file, report, _read_one)
    for workload in found.values():
        _check_conditions(workload, report)
    return found


def merge_workloads(files: Iterable[dict[str, Workload]], report: Report) -> dict[str, Workload]:
    """Every file's workloads together; a name defined twice is an error."""
    return merge_named(files, "workload", report)


def _read_one(
    name: str, where: Location, node: yn.Node, file: str, report: Report
) -> Workload | None:
    what = f"workload {name!r}"
    failed = False

    def error(at: Location, message: str) -> None:
        nonlocal failed
        failed = True
        report(at, "error", f"{what}: {message}")

    fields: dict[str, tuple[yn.Node, yn.Node]] = {}
    for key, key_node, value_node in mapping(node, what, file, report):
        if key not in FIELDS:
            hint = difflib.get_close_matches(key, FIELDS, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            error(
                yn.location(key_node, file),
                f"unknown key {key!r} (expected: {', '.join(FIELDS)}){suggestion}",
            )
        else:
            fields[key] = (key_node, value_node)
    issuer = _required_string(fields, "issuer", where, file, error, "a trusted issuer's key")
    audience = _required_string(
        fields, "audience", where, file, error, "the aud the job asks its token for"
    )
    conditions = _conditions(fields, where, file, error)
    expires = None
    if "expires" in fields:
        value = _scalar(fields["expires"][1])
        if isinstance(value, dt.date):
            expires = value
        else:
            try:
                expires = dt.date.fromisoformat(str(value))
            except ValueError:
                error(yn.location(fields["expires"][1], file), "expires must be a date")
    only = _only(fields, file, error)
    description = ""
    if "description" in fields:
        description = str(_scalar(fields["description"][1]) or "")
    if failed or issuer is None or audience is None:
        return None
    return Workload(name, issuer, audience, conditions, expires, only, where, description)


def _required_string(
    fields: dict[str, tuple[yn.Node, yn.Node]],
    key: str,
    where: Location,
    file: str,
    error: Callable[[Location, str], None],
    meaning: str,
) -> str | None:
    if key not in fields:
        error(where, f"needs {key}: ({meaning})")
        return None
    value = _scalar(fields[key][1])
    if not isinstance(value, str) or not value.strip():
        error(yn.location(fields[key][1], file), f"{key} must be a non-empty string ({meaning})")
        return None
    return value


def _conditions(
    fields: dict[str, tuple[yn.Node, yn.Node]],
    where: Location,
    file: str,
    error: Callable[[Location, str], None],
) -> tuple[ClaimCondition, ...]:
    if "claims" not in fields:
        error(
            where,
            "needs claims: (conditions on the job's token, e.g. repository_id and ref); "
            "without them every job of the issuer would match",
        )
        return ()
    node = fields["claims"][1]
    if not isinstance(node, yn.MappingNode):
        error(yn.location(node, file), "claims must be a mapping of claim: value(s)")
        return ()
    out: list[ClaimCondition] = []
    seen: set[str] = set()
    for key_node, value_node in node.value:
        at = yn.location(key_node, file)
        claim = _scalar(key_node) if isinstance(key_node, yn.ScalarNode) else None
        if not isinstance(claim, str) or not claim:
            error(at, "each claim must be named by a plain string")
            continue
        if claim in seen:
            error(at, f"claim {claim!r} is repeated")
            continue
        seen.add(claim)
        if claim in RESERVED:
            error(
                at,
                f"{claim} is checked by the token's verification (issuer, audience, times), "
                "not by a claim condition: use issuer: and audience:",
            )
            continue
        items = value_node.value if isinstance(value_node, yn.SequenceNode) else [value_node]
        values: list[str] = []
        for item in items:
            text = _claim_text(item)
            if text is None:
                error(
                    yn.location(item, file),
                    f"claim {claim!r}: each value must be a string, number or true/false",
                )
                continue
            if len(text) > MAX_VALUE_LENGTH:
                error(yn.location(item, file), f"claim {claim!r}: value is too long")
                continue
            values.append(text)
        if isinstance(value_node, yn.SequenceNode) and not value_node.value:
            error(at, f"claim {claim!r} has an empty list of values: it never matches")
            continue
        if values:
            out.append(ClaimCondition(claim, tuple(values), at))
    if len(out) > MAX_CONDITIONS:
        error(yn.location(node, file), f"at most {MAX_CONDITIONS} claim conditions")
    if isinstance(node, yn.MappingNode) and not node.value:
        error(yn.location(node, file), "claims is empty: every job of the issuer would match")
    return tuple(out)


def _only(
    fields: dict[str, tuple[yn.Node, yn.Node]], file: str, error: Callable[[Location, str], None]
) -> tuple[str, ...] | None:
    if "only" not in fields:
        return None
    node = fields["only"][1]
    items = node.value if isinstance(node, yn.SequenceNode) else [node]
    out = []
    for item in items:
        text = _scalar(item) if isinstance(item, yn.ScalarNode) else None
        at = yn.location(item, file)
        if not isinstance(text, str) or not text:
            error(at, "each entry of only must be a repository pattern")
            continue
        try:
            compile_pattern(text)
        except PatternError as exc:
            error(at, str(exc))
            continue
        out.append(text)
    if isinstance(node, yn.SequenceNode) and not node.value:
        error(yn.location(node, file), "only is empty: the workload could reach no repository")
    return tuple(out)


def _claim_text(node: yn.Node) -> str | None:
    """A claim value as the text it is compared as (numbers and booleans as JSON writes them)."""
    if not isinstance(node, yn.ScalarNode):
        return None
    value = yn.scalar(node)
    return claim_text(value)


def claim_text(value: Any) -> str | None:
    """A claim's value as text: strings as they are, booleans `true`/`false`, integers in
    decimal; anything else (lists, objects, floats, null) has no text and matches nothing."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    return None


def _scalar(node: yn.Node) -> Any:
    return yn.scalar(node) if isinstance(node, yn.ScalarNode) else None


# -- matching ----------------------------------------------------------------------------


def _glob(value: str) -> re.Pattern[str]:
    """`*` stands for any characters (`/` included); everything else is itself."""
    return re.compile(".*".join(re.escape(part) for part in value.split("*")), re.DOTALL)


@dataclass(frozen=True, slots=True)
class Matcher:
    """A workload's conditions compiled: exact values in a set, globs as expressions."""

    workload: Workload
    exact: tuple[tuple[str, frozenset[str], tuple[re.Pattern[str], ...]], ...]

    @classmethod
    def of(cls, workload: Workload) -> Matcher:
        parts = []
        for condition in workload.claims:
            exact = frozenset(v for v in condition.values if "*" not in v)
            globs = tuple(_glob(v) for v in condition.values if "*" in v)
            parts.append((condition.claim, exact, globs))
        return cls(workload, tuple(parts))

    def matches(self, claims: Mapping[str, Any]) -> bool:
        for claim, exact, globs in self.exact:
            text = claim_text(claims.get(claim))
            if text is None:
                return False
            if text in exact:
                continue
            if not any(g.fullmatch(text) for g in globs):
                return False
        return True

    def failed(self, claims: Mapping[str, Any]) -> list[str]:
        """The claims whose condition the token does not meet (for the refusal's text)."""
        return [
            claim
            for claim, exact, globs in self.exact
            if not _meets(claim_text(claims.get(claim)), exact, globs)
        ]


def _meets(text: str | None, exact: frozenset[str], globs: tuple[re.Pattern[str], ...]) -> bool:
    return text is not None and (text in exact or any(g.fullmatch(text) for g in globs))


def audience_matches(workload: Workload, audience: Any) -> bool:
    """Whether a token's `aud` (a string or a list of them) names the workload's audience."""
    if isinstance(audience, str):
        return audience == workload.audience
    if isinstance(audience, list):
        return workload.audience in audience
    return False


def matching(
    policy: Policy,
    issuer_key: Callable[[Workload], bool],
    audience: Any,
    claims: Mapping[str, Any],
    matchers: Mapping[str, Matcher] | None = None,
) -> list[Workload]:
    """The workloads of `policy` whose issuer passes `issuer_key`, whose audience the token
    names, and whose every claim condition the claims meet, in the policy's order."""
    found = []
    for name, workload in policy.workloads.items():
        if not issuer_key(workload) or not audience_matches(workload, audience):
            continue
        matcher = matchers.get(name) if matchers is not None else None
        if (matcher or Matcher.of(workload)).matches(claims):
            found.append(workload)
    return found


# -- checks ------------------------------------------------------------------------------


def check_issuers(policy: Policy, issuers: Mapping[str, str], report: Report) -> None:
    """`check`'s look at the workloads with the gateway's settings: every issuer key must be
    one the gateway trusts (`issuers`: the built-ins and the `oidc_ci_issuers` setting)."""
    for workload in policy.workloads.values():
        if workload.issuer in issuers:
            continue
        hint = difflib.get_close_matches(workload.issuer, issuers, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        report(
            workload.location,
            "error",
            f"workload {workload.name!r}: unknown issuer {workload.issuer!r}: the gateway "
            f"trusts {', '.join(sorted(issuers))} (add NAME=URL to the oidc_ci_issuers "
            f"setting){suggestion}",
        )


def _check_conditions(workload: Workload, report: Report) -> None:
    """Conditions that can never match, and bindings so loose that every job (or the jobs of
    every repository) of the issuer would match: errors, so no such policy is ever served."""
    what = f"workload {workload.name!r}"

    def error(at: Location, message: str) -> None:
        report(at, "error", f"{what}: {message}")

    github = workload.issuer == "github"
    binding = False
    for condition in workload.claims:
        claim = condition.claim
        for value in condition.values:
            never = _never(claim, value, github)
            if never:
                error(
                    condition.location, f"claim {claim!r} value {value!r} can never match: {never}"
                )
        loose = all(set(v) <= {"*"} for v in condition.values)
        if claim == "sub" and loose:
            error(
                condition.location,
                "a sub pattern that matches everything binds nothing: name the repository or "
                "project in it, e.g. repo:ORG/REPO:ref:refs/heads/main",
            )
        if claim in IDENTIFYING and not loose:
            binding = True
    if workload.claims and not binding:
        error(
            workload.location,
            "no condition names a repository or project (one of "
            + ", ".join(sorted(IDENTIFYING))
            + "): jobs of every repository on the issuer would match",
        )


def _never(claim: str, value: str, github: bool) -> str:
    """Why a condition's value can never be a token's claim, or ''."""
    literal = value.replace("*", "")
    if claim in _NUMERIC and "*" not in value and not value.isdigit():
        return f"{claim} is a number"
    if claim in _CHOICES and "*" not in value and value not in _CHOICES[claim]:
        return f"{claim} is one of {', '.join(sorted(_CHOICES[claim]))}"
    if github and claim == "ref" and not value.startswith(("refs/", "*")):
        return "GitHub's ref is a full reference such as refs/heads/main or refs/tags/v1"
    if github and claim == "repository" and "/" not in literal and "*" not in value:
        return "GitHub's repository is OWNER/NAME"
    if value != value.strip():
        return "it has spaces at an end"
    return ""


def issuer_url(workload: Workload, issuers: Mapping[str, str]) -> str | None:
    """The URL of a workload's issuer: the operator's setting first, then the built-ins."""
    return issuers.get(workload.issuer) or BUILTIN_ISSUERS.get(workload.issuer)


def trusted_issuers(text: str) -> dict[str, str]:
    """The `oidc_ci_issuers` setting (`NAME=URL,NAME=URL`) with the built-ins under it;
    ValueError for a malformed entry."""
    found = dict(BUILTIN_ISSUERS)
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, url = part.partition("=")
        name, url = name.strip(), url.strip().rstrip("/")
        if not sep or not is_component(name) or not url.startswith(("https://", "http://")):
            raise ValueError(f"{part!r}: expected NAME=https://ISSUER")
        found[name] = url
    return found


__all__ = [
    "BUILTIN_ISSUERS",
    "Matcher",
    "audience_matches",
    "check_issuers",
    "claim_text",
    "issuer_url",
    "matching",
    "merge_workloads",
    "read_workloads",
    "trusted_issuers",
]
