"""The UI's routes, every one named; system pages live under `/-/`.

Repository names are chosen by users, so they only ever appear below fixed prefixes
(`/n/`, `/r/`, `/-/access/`, `/-/explain/r/`) and can never shadow a page of the gateway.
The last route takes every path no other route has (see views/fallback.py).
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Scope

from gateway.services import Services
from ui.site import Site
from ui.templating import STATIC, HashedStaticFiles
from ui.views import auth, catalog, fallback, oidc, policy, search

EVERY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Page(Route):
    """A page's route that takes its path with one trailing slash as well: `/r/NAME/` is
    `/r/NAME` (the path without the slash is tried first, since `{name:path}` would take the
    slash into the name)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            found = super().matches({**scope, "path": path[:-1]})
            if found[0] is not Match.NONE:
                return found
        return super().matches(scope)


def ui_routes(services: Services) -> list[BaseRoute]:
    """The catalog UI's routes over a service container, to append to the app's route list."""
    site = Site(services)
    page = site.page
    return [
        Route("/", page(catalog.home), name="ui_home"),
        Page("/n/{namespace}", page(catalog.namespace), name="ui_namespace"),
        # A tag is `name:tag`: tags hold no ':' or '/', so the last ':' splits them.
        Page("/r/{name:path}:{tag}", page(catalog.tag), name="ui_tag"),
        Page("/r/{name:path}", page(catalog.repository), name="ui_repository"),
        Page("/search", page(search.search), name="ui_search"),
        Page("/-/teams", page(policy.teams, signed_in=True), name="ui_teams"),
        Page(
            "/-/access/n/{namespace}",
            page(policy.namespace_access, signed_in=True),
            name="ui_namespace_access",
        ),
        Page(
            "/-/access/r/{name:path}",
            page(policy.repository_access, signed_in=True),
            name="ui_repository_access",
        ),
        Page("/-/status", page(policy.status, signed_in=True), name="ui_status"),
        Page("/-/explain", page(policy.explain, admin=True), name="ui_explain"),
        Page(
            "/-/explain/r/{name:path}",
            page(policy.my_rights, signed_in=True),
            name="ui_my_rights",
        ),
        Page("/-/login", page(auth.login), methods=["GET", "POST"], name="ui_login"),
        Page("/-/logout", page(auth.logout), methods=["POST"], name="ui_logout"),
        Page("/-/oidc/login", page(oidc.start), name="ui_oidc_login"),
        Page(services.settings.oidc_redirect_path, page(oidc.callback), name="ui_oidc_callback"),
        Page(
            "/-/cli-secrets",
            page(oidc.cli_secrets, signed_in=True),
            methods=["GET", "POST"],
            name="ui_cli_secrets",
        ),
        Mount("/-/static", app=HashedStaticFiles(directory=STATIC), name="ui_static"),
        Route("/favicon.ico", fallback.favicon, name="ui_favicon"),
        Route("/{path:path}", fallback.not_found(site), methods=EVERY_METHOD, name="ui_not_found"),
    ]
