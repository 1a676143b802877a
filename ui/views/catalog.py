"""The catalog pages: namespaces, a namespace's repositories, a repository's tags, one tag."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.catalog.attachments import Attachment, attached_to, attachments, is_attachment
from gateway.catalog.index import Manifest, Platform, Repository
from gateway.policy.patterns import is_component, is_repository_name
from ui.site import Site, Viewer, paginate
from ui.visibility import VisibleCatalog

GLOBAL = "_"  # the slug of the global namespace (names without '/'); never a namespace name
SORTS = ("name", "date")
NOUNS = {
    "signature": "signature",
    "attestation": "attestation",
    "SBOM": "SBOM",
    "referrers": "referrer",
}


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


def image_row(tags: list[str], manifest: Manifest, repo: Repository) -> dict[str, Any]:
    """Tags pointing at one manifest, as one row: `1.26 · latest · stable`."""
    row = tag_row(tags[0], manifest)
    del row["tag"]
    kinds = [a.kind for a in attachments(repo.tags, [manifest.digest])]
    return {"tags": tags, **row, "attached": list(dict.fromkeys(kinds))}


def attachment_data(item: Attachment) -> dict[str, Any]:
    manifest = item.manifest
    layers = [layer for p in manifest.platforms for layer in p.layers]
    types = {p.artifact_type for p in manifest.platforms if p.artifact_type}
    types |= {manifest.artifact_type} - {""}
    # cosign keeps one signature or attestation per layer; a referrers index one per entry
    count = len(manifest.platforms) if manifest.is_index else len(layers)
    noun = NOUNS.get(item.kind, "item")
    return {
        "kind": item.kind,
        "tag": item.tag,
        "subject": item.subject,
        "digest": manifest.digest,
        "media_type": manifest.media_type,
        "artifact_types": sorted(types),
        "count": count,
        "summary": f"{count} {noun}{'' if count == 1 else 's'}",
        "layer_media_types": sorted({layer.media_type for layer in layers}),
        "size": manifest.size,
    }


def history_rows(platform: Platform) -> list[dict[str, Any]]:
    """The config's history, each step that made a layer with that layer's size (steps and
    layers pair up in order; empty steps such as `ENV` made none)."""
    layers = iter(platform.layers)
    rows = []
    for step in platform.history:
        layer = None if step.empty_layer else next(layers, None)
        rows.append(
            {
                "created_by": step.created_by,
                "created": step.created,
                "empty_layer": step.empty_layer,
                "size": layer.size if layer is not None else None,
                "digest": layer.digest if layer is not None else None,
            }
        )
    return rows


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
        "history": history_rows(platform),
        "artifact_type": platform.artifact_type or None,
    }


def pull_commands(site: Site, repository: str, reference: str) -> dict[str, str] | None:
    """`docker pull` and `podman pull` for `name:tag` or `name@digest`."""
    host = site.pull_host()
    if host is None:
        return None
    sep = "@" if ":" in reference else ":"
    ref = f"{host}/{repository}{sep}{reference}"
    return {"docker": f"docker pull {ref}", "podman": f"podman pull {ref}"}


def images(repo: Repository, sort: str) -> list[tuple[list[str], Manifest]]:
    """The repository's images: the tags of each manifest (by name), signatures and other
    attachments left out; newest first (those without a creation time last) or by name."""
    groups: dict[str, list[str]] = {}
    for tag, manifest in repo.tags.items():
        if not is_attachment(tag):
            groups.setdefault(manifest.digest, []).append(tag)
    items = [(sorted(tags), repo.tags[tags[0]]) for tags in groups.values()]
    items.sort(key=lambda item: item[0][0])
    if sort == "date":
        items.sort(key=lambda item: item[1].created or "", reverse=True)
    return items


def attached_data(repo: Repository, digest: str, kind: str) -> dict[str, Any]:
    tags = sorted(
        t for t, m in repo.tags.items() if not is_attachment(t) and digest_of_tag(m, digest)
    )
    return {"kind": kind, "digest": digest, "tags": tags}


def digest_of_tag(manifest: Manifest, digest: str) -> bool:
    """Whether `digest` is the manifest's or one of its platforms'."""
    return manifest.digest == digest or any(p.digest == digest for p in manifest.platforms)


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
    found = images(repo, sort)
    shown, page = paginate(request, found)
    default = "latest" if "latest" in repo.tags else (found[0][0][0] if found else None)
    data = {
        "repository": {
            **site.summaries.get(repo).data(),
            "rights": viewer.rights(name),
            "namespace_slug": repo.namespace or GLOBAL,
        },
        "pull": pull_commands(site, name, default) if default else None,
        "pull_tag": default,
        "sort": sort,
        "page": page,  # counts images (rows), each with all of its tags
        "images": [image_row(tags, manifest, repo) for tags, manifest in shown],
        "tags": [tag_row(tag, manifest) for tags, manifest in shown for tag in tags],
    }
    return site.render(request, viewer, "repository.html", data)


async def tag(site: Site, request: Request, viewer: Viewer) -> Response:
    """One tag: its manifest, each platform's layers and config, and how to pull it."""
    name, tag_name = request.path_params["name"], request.path_params["tag"]
    repo = site.visible(viewer).get(name) if is_repository_name(name) else None
    manifest = repo.tags.get(tag_name) if repo is not None else None
    if repo is None or manifest is None:
        return site.not_found(request, viewer)
    digests = [manifest.digest, *(p.digest for p in manifest.platforms)]
    same = [t for t, m in repo.tags.items() if m.digest == manifest.digest and t != tag_name]
    subject = attached_to(tag_name)
    data = {
        "repository": {"name": name, "namespace": repo.namespace, "slug": repo.namespace or GLOBAL},
        "tag": tag_name,
        "also_tagged": sorted(t for t in same if not is_attachment(t)),
        "manifest": {
            **tag_row(tag_name, manifest),
            "artifact_type": manifest.artifact_type or None,
            "platforms": [platform_data(p) for p in manifest.platforms],
        },
        "attachments": [attachment_data(a) for a in attachments(repo.tags, digests)],
        # For a signature's own page: what it is attached to, and that image's tags.
        "attached_to": attached_data(repo, *subject) if subject else None,
        "pull": pull_commands(site, name, tag_name),
        "pull_digest": pull_commands(site, name, manifest.digest),
    }
    return site.render(request, viewer, "tag.html", data)
