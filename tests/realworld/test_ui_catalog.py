"""The catalog UI against the real registry, with images pushed by skopeo and notifications."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bs4 import BeautifulSoup

from tests.support.binaries import require
from tests.support.catalog import (
    IMAGES,
    basic,
    csrf_of,
    may_pull,
    push_all,
    signed_in_client,
    wait_until,
)
from tests.support.clients import Skopeo, ok
from tests.support.cosign import (
    DSSE,
    SIMPLESIGNING,
    attachment_tag,
    build_attestation,
    build_signature,
)
from tests.support.fixtures import OciImage
from tests.support.gateway import PASSWORDS, Stack, creds, start_stack

VIEWERS = ["alice", "bob", "carol", None]  # an admin, two users with different rights, anonymous


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, oci_image: OciImage) -> Iterator[Stack]:
    require("docker-registry", "docker-registry")
    running = start_stack(
        tmp_path_factory.mktemp("ui-stack"),
        catalog=True,
        # A refresh would hide whether notifications work: only they may update the index.
        args=["--catalog-refresh", "1h", "--registry-public", "registry.example.test"],
    )
    try:
        push_all(running, Skopeo(tmp_path_factory.mktemp("skopeo")), oci_image)
        wait_until(
            lambda: set(IMAGES) <= repositories_in_json(running, "alice"),
            what="every pushed repository in the UI",
        )
        yield running
    finally:
        running.stop()


def repositories_in_json(stack: Stack, user: str | None) -> set[str]:
    """Every repository the JSON pages list for `user` (HTTP Basic), namespace by namespace."""
    auth = basic(user) if user else None

    def get(path: str) -> Any:
        return httpx.get(
            f"{stack.gateway.url}{path}", params={"format": "json"}, auth=auth, timeout=30
        ).json()

    found: set[str] = set()
    for namespace in get("/")["namespaces"]:
        found |= {r["name"] for r in get(f"/n/{namespace['slug']}")["repositories"]}
    return found


def repositories_in_pages(client: httpx.Client) -> set[str]:
    home = BeautifulSoup(client.get("/").text, "html.parser")
    found: set[str] = set()
    for link in home.select("main .card h2 a"):
        page = BeautifulSoup(client.get(str(link["href"])).text, "html.parser")
        found |= {a.get_text() for a in page.select("main table th[scope=row] a")}
    return found


@pytest.mark.parametrize("user", VIEWERS, ids=lambda u: u or "anonymous")
def test_viewers_see_exactly_what_they_may_pull(stack: Stack, user: str | None) -> None:
    expected = {name for name in IMAGES if may_pull(stack, user, name)}
    assert repositories_in_json(stack, user) == expected
    with signed_in_client(stack, user) as client:
        assert repositories_in_pages(client) == expected
        search = BeautifulSoup(client.get("/search", params={"q": "/"}).text, "html.parser")
        assert {a.get_text() for a in search.select(".results a")} == {
            n for n in expected if "/" in n
        }
        for name in IMAGES:
            assert client.get(f"/r/{name}").status_code == (200 if name in expected else 404)
    auth = basic(user) if user else None
    found = httpx.get(
        f"{stack.gateway.url}/search", params={"q": "a", "format": "json"}, auth=auth
    ).json()
    assert {r["name"] for r in found["repositories"]} == {n for n in expected if "a" in n}


def test_the_rights_differ_between_the_viewers(stack: Stack) -> None:
    seen = {user: repositories_in_json(stack, user) for user in VIEWERS}
    assert seen["alice"] == set(IMAGES)
    assert "bob/tool" in seen["bob"] and "bob/tool" not in seen["carol"]
    assert "carol/notes" in seen["carol"] and "carol/notes" not in seen["bob"]
    assert seen[None] == {"library/base", "library/multi"}


def test_a_private_repository_answers_like_a_missing_one(stack: Stack) -> None:
    with signed_in_client(stack, "carol") as client:
        hidden, missing = client.get("/r/bob/tool"), client.get("/r/bob/nothing-here")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.text == missing.text
        assert client.get("/r/bob/tool:v1").text == missing.text
        assert client.get("/-/access/r/bob/tool").text == missing.text
    url = f"{stack.gateway.url}/r/bob/tool"
    as_json = httpx.get(url, params={"format": "json"}, auth=basic("carol"))
    assert as_json.status_code == 404
    assert (
        as_json.json()
        == httpx.get(f"{url}-missing", params={"format": "json"}, auth=basic("carol")).json()
    )


def test_multi_platform_index_and_tag_detail(stack: Stack, oci_image: OciImage) -> None:
    base = stack.gateway.url
    row = httpx.get(f"{base}/r/library/multi?format=json").json()["tags"][0]
    assert row["digest"] == oci_image.multi_digest
    assert row["kind"] == "OCI index" and row["platforms"] == ["linux/amd64", "linux/arm64"]
    detail = httpx.get(f"{base}/r/library/base:v1?format=json").json()
    assert detail["manifest"]["digest"] == oci_image.v1_digest
    platform = detail["manifest"]["platforms"][0]
    assert platform["labels"] == {"org.example.test": "harness"}
    assert platform["env_names"] == ["PATH"]
    assert detail["pull"]["docker"] == "docker pull registry.example.test/library/base:v1"
    page = BeautifulSoup(httpx.get(f"{base}/r/library/multi:multi").text, "html.parser")
    assert [h.get_text() for h in page.select("section.platform h3")] == [
        "linux/amd64",
        "linux/arm64",
    ]


def test_a_push_appears_through_the_notification(
    stack: Stack, oci_image: OciImage, tmp_path: Path
) -> None:
    def status() -> dict[str, Any]:
        url = f"{stack.gateway.url}/-/status?format=json"
        catalog: dict[str, Any] = httpx.get(url, auth=basic("alice")).json()["catalog"]
        return catalog

    before = wait_until(lambda: (s := status())["built"] and s, what="the first full read")
    assert before["refresh_interval"] == 3600
    skopeo = Skopeo(tmp_path / "skopeo")
    ok(skopeo.copy(oci_image.ref("v1"), stack.ref("library/late:v2"), dest_creds=creds("bob")))
    wait_until(
        lambda: "library/late" in repositories_in_json(stack, None),
        timeout=10,
        what="library/late in the UI",
    )
    assert status()["last_refresh"] == before["last_refresh"]  # no full re-read happened
    tags = httpx.get(f"{stack.gateway.url}/r/library/late?format=json").json()["tags"]
    assert [t["tag"] for t in tags] == ["v2"]


def test_sign_in_session_and_sign_out(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway.url, follow_redirects=False) as client:
        form = client.get("/-/login?next=/r/bob/tool")
        answer = client.post(
            "/-/login",
            data={
                "username": "bob",
                "password": PASSWORDS["bob"],
                "csrf": csrf_of(form.text),
                "next": "/r/bob/tool",
            },
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/r/bob/tool"
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert PASSWORDS["bob"] not in answer.headers["set-cookie"]
        page = client.get("/r/bob/tool")
        assert page.status_code == 200
        out = client.post("/-/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303
        assert client.get("/r/bob/tool").status_code == 404


def test_csrf_refusal(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway.url, follow_redirects=False) as client:
        client.get("/-/login")
        forged = client.post(
            "/-/login",
            data={"username": "bob", "password": PASSWORDS["bob"], "csrf": "from-another-site"},
        )
        assert forged.status_code == 403 and "set-cookie" not in forged.headers
        assert client.get("/r/bob/tool").status_code == 404  # not signed in
    with signed_in_client(stack, "bob") as client:
        assert client.post("/-/logout", data={}).status_code == 403
        assert client.get("/r/bob/tool").status_code == 200  # still signed in


def test_basic_auth_on_json(stack: Stack) -> None:
    url = f"{stack.gateway.url}/r/platform/prod/api"
    robot = httpx.get(url, headers={"Accept": "application/json"}, auth=basic("ci-deploy"))
    assert robot.status_code == 200
    assert robot.json()["viewer"]["subject"] == "robot:ci-deploy"
    assert robot.json()["repository"]["rights"] == {"pull": True, "push": False, "delete": False}
    wrong = httpx.get(url, params={"format": "json"}, auth=("bob", "wrong"))
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(url, params={"format": "json"}).status_code == 404  # anonymous


def test_tags_of_one_image_are_one_row_and_cosign_attachments_are_listed_with_it(
    stack: Stack, oci_image: OciImage, tmp_path: Path
) -> None:
    """An image pushed under a second tag, and a cosign signature and attestation of it pushed
    by skopeo under cosign's tags (Distribution 2.8 has no referrers API): the UI, updated by
    the registry's notifications, shows one row with both tags, marked signed and attested,
    keeps `sha256-....sig`/`.att` out of the tags, and lists both on the tag page."""
    skopeo = Skopeo(tmp_path / "skopeo")
    digest = oci_image.v1_digest
    ok(skopeo.copy(oci_image.ref("v1"), stack.ref("library/signed:v1"), dest_creds=creds("alice")))
    ok(skopeo.copy(oci_image.ref("v1"), stack.ref("library/signed:1.0"), dest_creds=creds("alice")))
    layout = tmp_path / "cosign"
    build_signature(layout, "sig", f"{stack.host}/library/signed", digest)
    build_attestation(layout, "att", digest)
    for suffix in ("sig", "att"):
        target = stack.ref(f"library/signed:{attachment_tag(digest, suffix)}")
        ok(skopeo.copy(f"oci:{layout}:{suffix}", target, dest_creds=creds("alice")))

    url = f"{stack.gateway.url}/r/library/signed"

    def attached() -> Any:
        page = httpx.get(url, params={"format": "json"})
        if page.status_code != 200 or len(page.json()["images"][0]["attached"]) < 2:
            return None
        return page.json()

    data = wait_until(attached, timeout=15, what="the signature and attestation in the UI")
    assert [image["tags"] for image in data["images"]] == [["1.0", "v1"]]
    assert data["images"][0]["attached"] == ["signature", "attestation"]
    assert data["repository"]["tags"] == 2
    assert [t["tag"] for t in data["tags"]] == ["1.0", "v1"]
    page = BeautifulSoup(httpx.get(url).text, "html.parser")
    row = page.select_one("tbody th[scope=row]")
    assert row is not None and " ".join(row.get_text().split()) == "1.0 · v1 signed attested"

    detail = httpx.get(f"{url}:v1", params={"format": "json"}).json()
    assert detail["also_tagged"] == ["1.0"]
    signature, attestation = detail["attachments"]
    assert (signature["kind"], signature["tag"]) == ("signature", attachment_tag(digest, "sig"))
    assert signature["count"] == 1 and signature["layer_media_types"] == [SIMPLESIGNING]
    assert attestation["kind"] == "attestation" and attestation["layer_media_types"] == [DSSE]
    history = detail["manifest"]["platforms"][0]["history"]
    layers = detail["manifest"]["platforms"][0]["layers"]
    assert [(s["created_by"], s["size"]) for s in history] == [
        ("registry-gateway tests: layer 0", layers[0]["size"])
    ]
    html = BeautifulSoup(httpx.get(f"{url}:v1").text, "html.parser")
    assert [a.get_text() for a in html.select("table.attachments a")] == [
        f"sha256-{digest.removeprefix('sha256:')[:12]}\u2026.sig",
        f"sha256-{digest.removeprefix('sha256:')[:12]}\u2026.att",
    ]
    found = httpx.get(f"{stack.gateway.url}/search", params={"q": "sha256-", "format": "json"})
    assert found.json()["total_tags"] == 0
