"""Explain decisions: every rule behind each allowed or denied action, as data or text."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.policy.engine import Decision, Engine
from gateway.policy.model import Policy, Subject
from gateway.policy.tests import parse_case_scope


def decision_data(decision: Decision) -> dict[str, Any]:
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
                "reasons": [
                    {
                        "effect": r.effect,
                        "rule": r.rule,
                        "location": str(r.location.short)
                        if r.location and r.location.line
                        else None,
                    }
                    for r in d.reasons
                ],
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
            resources.append(decision_data(engine.decide(subject, type_, name, actions)))
    return {"subject": str(subject), "revision": engine.revision, "resources": resources}


def render_text(result: dict[str, Any]) -> str:
    """The explanation as aligned text for a terminal."""
    lines = [f"subject {result['subject']}, policy revision {result['revision']}"]
    for resource in result["resources"]:
        lines.append(f"{resource['type']}:{resource['name']}")
        for action in resource["actions"]:
            verdict = "allowed" if action["allowed"] else "denied"
            for i, reason in enumerate(action["reasons"]):
                where = f" ({reason['location']})" if reason["location"] else ""
                head = f"  {action['action']:<7} {verdict:<8}" if i == 0 else " " * 18
                lines.append(f"{head} {reason['rule']}{where}")
        granted = ",".join(resource["granted"]) or "(nothing)"
        lines.append(f"  granted: {granted}")
    return "\n".join(lines)
