"""What answers a path no page has: the favicon, and "not found" in the asker's language.

A browser (its `Accept` names `text/html`) gets the UI's own 404 page, with its header and
sign-in state; every other client keeps the registry's JSON error, as the token endpoint
and the system routes answer it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Match

from gateway.responses import registry_error
from ui.site import Site, Viewer
from ui.templating import STATIC

READING = ("GET", "HEAD")


def wants_html(request: Request) -> bool:
    """A browser's request: `text/html` accepted, and no `?format=json`."""
    if request.query_params.get("format") == "json":
        return False
    return "text/html" in request.headers.get("accept", "")


async def _not_found(site: Site, request: Request, viewer: Viewer) -> Response:
    return site.not_found(request, viewer)


def not_found(site: Site) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint of every path no other route takes, whatever the method."""
    page = site.page(_not_found)

    async def endpoint(request: Request) -> Response:
        if request.method in READING and wants_html(request):
            return await page(request)
        if request.method not in READING and _other_methods(request):
            return registry_error(405, "UNSUPPORTED", "Method Not Allowed")
        return registry_error(404, "NOT_FOUND", "Not Found")

    return endpoint


def _other_methods(request: Request) -> bool:
    """Whether another route has this path for other methods (then 405, not 404)."""
    routes = request.app.router.routes
    return any(route.matches(request.scope)[0] is Match.PARTIAL for route in routes)


async def favicon(request: Request) -> Response:
    """`/favicon.ico`, which browsers ask for on every site whatever the page says."""
    return FileResponse(
        STATIC / "favicon.ico",
        media_type="image/x-icon",
        headers={"Cache-Control": "public, max-age=86400"},
    )
