"""Explain decisions: every rule behind each allowed or denied action, and the membership that
brought the subject under each rule, as data or text."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.policy.engine import Decision, Engine, Reason
from gateway.policy.model import AUTHENTICATED, Policy, Subject
from gateway.policy.tests import parse_case_scope


def memberships(engine: Engine, subject: Subject, reason: Reason) -> list[dict[str, Any]]:
    """How `subject` is among the principal a reason's rule names: each listed membership of a
    team, each LDAP or OIDC group mapped to it, or being signed in (for `authenticated`);
    for a workload, the claims that bind it; empty when the rule names nobody."""
    via = reason.via
    if via is None or not engine.known(subject):
        return []
    who = subject.name
    workload = engine.policy.workloads.get(who) if subject.kind == "workload" else None
    if workload is not None and via == subject.principal:
        claims = ", ".join(f"{c.claim}={'|'.join(c.values)}" for c in workload.claims)
        where = workload.location.short if workload.location.line else None
        return [
            {
                "principal": str(via),
                "through": "oidc_claims",
                "role": None,
                "group": None,
                "location": where,
                "text": f"a job of issuer {workload.issuer} with {claims} is {via}",
            }
        ]
    if via == AUTHENTICATED:
        return [
            {
                "principal": str(via),
                "through": "signed_in",
                "role": None,
                "group": None,
                "location": None,
                "text": f"{who} is signed in",
            }
        ]
    team = engine.policy.teams.get(via.name) if via.kind == "team" else None
    if team is None:
        return []
    where = team.location.short if team.location.line else None
    found: list[dict[str, Any]] = []
    role = team.role_of(subject.principal)
    if role is not None:
        found.append(
            {
                "principal": str(via),
                "through": "member",
                "role": role.value,
                "group": None,
                "location": where,
                "text": f"{who} is a member of {via}",
            }
        )
    groups = {group.lower() for group in subject.groups}
    for group, role in team.ldap_groups:
        if group.lower() in groups:
            found.append(
                {
                    "principal": str(via),
                    "through": "ldap_group",
                    "role": role.value,
                    "group": group,
                    "location": where,
                    "text": f"{who} is in {via} through LDAP group {group}",
                }
            )
    for group, role in team.oidc_groups:
        if group in subject.oidc_groups:
            found.append(
                {
                    "principal": str(via),
                    "through": "oidc_group",
                    "role": role.value,
                    "group": group,
                    "location": where,
                    "text": f"{who} is in {via} through OIDC group {group}",
                }
            )
    return found


def reason_data(reason: Reason, engine: Engine, subject: Subject) -> dict[str, Any]:
    """A reason as plain data: its effect, rule, `file:line`, and the subject's memberships."""
    return {
        "effect": reason.effect,
        "rule": reason.rule,
        "location": str(reason.location.short)
        if reason.location and reason.location.line
        else None,
        "memberships": memberships(engine, subject, reason),
    }


def decision_data(decision: Decision, engine: Engine, subject: Subject) -> dict[str, Any]:
    """A decision as plain data (for JSON and templates)."""
    return {
        "type": decision.type,
        "name": decision.name,
        "requested": list(decision.requested),
        "granted": list(decision.granted),
        "actions": [
            {
                "action": d.action,
                "allowed": d.allowed,
                "reasons": [reason_data(r, engine, subject) for r in d.reasons],
            }
            for d in decision.actions
        ],
    }


def explain(policy: Policy | Engine, subject: Subject, scopes: Iterable[str]) -> dict[str, Any]:
    """Decide each scope for the subject; ValueError on a malformed scope."""
    engine = policy if isinstance(policy, Engine) else Engine(policy)
    resources = []
    for text in scopes:
        for part in text.split():
            type_, name, actions = parse_case_scope(part)
            decision = engine.decide(subject, type_, name, actions)
            resources.append(decision_data(decision, engine, subject))
    return {"subject": str(subject), "revision": engine.revision, "resources": resources}


def render_text(result: dict[str, Any]) -> str:
    """The explanation as aligned text for a terminal."""
    lines = [f"subject {result['subject']}, policy revision {result['revision']}"]
    for resource in result["resources"]:
        lines.append(f"{resource['type']}:{resource['name']}")
        for action in resource["actions"]:
            verdict = "allowed" if action["allowed"] else "denied"
            for i, reason in enumerate(action["reasons"]):
                how = "; ".join(m["text"] for m in reason.get("memberships", ()))
                through = f" ({how})" if how else ""
                where = f" ({reason['location']})" if reason["location"] else ""
                head = f"  {action['action']:<7} {verdict:<8}" if i == 0 else " " * 18
                lines.append(f"{head} {reason['rule']}{through}{where}")
        granted = ",".join(resource["granted"]) or "(nothing)"
        lines.append(f"  granted: {granted}")
    return "\n".join(lines)
