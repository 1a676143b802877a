"""axe-core (from the npm registry, pinned) on every page of the catalog UI in real Chromium,
for an anonymous visitor, a user and an admin, in the light and the dark theme and on a phone:
no serious or critical violation (contrast under WCAG AA's 4.5:1 among them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.support.browser import DESKTOP, PHONE, sign_in
from tests.support.catalog import basic, wait_until
from tests.support.gateway import Stack
from tests.support.npm import npm_package
from tests.support.uistack import PAGES

AXE = ("axe-core", "4.10.2")
SERIOUS = ("serious", "critical")
# Each violation as "rule: what is wrong, at which elements" (the first few of them).
RUN_AXE = """
async () => {
  const results = await axe.run(document, {resultTypes: ["violations"]});
  return results.violations
    .filter(v => ["serious", "critical"].includes(v.impact))
    .map(v => `${v.id} (${v.impact}): ${v.help}: `
              + v.nodes.slice(0, 4).map(n => n.target.join(" ")
                + (n.any[0] ? ` [${n.any[0].message}]` : "")).join("; "));
}
"""


@pytest.fixture(scope="module")
def axe() -> Path:
    return npm_package(*AXE) / "axe.min.js"


def violations(page: Page, axe: Path) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now."""
    page.add_script_tag(path=axe)  # the page's CSP allows no such script: bypassed below
    found: list[str] = page.evaluate(RUN_AXE)
    return found


LOOKS: dict[str, dict[str, Any]] = {
    "light": {"viewport": DESKTOP, "color_scheme": "light"},
    "dark": {"viewport": DESKTOP, "color_scheme": "dark"},
    "phone": {"viewport": PHONE, "color_scheme": "light", "is_mobile": True},
}


@pytest.mark.parametrize("viewer", list(PAGES), ids=lambda v: v or "anonymous")
@pytest.mark.parametrize("look", list(LOOKS))
def test_no_serious_violations_on_any_page(
    browser: Browser, ui_stack: Stack, axe: Path, viewer: str | None, look: str
) -> None:
    options: dict[str, Any] = LOOKS[look]
    context = browser.new_context(base_url=ui_stack.gateway.url, bypass_csp=True, **options)
    problems: list[str] = []
    try:
        page = context.new_page()
        if viewer:
            sign_in(page, viewer)
        for path in PAGES[viewer]:
            page.goto(path)
            problems += [f"{path}: {v}" for v in violations(page, axe)]
    finally:
        context.close()
    assert not problems, "\n".join(problems)


def test_the_admins_policy_banner_is_accessible_too(
    browser: Browser, ui_stack: Stack, axe: Path, tmp_path: Path
) -> None:
    """A rejected policy change: admins see the banner on every page, and it passes axe in
    both themes; a user sees none."""
    broken = ui_stack.gateway.policies / "zz-broken.yaml"
    broken.write_text("users: {mallory: {admin: maybe}}\n")
    try:
        wait_until(lambda: _health(ui_stack) == "degraded", what="the change rejected")
        for scheme in ("light", "dark"):
            context = browser.new_context(
                base_url=ui_stack.gateway.url, bypass_csp=True, color_scheme=scheme
            )
            try:
                page = context.new_page()
                sign_in(page, "alice")
                for path in ("/-/status", "/r/library/base", "/"):
                    page.goto(path)
                    banner = page.locator(".banner-policy")
                    assert banner.count() == 1, path
                    assert "(1 problem(s) at zz-broken.yaml:1:" in banner.inner_text()
                    page.screenshot(path=tmp_path / f"banner-{scheme}-{len(path)}.png")
                    assert violations(page, axe) == [], path
                page.locator(".banner-policy").get_by_role("link").click()
                assert page.url.endswith("/-/status")
            finally:
                context.close()
        user = httpx.get(f"{ui_stack.gateway.url}/?format=json", auth=basic("bob")).json()
        assert "policy_alert" not in user
    finally:
        broken.unlink()
        wait_until(lambda: _health(ui_stack) == "ok", what="the policy whole again")


def _health(stack: Stack) -> str:
    status: str = httpx.get(f"{stack.gateway.url}/healthz").json()["status"]
    return status
