"""The catalog UI in real headless Chromium (Debian's `chromium`, driven by Playwright).

Signs in, browses namespace -> repository -> tag, searches, signs out, and has a forged
form refused. Each main page is saved as a screenshot under test-output/screenshots/ for
people to look at (light, dark, narrow, and with JavaScript off).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.binaries import require
from tests.support.catalog import IMAGES, push_all, wait_until
from tests.support.clients import Skopeo
from tests.support.fixtures import OciImage
from tests.support.gateway import PASSWORDS, REPO, Stack, start_stack

SCREENSHOTS = REPO / "test-output" / "screenshots"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, oci_image: OciImage) -> Iterator[Stack]:
    require("docker-registry", "docker-registry")
    running = start_stack(
        tmp_path_factory.mktemp("browser-stack"),
        catalog=True,
        args=["--registry-public", "registry.example.test"],
    )
    try:
        push_all(running, Skopeo(tmp_path_factory.mktemp("skopeo")), oci_image)
        wait_until(lambda: _all_indexed(running), what="every pushed repository in the UI")
        yield running
    finally:
        running.stop()


def _all_indexed(stack: Stack) -> bool:
    found = httpx.get(
        f"{stack.gateway.url}/search",
        params={"q": "", "format": "json"},
        auth=("alice", PASSWORDS["alice"]),
    )
    status = httpx.get(
        f"{stack.gateway.url}/-/status",
        params={"format": "json"},
        auth=("alice", PASSWORDS["alice"]),
    ).json()
    catalog = status["catalog"]
    # Built by a full read too, so that no screenshot shows the start-up "unreachable" banner.
    return (
        found.status_code == 200
        and catalog.get("repositories") == len(IMAGES)
        and catalog["built"]
        and not catalog["last_error"]
    )


@pytest.fixture(scope="module")
def shots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    context = browser.new_context(
        base_url=stack.gateway.url, viewport={"width": 1280, "height": 860}
    )
    try:
        yield context.new_page()
    finally:
        context.close()


def sign_in(page: Page, user: str) -> None:
    page.goto("/")
    page.get_by_role("link", name="Sign in").first.click()
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(PASSWORDS[user])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".who strong")).to_have_text(user)


def test_browse_from_namespace_to_tag_then_sign_out(page: Page, shots: Path) -> None:
    page.goto("/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Namespaces")
    expect(page.locator("main .card h2")).to_have_text(["library"])
    page.screenshot(path=shots / "01-home-anonymous.png", full_page=True)

    page.get_by_role("link", name="Sign in").first.click()
    page.screenshot(path=shots / "02-sign-in.png", full_page=True)
    page.get_by_label("Username").fill("bob")
    page.get_by_label("Password").fill(PASSWORDS["bob"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".who strong")).to_have_text("bob")
    names = page.locator("main .card h2").all_inner_texts()
    assert names == ["(no namespace)", "bob", "library", "platform", "qa"]
    page.screenshot(path=shots / "03-namespaces.png", full_page=True)

    page.get_by_role("link", name="platform", exact=True).click()
    expect(page).to_have_url(re.compile(r"/n/platform$"))
    expect(page.locator("main tbody th a")).to_have_text(["platform/api", "platform/prod/api"])
    page.screenshot(path=shots / "04-namespace.png", full_page=True)

    page.get_by_role("link", name="platform/api", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("platform/api")
    expect(page.locator(".command code").first).to_have_text(
        "docker pull registry.example.test/platform/api:v1"
    )
    page.screenshot(path=shots / "05-repository.png", full_page=True)

    page.get_by_role("link", name="v1", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("platform/api:v1")
    expect(page.get_by_role("heading", name="Layers")).to_be_visible()
    page.screenshot(path=shots / "06-tag.png", full_page=True)

    page.goto("/r/library/multi:multi")
    expect(page.locator("section.platform h3")).to_have_text(["linux/amd64", "linux/arm64"])
    page.screenshot(path=shots / "07-tag-index.png", full_page=True)

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("link", name="Sign in").first).to_be_visible()
    page.goto("/r/platform/api")
    expect(page.get_by_role("heading", level=1)).to_have_text("Not found")


def test_search(page: Page, shots: Path) -> None:
    sign_in(page, "carol")
    search = page.get_by_role("searchbox", name="Search repositories and tags")
    search.fill("api")
    search.press("Enter")
    expect(page).to_have_url(re.compile(r"/search\?q=api$"))
    expect(page.locator(".results a")).to_have_text(["platform/api", "platform/prod/api"])
    page.screenshot(path=shots / "08-search.png", full_page=True)
    page.get_by_role("link", name="platform/prod/api").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("platform/prod/api")


def test_forged_form_is_refused(page: Page, shots: Path) -> None:
    page.goto("/-/login")
    page.eval_on_selector("input[name=csrf]", "field => { field.value = 'forged'; }")
    page.get_by_label("Username").fill("bob")
    page.get_by_label("Password").fill(PASSWORDS["bob"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    expect(page.locator("main")).to_contain_text("This form expired")
    page.screenshot(path=shots / "09-csrf-refused.png", full_page=True)
    page.goto("/")
    expect(page.get_by_role("link", name="Sign in").first).to_be_visible()


def test_policy_pages(page: Page, shots: Path) -> None:
    sign_in(page, "alice")
    page.get_by_role("link", name="Teams").click()
    expect(page.get_by_role("heading", name="platform", exact=True)).to_be_visible()
    page.screenshot(path=shots / "10-teams.png", full_page=True)
    page.goto("/r/platform/prod/api")
    page.get_by_role("link", name="Who has access").click()
    expect(page.locator("table.access tbody th").first).to_contain_text("user:alice")
    page.screenshot(path=shots / "11-access.png", full_page=True)
    page.get_by_role("link", name="Status").first.click()
    expect(page.get_by_role("heading", name="Policy")).to_be_visible()
    page.screenshot(path=shots / "12-status.png", full_page=True)
    page.get_by_role("link", name="Explain").click()
    page.get_by_label("Subject").select_option("user:bob")
    page.get_by_label("Scopes, one per line").fill("repository:platform/prod/api:pull,push")
    page.get_by_role("button", name="Explain").click()
    expect(page.locator("article tbody tr")).to_have_count(2)
    expect(page.locator("article")).to_contain_text("restricted to")
    page.screenshot(path=shots / "13-explain.png", full_page=True)


def test_dark_narrow_and_without_javascript(browser: Browser, stack: Stack, shots: Path) -> None:
    dark = browser.new_context(base_url=stack.gateway.url, color_scheme="dark")
    try:
        page = dark.new_page()
        page.goto("/r/library/multi")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)"
        page.screenshot(path=shots / "14-repository-dark.png", full_page=True)
    finally:
        dark.close()
    narrow = browser.new_context(
        base_url=stack.gateway.url, viewport={"width": 375, "height": 740}, is_mobile=True
    )
    try:
        page = narrow.new_page()
        page.goto("/r/library/base:v1")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page scrolls sideways ({width}px)"
        page.screenshot(path=shots / "15-tag-narrow.png", full_page=True)
    finally:
        narrow.close()
    no_js = browser.new_context(base_url=stack.gateway.url, java_script_enabled=False)
    try:
        page = no_js.new_page()
        page.goto("/")
        page.get_by_role("link", name="Sign in").first.click()
        page.get_by_label("Username").fill("bob")
        page.get_by_label("Password").fill(PASSWORDS["bob"])
        page.get_by_role("button", name="Sign in").click()
        page.goto("/r/library/base")
        expect(page.locator("button.copy").first).to_be_hidden()  # JavaScript only
        expect(page.locator(".command code").first).to_be_visible()
        page.screenshot(path=shots / "16-repository-no-js.png", full_page=True)
    finally:
        no_js.close()


def test_keyboard_reaches_the_content(page: Page) -> None:
    page.goto("/")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"


def test_a_browser_gets_pages_for_unknown_paths_a_favicon_and_slashed_addresses(
    page: Page, shots: Path
) -> None:
    for path in ("/this/is/not/a/page", "/-/team", "/n"):
        answer = page.goto(path)
        assert answer is not None and answer.status == 404
        assert answer.headers["content-type"].startswith("text/html"), path
        expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    page.screenshot(path=shots / "17-not-found.png", full_page=True)
    icon = page.goto("/favicon.ico")
    assert icon is not None and icon.status == 200
    assert icon.headers["content-type"] == "image/x-icon"
    for path, heading in (("/r/library/base/", "library/base"), ("/n/library/", "library")):
        page.goto(path)
        expect(page.get_by_role("heading", level=1)).to_have_text(heading)


def test_why_cant_i_push_here(page: Page, shots: Path) -> None:
    sign_in(page, "carol")
    page.goto("/r/platform/api")
    page.get_by_role("link", name="Why can't I push here?").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your rights on platform/api")
    expect(page.locator("main")).to_contain_text("user:carol")
    rows = page.locator("main tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(1)).to_contain_text("push")
    expect(rows.nth(1)).to_contain_text("denied")
    page.screenshot(path=shots / "18-why-cant-i-push.png", full_page=True)
