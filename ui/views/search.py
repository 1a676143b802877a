"""GET /search?q=TEXT: repositories whose name contains TEXT, and matching tags.

Only what the viewer may pull is searched, so results and counts reveal nothing else.
Signatures and other attachments (`sha256-<hex>.sig`...) are not tags anyone looks for.
Scripts depend on this address and on its JSON.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.catalog.attachments import is_attachment
from ui.site import Site, Viewer
from ui.views.catalog import tag_row

MOST = 200  # results of each kind shown; the totals count them all
MAX_QUERY = 200


async def search(site: Site, request: Request, viewer: Viewer) -> Response:
    """Repositories by name and tags by name, among those the viewer may pull."""
    q = request.query_params.get("q", "").strip()[:MAX_QUERY]
    needle = q.lower()
    repositories: list[dict[str, object]] = []
    tags: list[dict[str, object]] = []
    total_repositories = total_tags = 0
    if needle:
        view = site.visible(viewer)
        for name in view.names:
            repo = view.repositories[name]
            summary = site.summaries.get(repo)
            if needle in name:
                total_repositories += 1
                if len(repositories) < MOST:
                    repositories.append(summary.data())
            if needle not in summary.tag_text:
                continue  # no tag of this repository matches: skip them all at once
            for tag, manifest in repo.tags.items():
                if needle in tag.lower() and not is_attachment(tag):
                    total_tags += 1
                    if len(tags) < MOST:
                        tags.append({"repository": name, **tag_row(tag, manifest)})
    data = {
        "q": q,
        "repositories": repositories,
        "total_repositories": total_repositories,
        "tags": tags,
        "total_tags": total_tags,
    }
    return site.render(request, viewer, "search.html", data)
