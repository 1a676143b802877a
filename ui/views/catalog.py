"""The catalog pages: namespaces, a namespace's repositories, a repository's tags, one tag."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.catalog.index import Manifest, Platform, Repository
from gateway.policy.patterns import is_component, is_repository_name
from ui.site import Site, Viewer, paginate
from ui.visibility import VisibleCatalog

GLOBAL = "_"  # the slug of the global namespace (names without '/'); never a namespace name
SORTS = ("name", "date")


# -- data -------------------------------------------------------------------------------


def namespace_rows(site: Site, viewer: Viewer, view: VisibleCatalog) -> list[dict[str, Any]]:
    """The namespaces this viewer may see: those holding repositories they may pull, and the
    declared ones they may pull from (their own personal namespace included), even if empty."""
    cached: list[dict[str, Any]] | None = view.memo.get("namespaces")
    if cached is not None:
        return cached
    policy = viewer.engine.policy
    names = set(view.by_namespace)
    for namespace in policy.namespaces.values():
        if namespace.personal and namespace.name != viewer.subject.name:
            continue
        if namespace.name not in names and viewer.rights(f"{namespace.name}/*")["pull"]:
            names.add(namespace.name)
    rows = []
    for name in sorted(names):
        declared = policy.namespaces.get(name) if name else None
        repos = [site.summaries.get(view.repositories[n]) for n in view.by_namespace.get(name, ())]
        if name:
            visibility = declared.visibility.value if declared else "private"
            description = declared.description if declared else ""
        else:
            visibility = policy.settings.global_namespace.value
            description = "Repositories whose name has no namespace, such as alpine."
        rows.append(
            {
                "name": name,
                "slug": name or GLOBAL,
                "label": name or "(no namespace)",
                "description": description,
                "declared": declared is not None,
                "personal": bool(declared and declared.personal),
                "visibility": visibility,
                "teams": list(declared.teams) if declared else [],
                "repositories": len(repos),
                "tags": sum(r.tags for r in repos),
                "updated": max((r.updated for r in repos if r.updated), default=None),
                "rights": viewer.rights(f"{name}/*" if name else "*"),
            }
        )
    view.memo["namespaces"] = rows
    return rows


def tag_row(tag: str, manifest: Manifest) -> dict[str, Any]:
    return {
        "tag": tag,
        "digest": manifest.digest,
        "media_type": manifest.media_type,
        "kind": manifest.kind,
        "is_index": manifest.is_index,
        "platforms": [p.name for p in manifest.platforms],
        "size": manifest.size,
        "created": manifest.created,
    }


def platform_data(platform: Platform) -> dict[str, Any]:
    return {
        "name": platform.name,
        "os": platform.os,
        "architecture": platform.architecture,
        "variant": platform.variant or None,
        "digest": platform.digest,
        "size": platform.size,
        "created": platform.created,
        "layers": [
            {"digest": layer.digest, "size": layer.size, "media_type": layer.media_type}
            for layer in platform.layers
        ],
        "entrypoint": list(platform.entrypoint),
        "cmd": list(platform.cmd),
        "labels": dict(platform.labels),
        "env_names": list(platform.env_names),  # names only: values may be secrets
    }


def pull_commands(site: Site, repository: str, reference: str) -> dict[str, str] | None:
    """`docker pull` and `podman pull` for `name:tag` or `name@digest`."""
    host = site.pull_host()
    if host is None:
        return None
    sep = "@" if ":" in reference else ":"
    ref = f"{host}/{repository}{sep}{reference}"
    return {"docker": f"docker pull {ref}", "podman": f"podman pull {ref}"}


def sorted_tags(repo: Repository, sort: str) -> list[tuple[str, Manifest]]:
    items = list(repo.tags.items())
    if sort == "date":  # newest first; tags without a creation time last, by name
        items.sort(key=lambda item: item[0])
        items.sort(key=lambda item: item[1].created or "", reverse=True)
    else:
        items.sort(key=lambda item: item[0])
    return items


# -- pages ------------------------------------------------------------------------------


async def home(site: Site, request: Request, viewer: Viewer) -> Response:
    """Namespaces the viewer may see, with the viewer's rights in each."""
    view = site.visible(viewer)
    data = {"namespaces": namespace_rows(site, viewer, view), "repositories": len(view)}
    return site.render(request, viewer, "home.html", data)


def find_namespace(
    site: Site, request: Request, viewer: Viewer
) -> tuple[str, VisibleCatalog, dict[str, Any]] | None:
    """The namespace named in the path, if this viewer may see it: (name, view, its row)."""
    slug = request.path_params["namespace"]
    name = "" if slug == GLOBAL else slug
    if name and not is_component(name):
        return None
    view = site.visible(viewer)
    row = next((r for r in namespace_rows(site, viewer, view) if r["name"] == name), None)
    return None if row is None else (name, view, row)


async def namespace(site: Site, request: Request, viewer: Viewer) -> Response:
    """One namespace: what it is, and its repositories (name, tags, last push, size)."""
    found = find_namespace(site, request, viewer)
    if found is None:
        return site.not_found(request, viewer)
    name, view, row = found
    sort = request.query_params.get("sort", "name")
    sort = sort if sort in SORTS else "name"
    summaries = [site.summaries.get(view.repositories[n]) for n in view.by_namespace.get(name, ())]
    if sort == "date":
        summaries.sort(key=lambda s: s.updated or "", reverse=True)
    shown, page = paginate(request, summaries)
    data = {
        "namespace": row,
        "sort": sort,
        "page": page,
        "repositories": [s.data() for s in shown],
    }
    return site.render(request, viewer, "namespace.html", data)


async def repository(site: Site, request: Request, viewer: Viewer) -> Response:
    """A repository's tags, sortable and paginated, with the commands that pull it."""
    name = request.path_params["name"]
    repo = site.visible(viewer).get(name) if is_repository_name(name) else None
    if repo is None:
        return site.not_found(request, viewer)
    sort = request.query_params.get("sort", "date")
    sort = sort if sort in SORTS else "date"
    tags = sorted_tags(repo, sort)
    shown, page = paginate(request, tags)
    default = "latest" if "latest" in repo.tags else (tags[0][0] if tags else None)
    data = {
        "repository": {
            **site.summaries.get(repo).data(),
            "rights": viewer.rights(name),
            "namespace_slug": repo.namespace or GLOBAL,
        },
        "pull": pull_commands(site, name, default) if default else None,
        "pull_tag": default,
        "sort": sort,
        "page": page,
        "tags": [tag_row(tag, manifest) for tag, manifest in shown],
    }
    return site.render(request, viewer, "repository.html", data)


async def tag(site: Site, request: Request, viewer: Viewer) -> Response:
    """One tag: its manifest, each platform's layers and config, and how to pull it."""
    name, tag_name = request.path_params["name"], request.path_params["tag"]
    repo = site.visible(viewer).get(name) if is_repository_name(name) else None
    manifest = repo.tags.get(tag_name) if repo is not None else None
    if repo is None or manifest is None:
        return site.not_found(request, viewer)
    data = {
        "repository": {"name": name, "namespace": repo.namespace, "slug": repo.namespace or GLOBAL},
        "tag": tag_name,
        "manifest": {
            **tag_row(tag_name, manifest),
            "platforms": [platform_data(p) for p in manifest.platforms],
        },
        "pull": pull_commands(site, name, tag_name),
        "pull_digest": pull_commands(site, name, manifest.digest),
    }
    return site.render(request, viewer, "tag.html", data)
