"""The catalog UI in-process: pages, JSON twins, visibility, sessions and CSRF.

The index is filled from a fake registry client here; tests/realworld/test_ui_catalog.py does
the same against the real registry with images pushed by skopeo.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup, Tag
from httpx2 import Response  # what starlette.testclient answers with
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.catalog.index import CatalogIndex
from gateway.catalog.registry import OCI_INDEX, OCI_MANIFEST, RegistryError
from gateway.config import load_settings
from gateway.policy.model import Subject

from tests.support.gateway import PASSWORDS

REPOS = {
    "library/base": ["v1", "v2", "latest"],
    "library/multi": ["multi"],
    "platform/api": ["v1"],
    "platform/prod/api": ["v1"],
    "bob/tool": ["dev"],
    "carol/notes": ["v1"],
    "qa/runner": ["v1"],
    "alpine": ["3.19"],
    "platform/web": ["1.25", "1.26", "latest", "stable"],
}
# Tags that name the same image as another tag, and what cosign attached to an image.
ALIASES = {("platform/web", "latest"): "1.26", ("platform/web", "stable"): "1.26"}
# ("": the OCI referrers tag schema, an index of the image's referrers under `sha256-<hex>`)
ATTACHED = {("platform/web", "1.26"): ("sig", "att"), ("platform/web", "1.25"): ("",)}
SBOM = "application/spdx+json"
SIGNATURE = "application/vnd.dev.cosign.simplesigning.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """Answers like RegistryClient from a dict: every tag an image, `multi` an index of two;
    ALIASES point tags at another tag's image, ATTACHED adds cosign's tags to an image."""

    def __init__(self, repos: dict[str, list[str]]) -> None:
        self.repos = {name: list(tags) for name, tags in repos.items()}
        self.down = False
        self.blobs: dict[str, dict[str, Any]] = {}
        self.manifests: dict[str, tuple[str, dict[str, Any]]] = {}

    def _image(self, repo: str, tag: str, arch: str = "amd64") -> str:
        config = {
            "created": f"2024-01-0{1 + len(tag) % 8}T10:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/bin", "SECRET_TOKEN=hunter2"],
                "Entrypoint": ["/bin/app"],
                "Cmd": ["--serve"],
                "Labels": {"org.opencontainers.image.source": f"https://example.org/{repo}"},
            },
            "history": [
                {"created_by": "/bin/sh -c #(nop) ADD file:0123 in / "},
                {"created_by": "ENV SECRET_TOKEN=hunter2", "empty_layer": True},
                {"created_by": f"RUN make install # {repo}:{tag}"},
            ],
        }
        config_digest = _digest(json.dumps(config, sort_keys=True).encode())
        self.blobs[config_digest] = config
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"digest": config_digest, "size": 300},
            "layers": [
                {"digest": _digest(b"base-layer"), "size": 2_000_000, "mediaType": "layer"},
                {"digest": _digest(f"{repo}:{tag}".encode()), "size": 1234, "mediaType": "layer"},
            ],
        }
        digest = _digest(json.dumps(body, sort_keys=True).encode() + arch.encode())
        self.manifests[digest] = (OCI_MANIFEST, body)
        return digest

    async def repositories(self) -> list[str]:
        if self.down:
            raise RegistryError("GET /v2/_catalog: ConnectError: connection refused")
        return sorted(self.repos)

    async def tags(self, repository: str) -> list[str]:
        tags = list(self.repos.get(repository, []))
        for (repo, tag), suffixes in ATTACHED.items():
            if repo == repository:
                digest = self._image(repo, tag).removeprefix("sha256:")
                tags += [f"sha256-{digest}{'.' if s else ''}{s}" for s in suffixes]
        return tags

    def _attachment(self, reference: str) -> str:
        """A cosign signature or attestation: an OCI manifest whose layer is the payload."""
        config = {"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers"}}
        config_digest = _digest(json.dumps(config).encode())
        self.blobs[config_digest] = config
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": 200,
            },
            "layers": [
                {"digest": _digest(reference.encode()), "size": 250, "mediaType": SIGNATURE}
            ],
        }
        digest = _digest(json.dumps(body).encode())
        self.manifests[digest] = (OCI_MANIFEST, body)
        return digest

    def _referrers(self) -> tuple[str, str, dict[str, Any]]:
        """An OCI 1.1 referrers index of one artifact (an SPDX SBOM, its config empty)."""
        empty = "application/vnd.oci.empty.v1+json"
        artifact = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SBOM,
            "config": {"mediaType": empty, "digest": _digest(b"{}"), "size": 2},
            "layers": [{"digest": _digest(b"spdx"), "size": 4321, "mediaType": SBOM}],
        }
        child = _digest(json.dumps(artifact).encode())
        self.manifests[child] = (OCI_MANIFEST, artifact)
        entry = {"mediaType": OCI_MANIFEST, "digest": child, "size": 300, "artifactType": SBOM}
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
        digest = _digest(json.dumps(index).encode())
        self.manifests[digest] = (OCI_INDEX, index)
        return digest, OCI_INDEX, index

    async def manifest(
        self, repository: str, reference: str
    ) -> tuple[str, str, dict[str, Any]] | None:
        if reference.startswith("sha256:"):
            media_type, body = self.manifests[reference]
            return reference, media_type, body
        if reference.startswith("sha256-") and reference in await self.tags(repository):
            if "." in reference:
                digest = self._attachment(reference)
                return digest, OCI_MANIFEST, self.manifests[digest][1]
            return self._referrers()
        if reference not in self.repos.get(repository, []):
            return None
        reference = ALIASES.get((repository, reference), reference)
        if reference == "multi":
            children = [
                {
                    "digest": self._image(repository, reference, arch),
                    "mediaType": OCI_MANIFEST,
                    "size": 500,
                    "platform": {"os": "linux", "architecture": arch},
                }
                for arch in ("amd64", "arm64")
            ]
            body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
            digest = _digest(json.dumps(body).encode())
            self.manifests[digest] = (OCI_INDEX, body)
            return digest, OCI_INDEX, body
        digest = self._image(repository, reference)
        return digest, OCI_MANIFEST, self.manifests[digest][1]

    async def blob_json(self, repository: str, digest: str) -> dict[str, Any] | None:
        return self.blobs.get(digest)

    async def close(self) -> None:
        pass


# The test client, the app's services (app.state, untyped) and the fake registry behind them.
UI = tuple[TestClient, Any, FakeRegistry]


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    return Path(shutil.copytree("policies", tmp_path / "policies"))


@contextlib.contextmanager
def running(tmp_path: Path, policies: Path, **extra: str) -> Iterator[UI]:
    """The app with its lifespan running, then an index filled from a fake registry."""
    settings = load_settings(
        {
            "policies": str(policies),
            "data_dir": str(tmp_path / "data"),
            "audit_log": str(tmp_path / "audit.log"),
            "watch": "false",
            "registry_public": "registry.example.org",
            **extra,
        },
        environ={},
    )
    app = create_app(settings)
    fake = FakeRegistry(REPOS)
    index = CatalogIndex(fake)  # type: ignore[arg-type]
    asyncio.run(index.refresh())
    with TestClient(app) as client:
        gateway = app.state.services
        gateway.catalog = index  # after start-up: no background refresh races the tests
        yield client, gateway, fake


@pytest.fixture
def ui(tmp_path: Path, policies: Path) -> Iterator[UI]:
    with running(tmp_path, policies) as parts:
        yield parts


@pytest.fixture
def client(ui: UI) -> TestClient:
    return ui[0]


def sign_in(
    client: TestClient, user: str, password: str | None = None, next: str = "/"
) -> Response:
    csrf = attribute(one(soup(client.get("/-/login")), "input[name=csrf]"), "value")
    return client.post(
        "/-/login",
        data={
            "username": user,
            "password": password or PASSWORDS[user],
            "csrf": csrf,
            "next": next,
        },
        follow_redirects=False,
    )


def soup(response: Response) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def one(html: BeautifulSoup | Tag, selector: str) -> Tag:
    """The element `selector` finds first; the test fails when there is none."""
    found = html.select_one(selector)
    assert found is not None, f"nothing matches {selector}"
    return found


def attribute(tag: Tag, name: str) -> str:
    """A single-valued attribute of `tag`."""
    value = tag[name]
    assert isinstance(value, str), (name, value)
    return value


def template_name(response: Response) -> str:
    """The template that rendered `response`, which starlette's TestClient attaches to it."""
    name: str = response.template.name  # type: ignore[attr-defined]  # set by TestClient
    return name


def context(response: Response) -> dict[str, Any]:
    """The context `response` was rendered with, which starlette's TestClient attaches to it."""
    data: dict[str, Any] = response.context  # type: ignore[attr-defined]  # set by TestClient
    return data


def row_heads(response: Response) -> list[str]:
    """The text that heads each row of the page's table, spaces as a reader sees them."""
    return [" ".join(th.get_text().split()) for th in soup(response).select("tbody th[scope=row]")]


def repository_links(response: Response) -> list[str]:
    return sorted(a.get_text() for a in soup(response).select("main table th[scope=row] a"))


def visible(gateway: Any, user: str | None) -> set[str]:
    subject = Subject("user", user) if user else Subject("anonymous")
    engine = gateway.source.engine
    return {name for name in REPOS if engine.may_pull(subject, name)}


def names_in_json(client: TestClient, auth: tuple[str, str] | None = None) -> set[str]:
    found: set[str] = set()
    for ns in client.get("/", params={"format": "json"}, auth=auth).json()["namespaces"]:
        page = client.get(f"/n/{ns['slug']}", params={"format": "json"}, auth=auth).json()
        found |= {r["name"] for r in page["repositories"]}
    return found


# -- what each viewer sees ---------------------------------------------------------------


def test_anonymous_sees_public_namespaces_only(client: TestClient) -> None:
    home = client.get("/")
    assert home.status_code == 200
    assert template_name(home) == "home.html"
    names = [ns["name"] for ns in context(home)["namespaces"]]
    assert names == ["library"]
    assert [h.get_text() for h in soup(home).select("main .card h2")] == ["library"]
    assert repository_links(client.get("/n/library")) == ["library/base", "library/multi"]


@pytest.mark.parametrize("user", ["alice", "bob", "carol", "dave", None])
def test_each_viewer_sees_exactly_what_the_engine_lets_them_pull(ui: UI, user: str | None) -> None:
    client, gateway, _ = ui
    expected = visible(gateway, user)
    auth = (user, PASSWORDS[user]) if user else None
    assert names_in_json(client, auth) == expected
    search = client.get("/search", params={"q": "/", "format": "json"}, auth=auth).json()
    assert {r["name"] for r in search["repositories"]} == {n for n in expected if "/" in n}
    if user:
        assert sign_in(client, user).status_code == 303
    pages = set()
    for ns in context(client.get("/"))["namespaces"]:
        pages |= set(repository_links(client.get(f"/n/{ns['slug']}")))
    assert pages == expected
    for name in REPOS:
        status = client.get(f"/r/{name}").status_code
        assert status == (200 if name in expected else 404), name


def test_users_differ(ui: UI) -> None:
    _, gateway, _ = ui
    assert "bob/tool" in visible(gateway, "bob") and "bob/tool" not in visible(gateway, "carol")
    assert "carol/notes" in visible(gateway, "carol")
    assert visible(gateway, "alice") == set(REPOS)
    assert visible(gateway, None) == {"library/base", "library/multi"}


def test_a_private_repository_answers_like_a_missing_one(client: TestClient) -> None:
    hidden = client.get("/r/platform/api")
    missing = client.get("/r/platform/no-such-thing")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text == missing.text
    assert client.get("/r/platform/api:v1").text == missing.text
    assert client.get("/-/access/r/platform/api", follow_redirects=False).status_code == 303
    as_json = client.get("/r/platform/api?format=json").json()
    assert as_json == client.get("/r/platform/nothing?format=json").json()
    assert "platform/api" not in json.dumps(client.get("/search?q=api&format=json").json())


def test_hidden_repositories_count_nowhere(ui: UI) -> None:
    client, _, _ = ui
    sign_in(client, "carol")
    status = client.get("/-/status", params={"format": "json"}).json()
    assert "repositories" not in status["catalog"]  # the registry's totals are for admins
    assert status["catalog"]["visible_repositories"] == len(visible(ui[1], "carol"))
    home = client.get("/", params={"format": "json"}).json()
    assert home["repositories"] == len(visible(ui[1], "carol"))


# -- pages -----------------------------------------------------------------------------


def test_repository_page_lists_tags_with_pull_commands(client: TestClient) -> None:
    page = client.get("/r/library/base")
    assert template_name(page) == "repository.html"
    html = soup(page)
    assert row_heads(page) == ["latest", "v1", "v2"]
    commands = [c.get_text() for c in html.select(".command code")]
    assert commands == [
        "docker pull registry.example.org/library/base:latest",
        "podman pull registry.example.org/library/base:latest",
    ]
    by_name = client.get("/r/library/base", params={"sort": "name", "format": "json"}).json()
    assert [t["tag"] for t in by_name["tags"]] == ["latest", "v1", "v2"]
    assert by_name["tags"][0]["kind"] == "OCI image"
    assert by_name["repository"]["rights"] == {"pull": True, "push": False, "delete": False}


def test_pagination(client: TestClient) -> None:
    first = client.get("/r/library/base", params={"per_page": 2, "sort": "name"})
    assert row_heads(first) == ["latest", "v1"]
    link = attribute(one(soup(first), ".pagination a[rel=next]"), "href")
    second = client.get(link)
    assert row_heads(second) == ["v2"]
    assert context(second)["page"] == {"number": 2, "per_page": 2, "pages": 2, "total": 3}


def test_multi_platform_index_and_tag_detail(client: TestClient) -> None:
    row = client.get("/r/library/multi?format=json").json()["tags"][0]
    assert row["kind"] == "OCI index" and row["platforms"] == ["linux/amd64", "linux/arm64"]
    page = client.get("/r/library/multi:multi")
    assert template_name(page) == "tag.html"
    html = soup(page)
    assert [h.get_text() for h in html.select("section.platform h3")] == [
        "linux/amd64",
        "linux/arm64",
    ]
    assert "SECRET_TOKEN" in page.text and "hunter2" not in page.text
    data = client.get("/r/library/multi:multi", headers={"Accept": "application/json"}).json()
    platform = data["manifest"]["platforms"][0]
    assert platform["env_names"] == ["PATH", "SECRET_TOKEN"]
    assert platform["entrypoint"] == ["/bin/app"] and platform["cmd"] == ["--serve"]
    assert [layer["size"] for layer in platform["layers"]] == [2_000_000, 1234]
    assert data["pull_digest"]["docker"].endswith(f"library/multi@{data['manifest']['digest']}")
    assert client.get("/r/library/multi:nope").status_code == 404


def test_search_finds_repositories_and_tags(client: TestClient) -> None:
    found = client.get("/search", params={"q": "BASE"})
    assert template_name(found) == "search.html"
    assert [a.get_text() for a in soup(found).select(".results a")] == ["library/base"]
    tags = client.get("/search", params={"q": "mult", "format": "json"}).json()
    assert [(t["repository"], t["tag"]) for t in tags["tags"]] == [("library/multi", "multi")]
    assert client.get("/search?q=&format=json").json()["repositories"] == []


def test_every_page_has_a_json_twin(ui: UI) -> None:
    client = ui[0]
    auth = ("alice", PASSWORDS["alice"])
    for path in [
        "/",
        "/n/library",
        "/r/library/base",
        "/r/library/base:v1",
        "/search?q=a",
        "/-/teams",
        "/-/status",
        "/-/explain",
        "/-/access/r/library/base",
        "/-/access/n/platform",
        "/-/explain/r/library/base",
        "/-/login",
        "/r/library/base/",
    ]:
        answer = client.get(path, headers={"Accept": "application/json"}, auth=auth)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"] == "application/json", path
        assert answer.json()["viewer"]["subject"] == "user:alice", path


def test_teams_and_access_pages(ui: UI) -> None:
    client = ui[0]
    assert client.get("/-/teams", follow_redirects=False).status_code == 303
    sign_in(client, "bob")
    teams = client.get("/-/teams")
    platform = next(t for t in context(teams)["teams"] if t["name"] == "platform")
    assert [m["subject"] for m in platform["members"]["owner"]] == ["user:alice"]
    assert [m["subject"] for m in platform["members"]["contributor"]] == [
        "robot:ci-deploy",
        "user:bob",
    ]
    access = client.get("/-/access/r/platform/prod/api", params={"format": "json"}).json()
    assert access["access"]["summary"]["push"] == ["user:alice", "robot:release"]
    bob = next(s for s in access["access"]["subjects"] if s["subject"] == "user:bob")
    assert bob["actions"]["pull"]["allowed"] and not bob["actions"]["push"]["allowed"]
    assert "restricted to" in bob["actions"]["push"]["reasons"][0]["rule"]
    # Each reason names the membership that brought the subject under its rule, in the policy.
    pull = bob["actions"]["pull"]["reasons"]
    team = next(r["memberships"][0] for r in pull if r["memberships"])
    assert team["text"] == "bob is a member of team:platform"
    assert team["location"].startswith("teams.yaml:")
    html = soup(client.get("/-/access/r/platform/prod/api"))
    assert "bob is a member of team:platform" in html.get_text()
    assert "user:bob" in [th.contents[0].get_text().strip() for th in html.select("tbody th")]


def test_explain_is_for_admins(ui: UI) -> None:
    client = ui[0]
    query = {"subject": "user:bob", "scope": "repository:platform/prod/api:pull,push"}
    assert client.get("/-/explain", params=query, follow_redirects=False).status_code == 303
    sign_in(client, "bob")
    assert client.get("/-/explain", params=query).status_code == 403
    sign_in(client, "alice")
    page = client.get("/-/explain", params=query)
    assert page.status_code == 200
    decision = context(page)["result"]["resources"][0]
    assert decision["granted"] == ["pull"]
    rows = [
        [c.get_text(" ", strip=True)[:7] for c in tr.select("th, td")[:2]]
        for tr in soup(page).select("article tbody tr")
    ]
    assert rows == [["pull", "allowed"], ["push", "denied"]]
    bad = client.get("/-/explain", params={"subject": "user:bob", "scope": "nonsense"})
    assert bad.status_code == 400 and context(bad)["error"]


def test_status_page(ui: UI) -> None:
    client, gateway, _ = ui
    sign_in(client, "alice")
    data = client.get("/-/status?format=json").json()
    assert data["policy"]["revision"] == gateway.source.status().revision
    assert data["catalog"]["repositories"] == len(REPOS)
    assert data["registry"]["state"] == "ok"


@pytest.mark.parametrize("viewer", ["alice", "carol"])  # an admin, and someone who is not
def test_status_page_renders_for_admins_and_others(ui: UI, viewer: str) -> None:
    client = ui[0]
    sign_in(client, viewer)
    page = client.get("/-/status")
    assert page.status_code == 200
    assert "Catalog index" in page.text


def test_a_bug_in_a_page_is_an_html_500_that_gives_nothing_away(
    ui: UI, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, gateway, _ = ui
    sign_in(client, "alice")

    def broken() -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(gateway.catalog, "status", broken)
    page = client.get("/-/status")
    assert page.status_code == 500
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>" in page.text and "secret detail" not in page.text
    assert page.headers["x-request-id"] in page.text
    twin = client.get("/-/status?format=json")
    assert twin.status_code == 500 and twin.json()["error"] == "internal"


def test_registry_down_shows_a_banner_with_the_last_known_data(ui: UI) -> None:
    client, gateway, fake = ui
    fake.down = True
    assert asyncio.run(gateway.catalog.refresh()) is False
    page = client.get("/n/library")
    banner = soup(page).select_one(".banner[role=alert]")
    assert banner is not None and "cannot be reached" in banner.get_text()
    assert repository_links(page) == ["library/base", "library/multi"]
    assert client.get("/?format=json").json()["registry"]["state"] == "down"


# -- sign-in, sessions, CSRF -------------------------------------------------------------


def test_sign_in_sets_a_safe_cookie_and_signs_out(client: TestClient) -> None:
    answer = sign_in(client, "bob", next="/n/platform")
    assert answer.status_code == 303 and answer.headers["location"] == "/n/platform"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    assert PASSWORDS["bob"] not in answer.headers["set-cookie"]
    page = client.get("/n/platform")
    assert one(soup(page), ".who strong").get_text() == "bob"
    csrf = attribute(one(soup(page), "form[action='/-/logout'] input[name=csrf]"), "value")
    out = client.post("/-/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/n/platform").status_code == 404


def test_wrong_password_and_open_redirects(client: TestClient) -> None:
    wrong = sign_in(client, "bob", "not-the-password")
    assert wrong.status_code == 401
    assert one(soup(wrong), "[role=alert]").get_text() == "Wrong username or password."
    assert one(soup(wrong), "input[name=username]")["value"] == "bob"
    away = sign_in(client, "bob", next="//evil.example/")
    assert away.headers["location"] == "/"


def test_secure_cookie_behind_https(tmp_path: Path, policies: Path) -> None:
    with running(tmp_path, policies, public_url="https://gateway.example.org") as (client, _, _):
        # The form's session cookie is Secure already (so this http test client drops it).
        assert "secure" in client.get("/-/login").headers["set-cookie"].lower()


def test_csrf_refusals(client: TestClient) -> None:
    client.get("/-/login")
    for token in (None, "forged"):
        data = {"username": "bob", "password": PASSWORDS["bob"]}
        if token:
            data["csrf"] = token
        refused = client.post("/-/login", data=data, follow_redirects=False)
        assert refused.status_code == 403
        assert context(refused)["error"] == "csrf"
    sign_in(client, "bob")
    assert client.post("/-/logout", data={"csrf": "forged"}).status_code == 403
    assert client.get("/n/platform").status_code == 200  # still signed in


def test_session_ends_when_the_user_leaves_the_policy(ui: UI, policies: Path) -> None:
    client, gateway, _ = ui
    sign_in(client, "bob")
    assert client.get("/r/bob/tool").status_code == 200
    shutil.rmtree(policies / "tests")  # its cases are about bob
    people = policies / "people.yaml"
    text = people.read_text()
    start = text.index("  bob:")
    end = text.index("  carol:")
    people.write_text(text[:start] + text[end:])
    teams = policies / "teams.yaml"
    teams.write_text(
        teams.read_text().replace(
            "contributors: [bob, robot:ci-deploy]", "contributors: [robot:ci-deploy]"
        )
    )
    assert gateway.source.reload(), gateway.source.status().last_error
    gone = client.get("/r/bob/tool")
    assert gone.status_code == 404
    assert "rg_session" in gone.headers.get("set-cookie", "")  # the cookie is cleared
    assert one(soup(client.get("/")), ".account a").get_text() == "Sign in"


def test_forged_cookie_is_anonymous(client: TestClient) -> None:
    client.cookies.set("rg_session", "eyJjIjoieCIsInMiOiJ1c2VyOmFsaWNlIn0.forged.sig")
    assert client.get("/r/platform/api").status_code == 404


def test_basic_auth_on_json(client: TestClient) -> None:
    auth = ("bob", PASSWORDS["bob"])
    data = client.get("/r/bob/tool", params={"format": "json"}, auth=auth).json()
    assert data["viewer"]["subject"] == "user:bob"
    assert client.get("/r/bob/tool", params={"format": "json"}, auth=auth).status_code == 200
    wrong = client.get("/?format=json", auth=("bob", "nope"))
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Basic")
    robot = client.get("/n/platform?format=json", auth=("ci-deploy", PASSWORDS["ci-deploy"]))
    assert robot.status_code == 200 and robot.json()["viewer"]["subject"] == "robot:ci-deploy"
    # Basic credentials do not sign in HTML pages (they use the form and a session).
    assert client.get("/r/bob/tool", auth=auth).status_code == 404


def test_security_headers_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["server-timing"].startswith("app;dur=")
    href = attribute(one(soup(page), "link[rel=stylesheet]"), "href")
    assert href.startswith("/-/static/style.css?v=")
    css = client.get(href)
    assert css.status_code == 200 and "immutable" in css.headers["cache-control"]


def test_page_landmarks_and_labels(client: TestClient) -> None:
    html = soup(client.get("/-/login"))
    assert (
        html.select_one("main#content") and html.select_one("header") and html.select_one("footer")
    )
    assert one(html, "a.skip")["href"] == "#content"
    for field in html.select("main input:not([type=hidden])"):
        assert html.select_one(f"label[for={field['id']}]"), field
    assert one(html, "html")["lang"] == "en"


def test_every_page_is_documented(ui: UI) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route

    docs = (Path(__file__).resolve().parents[1] / "docs" / "ui.md").read_text()
    app = ui[0].app
    assert isinstance(app, Starlette)
    paths = [r.path for r in app.routes if isinstance(r, Route) and r.name.startswith("ui_")]
    shown = {
        "/n/{namespace}": "/n/NAMESPACE",
        "/r/{name:path}:{tag}": "/r/REPOSITORY:TAG",
        "/r/{name:path}": "/r/REPOSITORY",
        "/search": "/search?q=TEXT",
        "/-/access/n/{namespace}": "/-/access/n/NAMESPACE",
        "/-/access/r/{name:path}": "/-/access/r/REPOSITORY",
        "/-/explain/r/{name:path}": "/-/explain/r/REPOSITORY",
    }
    missing = [p for p in paths if p != "/{path:path}" and f"`{shown.get(p, p)}`" not in docs]
    assert "| any other path |" in docs
    assert not missing, f"docs/ui.md does not document {missing}"


def test_a_push_notified_before_its_tag_is_linked_still_shows(ui: UI) -> None:
    """The registry sends a manifest's push event before the tag exists in its tag list."""
    client, gateway, fake = ui
    found = asyncio.run(fake.manifest("library/base", "v1"))
    assert found is not None
    digest = found[0]
    fake.repos["library/early"] = []  # the repository exists; its tag is not linked yet
    event = {
        "action": "push",
        "target": {
            "repository": "library/early",
            "tag": "v1",
            "digest": digest,
            "mediaType": OCI_MANIFEST,
        },
    }
    assert gateway.catalog.apply_events([event]) == {"library/early"}
    asyncio.run(gateway.catalog.update_repository("library/early"))
    tags = client.get("/r/library/early?format=json").json()["tags"]
    assert [(t["tag"], t["digest"]) for t in tags] == [("v1", digest)]


# -- images: tags grouped, history, attachments ------------------------------------------


def test_tags_of_one_image_are_one_row_and_attachments_are_no_tags(ui: UI) -> None:
    client = ui[0]
    sign_in(client, "carol")
    page = client.get("/r/platform/web", params={"sort": "name"})
    assert row_heads(page) == ["1.25 referrers", "1.26 · latest · stable signed attested"]
    data = client.get("/r/platform/web", params={"sort": "name", "format": "json"}).json()
    assert [image["tags"] for image in data["images"]] == [["1.25"], ["1.26", "latest", "stable"]]
    assert data["images"][1]["attached"] == ["signature", "attestation"]
    assert [t["tag"] for t in data["tags"]] == ["1.25", "1.26", "latest", "stable"]
    assert data["repository"]["tags"] == 4  # cosign's tags are not counted
    assert data["page"]["total"] == 2
    found = client.get("/search", params={"q": "sha256", "format": "json"}).json()
    assert found["total_tags"] == 0


def test_tag_page_shows_history_and_what_is_attached(ui: UI) -> None:
    client = ui[0]
    sign_in(client, "carol")
    page = client.get("/r/platform/web:latest")
    data = context(page)
    assert data["also_tagged"] == ["1.26", "stable"]
    history = data["manifest"]["platforms"][0]["history"]
    assert [(step["created_by"], step["size"]) for step in history] == [
        ("/bin/sh -c #(nop) ADD file:0123 in /", 2_000_000),
        ("ENV SECRET_TOKEN=\u2026", None),  # values are hidden, as the environment's are
        ("RUN make install # platform/web:1.26", 1234),
    ]
    assert "hunter2" not in page.text
    html = soup(page)
    steps = [" ".join(tr.get_text(" ").split()) for tr in html.select("table.history tbody tr")]
    assert steps[1] == "2 ENV SECRET_TOKEN=\u2026 no layer" and steps[2].endswith("1.2 KiB")
    kinds = [a["kind"] for a in data["attachments"]]
    assert kinds == ["signature", "attestation"]
    signature = data["attachments"][0]
    assert signature["subject"] == data["manifest"]["digest"]
    assert signature["layer_media_types"] == [SIGNATURE]
    contents = [td.get_text(" ") for td in html.select("table.attachments td[data-label=Content]")]
    assert [" ".join(c.split()[:2]) for c in contents] == ["1 signature", "1 attestation"]
    link = one(html, "table.attachments a")
    assert attribute(link, "title") == signature["tag"]
    own = client.get(attribute(link, "href"))  # the signature's own page says what it signs
    assert own.status_code == 200
    assert context(own)["attached_to"] == {
        "kind": "signature",
        "digest": data["manifest"]["digest"],
        "tags": ["1.26", "latest", "stable"],
    }
    plain = context(client.get("/r/platform/api:v1"))
    assert plain["attachments"] == [] and plain["also_tagged"] == []


def test_oci_referrers_under_the_tag_schema_are_listed(ui: UI) -> None:
    client = ui[0]
    data = client.get("/r/platform/web:1.25?format=json", auth=("carol", PASSWORDS["carol"]))
    (referrers,) = data.json()["attachments"]
    assert referrers["kind"] == "referrers" and referrers["tag"].startswith("sha256-")
    assert referrers["count"] == 1 and referrers["summary"] == "1 referrer"
    assert referrers["artifact_types"] == [SBOM]
    assert data.json()["also_tagged"] == []


def test_sizes_are_in_binary_units_and_dates_say_whose(client: TestClient) -> None:
    from ui.templating import filesize

    assert [filesize(n) for n in (512, 1536, 2_000_000, 3 * 1024**3)] == [
        "512 B",
        "1.5 KiB",
        "1.9 MiB",
        "3.0 GiB",
    ]
    page = soup(client.get("/r/library/base:v1"))
    assert "Created (image)" in [dt.get_text() for dt in page.select("main dt")]
    headers = [th.get_text() for th in soup(client.get("/r/library/base")).select("thead th")]
    assert "Created (image)" in headers


# -- "why can't I push here?" ------------------------------------------------------------


def test_signed_in_users_ask_why_for_themselves(ui: UI) -> None:
    client = ui[0]
    assert client.get("/-/explain/r/platform/api", follow_redirects=False).status_code == 303
    sign_in(client, "carol")
    repository = soup(client.get("/r/platform/api"))
    link = one(repository, "a[href='/-/explain/r/platform/api']")
    assert link.get_text() == "Why can't I push here?"
    # Another subject cannot be asked for: the page answers for whoever is signed in.
    page = client.get("/-/explain/r/platform/api", params={"subject": "user:alice"})
    assert template_name(page) == "my_rights.html"
    data = context(page)
    assert data["subject"] == "user:carol" and data["granted"] == ["pull"]
    push = next(a for a in data["actions"] if a["action"] == "push")
    assert not push["allowed"] and push["reasons"]
    rows = [
        [c.get_text(" ", strip=True)[:7] for c in tr.select("th, td")[:2]]
        for tr in soup(page).select("tbody tr")
    ]
    assert rows == [["pull", "allowed"], ["push", "denied"], ["delete", "denied"]]
    hidden = client.get("/-/explain/r/bob/tool")
    assert hidden.status_code == 404
    assert hidden.text == client.get("/-/explain/r/bob/nothing-here").text
    assert client.get("/-/explain", params={"subject": "user:alice"}).status_code == 403
    bob = client.get("/-/explain/r/platform/api?format=json", auth=("bob", PASSWORDS["bob"]))
    assert bob.json()["subject"] == "user:bob" and "push" in bob.json()["granted"]


# -- every path answers the asker's language ---------------------------------------------

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.mark.parametrize("path", ["/this/is/not/a/page", "/-/team", "/n", "/n/", "/r/"])
def test_unknown_paths_answer_html_to_browsers_and_json_to_clients(
    client: TestClient, path: str
) -> None:
    page = client.get(path, headers=HTML)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert one(soup(page), "h1").get_text() == "Not found"
    assert one(soup(page), "a.skip")  # the site's own page, header and all
    if path.startswith("/r/"):  # a page of the UI, whose JSON twin has its own format
        answer = client.get(path, headers={"Accept": "application/json"})
        assert answer.status_code == 404 and answer.json()["error"] == "not_found"
        return
    for headers in ({}, {"Accept": "application/json"}, {"Accept": "*/*"}):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 404
        assert answer.json()["errors"][0]["code"] == "NOT_FOUND"


def test_other_methods_on_unknown_and_known_paths(client: TestClient) -> None:
    assert client.post("/this/is/not/a/page", headers=HTML).status_code == 404
    assert client.delete("/-/team").json()["errors"][0]["code"] == "NOT_FOUND"
    assert client.post("/healthz").status_code == 405


def test_favicon(client: TestClient) -> None:
    icon = client.get("/favicon.ico", headers=HTML)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    link = attribute(one(soup(client.get("/")), "link[rel=icon]"), "href")
    assert client.get(link).headers["content-type"].startswith("image/svg+xml")


@pytest.mark.parametrize("path", ["/r/library/base", "/r/library/base:v1", "/n/library"])
def test_a_trailing_slash_is_the_same_page(client: TestClient, path: str) -> None:
    plain, slashed = client.get(path), client.get(path + "/")
    assert slashed.status_code == plain.status_code == 200
    assert template_name(slashed) == template_name(plain)
    data = client.get(path + "/", params={"format": "json"}).json()
    assert data == client.get(path, params={"format": "json"}).json()


# -- the admins' banner while the live policy is not the newest --------------------------


def test_admins_see_a_banner_while_a_policy_change_is_rejected(ui: UI, policies: Path) -> None:
    client, gateway, _ = ui
    alice, carol = ("alice", PASSWORDS["alice"]), ("carol", PASSWORDS["carol"])
    assert client.get("/?format=json", auth=alice).json()["policy_alert"] is None
    live = gateway.source.status().revision
    (policies / "zz.yaml").write_text("users: {mallory: {admin: maybe}}\n")
    assert gateway.source.reload() is False
    alert = client.get("/?format=json", auth=alice).json()["policy_alert"]
    assert alert["state"] == "rejected" and alert["revision"] == live
    assert "zz.yaml:" in alert["message"] and "mallory" not in alert["message"]
    assert str(policies) not in alert["message"]  # where in the policy, not on the disk
    assert "policy_alert" not in client.get("/?format=json", auth=carol).json()
    sign_in(client, "carol")
    for path in ("/", "/r/platform/api", "/-/status", "/nowhere"):
        assert soup(client.get(path, headers=HTML)).select(".banner-policy") == [], path
    sign_in(client, "alice")
    for path in ("/", "/r/platform/api", "/-/teams", "/-/explain", "/nowhere"):
        banner = one(soup(client.get(path, headers=HTML)), ".banner-policy")
        assert "was rejected" in banner.get_text(), path
        assert attribute(one(banner, "a"), "href") == "/-/status"
    (policies / "zz.yaml").unlink()
    assert gateway.source.reload() is True
    assert soup(client.get("/")).select(".banner-policy") == []
