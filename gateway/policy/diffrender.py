"""The permission diff as text: a Markdown report for pull requests, JSON, and sentences.

Renders the records `gateway.policy.diff` computes; decides nothing. docs/gitops.md
describes the output.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from gateway.policy.diff import Change, Notice, PolicyDiff, TeamChange

__all__ = ["SCHEMA", "notice_text", "render_json", "render_markdown", "to_data"]

SCHEMA = 1  # the JSON output's version
_MAX_ROWS = 60  # Markdown items, rows and teams shown before "... and N more"
_VISIBILITY = {
    "public": "anyone may pull, without signing in",
    "protected": "every signed-in user and robot may pull",
    "private": "only those granted may pull",
}


def _with_exceptions(change: Change, code: Callable[[str], str]) -> str:
    text = code(change.repositories)
    if change.exceptions:
        text += " except " + ", ".join(code(e) for e in change.exceptions)
    return text


def notice_text(notice: Notice, code: Callable[[str], str] = str) -> str:
    """A notice as a sentence; `code` marks up names (backticks in Markdown)."""
    n, name = notice, code(notice.name)
    if n.kind == "admin":
        if n.change == "added":
            return f"{name} becomes an admin: every action on every repository, and the catalog"
        return f"{name} is no longer an admin"
    if n.kind in ("user", "robot"):
        return f"{name} is new" if n.change == "added" else f"{name} is removed"
    if n.kind == "settings":
        if n.after == "true":
            return "personal namespaces are turned on: every user now owns NAME/**"
        return "personal namespaces are turned off: users no longer own NAME/**"
    if n.kind == "visibility":
        what = (
            f"the global namespace ({code('*')}, names without a slash)"
            if n.name == "*"
            else f"namespace {name}"
        )
        if n.change == "removed":
            return f"{what}, which was {n.before}, is removed: it is private now"
        was = f" (was {n.before})" if n.before else ""
        verb = "is new and" if n.change == "added" else "becomes"
        return f"{what} {verb} {n.after}{was}: {_VISIBILITY[n.after or 'private']}"
    if n.kind == "anonymous-pull":
        where = _with_exceptions(Change(n.name, (), (), n.exceptions), code)
        if n.change == "gained":
            return f"anyone, without signing in, can now pull {where}"
        return f"anonymous callers can no longer pull {where}"
    if n.kind == "restriction":
        if n.change == "added":
            return f"new restriction on {name}: {n.after}"
        if n.change == "removed":
            return f"restriction on {name} is removed (it reserved {n.before})"
        return f"restriction on {name} changes: {n.before} → {n.after}"
    if n.kind == "workload":
        if n.change == "added":
            return f"new workload {name}: CI jobs of {code(n.after or '')} sign in as it"
        if n.change == "removed":
            return f"workload {name} is removed: its CI jobs ({code(n.before or '')}) are refused"
        return (
            f"workload {name} takes other CI jobs: {code(n.before or '')} → {code(n.after or '')}"
        )
    if n.kind == "webhook":
        if n.change == "added":
            return f"new webhook {name} sends events out: {code(n.after or '')}"
        if n.change == "removed":
            return f"webhook {name} is removed: it sent {code(n.before or '')}"
        return f"webhook {name} changes: {code(n.before or '')} → {code(n.after or '')}"
    return f"{n.kind} {name} {n.change}"  # pragma: no cover


def to_data(diff: PolicyDiff) -> dict[str, Any]:
    """The diff as plain data: the JSON output, schema described in docs/gitops.md."""

    def change(c: Change) -> dict[str, Any]:
        return {
            "repositories": c.repositories,
            "except": list(c.exceptions),
            "gained": list(c.gained),
            "lost": list(c.lost),
        }

    def pairs(items: Iterable[tuple[str, str]], key: str) -> list[dict[str, str]]:
        return [{key: a, "role": b} for a, b in items]

    def moves(items: Iterable[tuple[str, str, str]], key: str) -> list[dict[str, str]]:
        return [{key: a, "from": b, "to": c} for a, b, c in items]

    return {
        "schema": SCHEMA,
        "from": diff.old_revision,
        "to": diff.new_revision,
        "changed": diff.changed,
        "access_changed": diff.access_changed,
        "attention": [
            {
                "kind": n.kind,
                "name": n.name,
                "change": n.change,
                "before": n.before,
                "after": n.after,
                "except": list(n.exceptions),
                "message": notice_text(n),
            }
            for n in diff.attention
        ],
        "subjects": [
            {"subject": s.subject, "status": s.status, "access": [change(c) for c in s.access]}
            for s in diff.subjects
        ],
        "teams": [
            {
                "team": t.team,
                "status": t.status,
                "joined": pairs(t.joined, "member"),
                "left": pairs(t.left, "member"),
                "roles_changed": moves(t.roles_changed, "member"),
                "ldap_joined": pairs(t.ldap_joined, "group"),
                "ldap_left": pairs(t.ldap_left, "group"),
                "ldap_roles_changed": moves(t.ldap_roles_changed, "group"),
                "namespaces_added": list(t.owns_added),
                "namespaces_removed": list(t.owns_removed),
                "access": [{"roles": list(roles), **change(c)} for roles, c in t.access],
            }
            for t in diff.teams
        ],
    }


def render_json(diff: PolicyDiff) -> str:
    return json.dumps(to_data(diff), indent=2)


def _code(text: str) -> str:
    return f"`{text}`"


def _who(subject: str, status: str) -> str:
    if subject == "anonymous":
        return "anyone (`anonymous`)"
    if subject == "authenticated":
        return "any signed-in user (`authenticated`)"
    return _code(subject) + (
        "" if status == "changed" else f" ({'new' if status == 'added' else 'removed'})"
    )


def _team_who(team: str, roles: tuple[str, ...]) -> str:
    held = "members" if roles == ("members",) else ", ".join(f"{role}s" for role in roles)
    return f"{_code('team:' + team)} {held}"


def render_markdown(diff: PolicyDiff) -> str:
    """The diff as a short Markdown report for a pull-request comment."""
    lines = [f"### Policy diff {_code(diff.old_revision)} → {_code(diff.new_revision)}", ""]
    if not diff.changed:
        return "\n".join([*lines, "No change in effective access."])
    if diff.attention:
        lines += ["#### Needs attention", ""]
        lines += [f"- {notice_text(n, _code)}" for n in diff.attention[:_MAX_ROWS]]
        lines += [*_more(len(diff.attention), "items"), ""]
    rows = [(_who(s.subject, s.status), c) for s in diff.subjects for c in s.access] + [
        (_team_who(t.team, roles), c) for t in diff.teams for roles, c in t.access
    ]
    lines += ["#### Access", ""]
    if rows:
        lines += ["| Who | Repositories | Gains | Loses |", "|---|---|---|---|"]
        for who, c in rows[:_MAX_ROWS]:
            gained, lost = ", ".join(c.gained), ", ".join(c.lost)
            lines.append(f"| {who} | {_with_exceptions(c, _code)} | {gained} | {lost} |")
        lines += _more(len(rows), "rows")
    else:
        lines.append("No change in effective access.")
    teams = [t for t in diff.teams if _team_facts(t)]
    if teams:
        lines += ["", "#### Teams", ""]
        for t in teams[:_MAX_ROWS]:
            status = (
                "" if t.status == "changed" else f" ({'new' if t.status == 'added' else 'removed'})"
            )
            lines.append(f"- {_code('team:' + t.team)}{status}")
            lines += [f"  - {fact}" for fact in _team_facts(t)]
        lines += _more(len(teams), "teams")
    return "\n".join(lines).rstrip()


def _more(count: int, what: str) -> list[str]:
    """The line that says how much a long list leaves out (PR comments have a size limit)."""
    if count <= _MAX_ROWS:
        return []
    return ["", f"… and {count - _MAX_ROWS} more {what} (see `--format json`)."]


def _team_facts(t: TeamChange) -> list[str]:
    def listing(items: Iterable[tuple[str, str]]) -> str:
        return ", ".join(f"{_code(a)} ({b})" for a, b in items)

    def moving(items: Iterable[tuple[str, str, str]]) -> str:
        return ", ".join(f"{_code(a)} {b} → {c}" for a, b, c in items)

    facts = []
    for label, items in (("joined", t.joined), ("left", t.left)):
        if items:
            facts.append(f"{label}: {listing(items)}")
    if t.roles_changed:
        facts.append(f"role changed: {moving(t.roles_changed)}")
    for label, items in (
        ("LDAP groups added", t.ldap_joined),
        ("LDAP groups removed", t.ldap_left),
    ):
        if items:
            facts.append(f"{label}: {listing(items)}")
    if t.ldap_roles_changed:
        facts.append(f"LDAP group role changed: {moving(t.ldap_roles_changed)}")
    if t.owns_added:
        facts.append("now owns " + ", ".join(_code(n) for n in t.owns_added))
    if t.owns_removed:
        facts.append("no longer owns " + ", ".join(_code(n) for n in t.owns_removed))
    return facts
