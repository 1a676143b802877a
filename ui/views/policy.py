"""Pages about the policy: teams, who may do what where, the live status, and explain."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.health import health
from gateway.policy.engine import Engine
from gateway.policy.explain import explain as explain_scopes
from gateway.policy.explain import reason_data
from gateway.policy.model import ANONYMOUS_SUBJECT, REPOSITORY_ACTIONS, Role, Subject
from gateway.policy.patterns import is_repository_name
from ui.site import Site, Viewer, iso
from ui.views.catalog import GLOBAL, find_namespace

ROLES = (Role.OWNER, Role.CONTRIBUTOR, Role.VIEWER)


def in_policy(reason: dict[str, Any], base: str) -> dict[str, Any]:
    """An explained reason with its locations, and its memberships', relative to the policy
    directory (`access.yaml:12`, not where the files lie on the server)."""
    if reason["location"]:
        reason["location"] = relative(reason["location"], base)
    for membership in reason.get("memberships", ()):
        if membership["location"]:
            membership["location"] = relative(membership["location"], base)
    return reason


def relative(location: str, base: str) -> str:
    """`/srv/policies/access.yaml:12` -> `access.yaml:12`: where in the policy, not on disk."""
    prefix = base.rstrip("/") + "/"
    return location[len(prefix) :] if base and location.startswith(prefix) else location


def person(engine: Engine, subject: Subject) -> dict[str, Any]:
    """A user or robot as the pages show it."""
    policy = engine.policy
    full_name = ""
    if subject.kind == "user" and subject.name in policy.users:
        full_name = policy.users[subject.name].full_name
    elif subject.kind == "robot" and subject.name in policy.robots:
        full_name = policy.robots[subject.name].description
    return {
        "subject": str(subject),
        "kind": subject.kind,
        "name": subject.name or None,
        "full_name": full_name or None,
    }


def access_data(site: Site, engine: Engine, target: str) -> dict[str, Any]:
    """Every user and robot (and anonymous) with any right on `target`, and the rules why."""
    key = (engine, target)
    cached = site.access.get(key)
    if cached is not None:
        return cached
    policy = engine.policy
    subjects = [ANONYMOUS_SUBJECT]
    subjects += [Subject("user", name) for name in sorted(policy.users)]
    subjects += [Subject("robot", name) for name in sorted(policy.robots)]
    base = policy_dir(site)
    rows, nobody = [], 0
    summary: dict[str, list[str]] = {action: [] for action in REPOSITORY_ACTIONS}
    for subject in subjects:
        rights = engine.repository_rights(subject, target)
        if not any(allowed for allowed, _ in rights.values()):
            nobody += 1
            continue
        actions = {}
        for action in REPOSITORY_ACTIONS:
            allowed, reasons = rights[action]
            actions[action] = {
                "allowed": allowed,
                "reasons": [in_policy(reason_data(r, engine, subject), base) for r in reasons],
            }
            if allowed:
                summary[action].append(str(subject))
        rows.append({**person(engine, subject), "actions": actions})
    data = {"subjects": rows, "summary": summary, "without_rights": nobody}
    site.access[key] = data
    while len(site.access) > 256:
        site.access.popitem(last=False)
    return data


def policy_dir(site: Site) -> str:
    return str(site.services.source.directory)


async def namespace_access(site: Site, request: Request, viewer: Viewer) -> Response:
    """Who may pull, push and delete across a namespace, and through which rule."""
    found = find_namespace(site, request, viewer)
    if found is None:
        return site.not_found(request, viewer)
    name, _view, row = found
    data = {
        "kind": "namespace",
        "namespace": row,
        "target": f"{name}/*" if name else "*",
        "access": access_data(site, viewer.engine, f"{name}/*" if name else "*"),
    }
    return site.render(request, viewer, "access.html", data)


async def repository_access(site: Site, request: Request, viewer: Viewer) -> Response:
    """Who may pull, push and delete one repository, and through which rule."""
    name = request.path_params["name"]
    repo = site.visible(viewer).get(name) if is_repository_name(name) else None
    if repo is None:
        return site.not_found(request, viewer)
    data = {
        "kind": "repository",
        "repository": {"name": name, "namespace": repo.namespace, "slug": repo.namespace or GLOBAL},
        "target": name,
        "access": access_data(site, viewer.engine, name),
    }
    return site.render(request, viewer, "access.html", data)


async def teams(site: Site, request: Request, viewer: Viewer) -> Response:
    """Every team: its members by role, its namespaces and directory groups."""
    engine = viewer.engine
    policy = engine.policy
    owned: dict[str, list[str]] = {}
    for namespace in policy.namespaces.values():
        for owner in namespace.teams:
            owned.setdefault(owner, []).append(namespace.name)
    rows = []
    for name in sorted(policy.teams):
        team = policy.teams[name]
        members: dict[str, list[dict[str, Any]]] = {role.value: [] for role in ROLES}
        strongest: dict[Any, Role] = {}
        for principal, _ in team.members:
            role = team.role_of(principal)
            if role is not None:
                strongest[principal] = role
        for principal, role in sorted(strongest.items(), key=lambda item: str(item[0])):
            subject = Subject(principal.kind, principal.name)
            members[role.value].append(person(engine, subject))
        rows.append(
            {
                "name": name,
                "description": team.description or None,
                "members": members,
                "namespaces": sorted(owned.get(name, [])),
                "ldap_groups": [{"group": g, "role": r.value} for g, r in team.ldap_groups],
            }
        )
    return site.render(request, viewer, "teams.html", {"teams": rows})


async def status(site: Site, request: Request, viewer: Viewer) -> Response:
    """The live policy revision, when it loaded, the last error, and the catalog index."""
    live = health(site.services, details=viewer.admin)
    policy: dict[str, Any] = {
        "state": live["status"],
        "revision": live["revision"],
        "loaded_at": live["loaded_at"],
        "last_error": live["error"],
        "reloads": live["reloads"],
        "failed_reloads": live["failed_reloads"],
        "version": live["version"],
    }
    if viewer.admin:
        policy["source"] = live["source"]
    catalog = site.services.catalog
    index: dict[str, Any] = {"configured": catalog is not None}
    if catalog is not None:
        view = site.visible(viewer)
        index.update(
            built=catalog.built,
            last_refresh=iso(catalog.last_refresh),
            refresh_seconds=round(catalog.refresh_seconds, 3)
            if catalog.refresh_seconds is not None
            else None,
            last_error=catalog.last_error if viewer.admin else bool(catalog.last_error),
            generation=catalog.generation,
            refresh_interval=site.settings.catalog_refresh,
            visible_repositories=len(view),
        )
        if viewer.admin:  # totals count what others may not see
            totals = catalog.status()
            index.update(
                repositories=totals.repositories, tags=totals.tags, progress=totals.progress
            )
    data: dict[str, Any] = {"policy": policy, "catalog": index}
    if viewer.admin:  # webhook URLs and deliveries are for admins (docs/events.md)
        data["webhooks"] = site.services.events.status()
    return site.render(request, viewer, "status.html", data)


async def explain(site: Site, request: Request, viewer: Viewer) -> Response:
    """Admins pick a subject and scopes and see each decision with every rule behind it."""
    engine = viewer.engine
    policy = engine.policy
    subjects = ["anonymous"]
    subjects += [f"user:{name}" for name in sorted(policy.users)]
    subjects += [f"robot:{name}" for name in sorted(policy.robots)]
    params = request.query_params
    chosen = params.get("subject", "").strip()
    scopes = [line.strip() for text in params.getlist("scope") for line in text.splitlines()]
    scopes = [s for s in scopes if s]
    data: dict[str, Any] = {
        "subjects": subjects,
        "subject": chosen or None,
        "scopes": scopes,
        "result": None,
        "error": None,
        "known": None,
    }
    status_code = 200
    if chosen or scopes:
        try:
            subject = Subject.parse(chosen or "anonymous")
            if not scopes:
                raise ValueError("give at least one scope, such as repository:library/alpine:pull")
            result = explain_scopes(engine, subject, scopes)
            base = policy_dir(site)
            for resource in result["resources"]:
                for action in resource["actions"]:
                    for reason in action["reasons"]:
                        in_policy(reason, base)
            data["result"] = result
            data["known"] = subject.kind == "anonymous" or engine.known(subject)
        except ValueError as exc:
            data["error"] = str(exc)
            status_code = 400
    return site.render(request, viewer, "explain.html", data, status=status_code)


async def my_rights(site: Site, request: Request, viewer: Viewer) -> Response:
    """ "Why can't I push here?": the viewer's own rights on a repository they may see, with
    every rule behind each (for their own subject only; admins have the explain page)."""
    name = request.path_params["name"]
    repo = site.visible(viewer).get(name) if is_repository_name(name) else None
    if repo is None:
        return site.not_found(request, viewer)
    engine = viewer.engine
    result = explain_scopes(engine, viewer.subject, [f"repository:{name}:pull,push,delete"])
    base = policy_dir(site)
    actions = result["resources"][0]["actions"]
    cap = viewer.actions
    for action in actions:
        for reason in action["reasons"]:
            in_policy(reason, base)
        if cap is not None and action["allowed"] and action["action"] not in cap:
            # As at the token endpoint: the policy's grant, capped by the token signed in with.
            action["allowed"] = False
            action["reasons"].append(
                {
                    "effect": "deny",
                    "rule": f"the personal access token you signed in with does not allow "
                    f"{action['action']}",
                    "location": None,
                }
            )
    data = {
        "repository": {"name": name, "namespace": repo.namespace, "slug": repo.namespace or GLOBAL},
        "subject": result["subject"],
        "revision": result["revision"],
        "actions": actions,
        "granted": [a["action"] for a in actions if a["allowed"]],
        "token_cap": sorted(cap) if cap is not None else None,
    }
    return site.render(request, viewer, "my_rights.html", data)
