"""GatewayApp: Starlette's routing and exception handling, with less work per request."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from gateway.asgi import GatewayApp
from gateway.middleware import RequestLog
from gateway.responses import registry_error, send_json

SEEN: list[dict[str, object]] = []


class Raw:
    """A raw ASGI endpoint, as the token route's is: it records what routing put in its scope."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        SEEN.append({key: scope.get(key) for key in ("endpoint", "route", "path_params", "router")})
        if scope["path"] == "/raw-refused":
            raise HTTPException(403, "no")
        if scope["path"] == "/raw-broken":
            raise ValueError("a bug")
        await send_json(send, 200, b'{"raw":true}')


raw = Raw()


async def hello(request: Request) -> Response:
    return JSONResponse({"name": request.path_params.get("name")})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return registry_error(exc.status_code, "HTTP", str(exc.detail))


def client(routes: list[Route | Mount]) -> TestClient:
    app = GatewayApp(
        routes=routes,
        middleware=[Middleware(RequestLog, access_log=False)],
        exception_handlers={HTTPException: http_error},
    )
    return TestClient(app, raise_server_exceptions=False)


ROUTES: list[Route | Mount] = [
    Route("/raw", raw, methods=["GET", "POST"], name="raw"),
    Route("/raw-refused", raw, methods=["GET"]),
    Route("/raw-broken", raw, methods=["GET"]),
    Route("/hello/{name}", hello),
]


def test_a_static_route_gets_the_scope_starlette_s_scan_gives() -> None:
    """Found by path, or by Starlette's scan (a root path sends it there): the same scope."""
    SEEN.clear()
    with client(ROUTES) as http:
        assert http.get("/raw").json() == {"raw": True}
        assert http.get("/raw", headers={}).status_code == 200
    app = GatewayApp(routes=ROUTES)
    scanned = TestClient(app, root_path="/prefix")
    assert scanned.get("/prefix/raw").json() == {"raw": True}
    by_path, by_scan = SEEN[0], SEEN[-1]
    assert by_path["route"] is by_scan["route"] is ROUTES[0]
    assert by_path["endpoint"] is by_scan["endpoint"] is raw
    assert by_path["path_params"] == by_scan["path_params"] == {}
    assert app.url_path_for("raw") == "/raw"


def test_a_method_the_route_does_not_take_is_a_405_in_the_registry_format() -> None:
    with client(ROUTES) as http:
        answer = http.put("/raw")
    assert answer.status_code == 405
    assert answer.json()["errors"][0]["code"] == "HTTP"


def test_an_unknown_path_is_a_404_in_the_registry_format() -> None:
    with client(ROUTES) as http:
        answer = http.get("/nowhere")
    assert answer.status_code == 404 and answer.json()["errors"][0]["code"] == "HTTP"


def test_routes_with_parameters_are_found_by_the_scan() -> None:
    with client(ROUTES) as http:
        assert http.get("/hello/ada").json() == {"name": "ada"}


def test_an_exception_from_a_raw_endpoint_reaches_its_handler() -> None:
    with client(ROUTES) as http:
        answer = http.get("/raw-refused")
    assert answer.status_code == 403 and answer.json()["errors"][0]["message"] == "no"


def test_an_exception_no_handler_takes_is_the_registry_s_500() -> None:
    with client(ROUTES) as http:
        answer = http.get("/raw-broken")
    assert answer.status_code == 500
    assert answer.json()["errors"][0]["code"] == "INTERNAL"
    assert "a bug" not in answer.text and answer.headers["x-request-id"]


def test_a_static_route_behind_a_route_that_matches_first_is_not_taken_by_path() -> None:
    """Starlette takes the first route that matches: a static route after a parameterised
    one is left to the scan, which finds the parameterised one first."""
    routes: list[Route | Mount] = [
        Route("/hello/{name}", hello),
        Route("/hello/raw", raw, methods=["GET"]),
    ]
    with client(routes) as http:
        assert http.get("/hello/raw").json() == {"name": "raw"}
