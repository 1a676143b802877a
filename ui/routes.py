"""The UI's routes, every one named; system pages live under `/-/`.

Repository names are chosen by users, so they only ever appear below fixed prefixes
(`/n/`, `/r/`, `/-/access/`) and can never shadow a page of the gateway.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route

from gateway.services import Services
from ui.site import Site
from ui.templating import STATIC, HashedStaticFiles
from ui.views import auth, catalog, policy, search


def ui_routes(services: Services) -> list[BaseRoute]:
    """The catalog UI's routes over a service container, to append to the app's route list."""
    site = Site(services)
    page = site.page
    return [
        Route("/", page(catalog.home), name="ui_home"),
        Route("/n/{namespace}", page(catalog.namespace), name="ui_namespace"),
        # A tag is `name:tag`: tags hold no ':' or '/', so the last ':' splits them.
        Route("/r/{name:path}:{tag}", page(catalog.tag), name="ui_tag"),
        Route("/r/{name:path}", page(catalog.repository), name="ui_repository"),
        Route("/search", page(search.search), name="ui_search"),
        Route("/-/teams", page(policy.teams, signed_in=True), name="ui_teams"),
        Route(
            "/-/access/n/{namespace}",
            page(policy.namespace_access, signed_in=True),
            name="ui_namespace_access",
        ),
        Route(
            "/-/access/r/{name:path}",
            page(policy.repository_access, signed_in=True),
            name="ui_repository_access",
        ),
        Route("/-/status", page(policy.status, signed_in=True), name="ui_status"),
        Route("/-/explain", page(policy.explain, admin=True), name="ui_explain"),
        Route("/-/login", page(auth.login), methods=["GET", "POST"], name="ui_login"),
        Route("/-/logout", page(auth.logout), methods=["POST"], name="ui_logout"),
        Mount("/-/static", app=HashedStaticFiles(directory=STATIC), name="ui_static"),
    ]
