"""Real headless Chromium (Debian's `chromium`) driven by Playwright, for the UI's browser
tests: launching it, signing in through the form, and what a person would check of a page's
layout (nothing scrolls sideways, no name breaks in the middle of a word)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

from .binaries import require
from .gateway import PASSWORDS

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 860}
PHONE: ViewportSize = {"width": 390, "height": 844}  # an iPhone 12 to 15's CSS pixels


@contextmanager
def chromium() -> Iterator[Browser]:
    path = require("chromium", "chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def sign_in(page: Page, user: str) -> None:
    """Sign in through the form, as a person does."""
    page.goto("/-/login")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(PASSWORDS[user])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".who strong")).to_have_text(user)


def sideways_overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than the window (0: nothing scrolls sideways)."""
    overflow: int = page.evaluate(
        "Math.max(0, document.scrollingElement.scrollWidth - window.innerWidth)"
    )
    return overflow


# Each character's line, from its box: a line that starts between two letters or digits is a
# break in the middle of a word ("lat|est"). Hidden text and text in code that may wrap
# anywhere (digests, commands, instructions) are not asked for.
_MID_WORD = """
(selector) => {
  const found = [];
  for (const element of document.querySelectorAll(selector)) {
    if (!element.getClientRects().length) continue;
    const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const text = node.textContent;
      let previous = null;  // a word is within one text node: <br> and elements end it
      for (let i = 0; i < text.length; i++) {
        const range = document.createRange();
        range.setStart(node, i);
        range.setEnd(node, i + 1);
        const box = range.getClientRects()[0];
        if (!box || !text[i].trim()) { previous = null; continue; }
        const here = {top: box.top, bottom: box.bottom, char: text[i]};
        if (previous && here.top >= previous.bottom - 1
            && /[\\p{L}\\p{N}]/u.test(previous.char) && /[\\p{L}\\p{N}]/u.test(here.char)) {
          found.push(`${element.tagName.toLowerCase()}.${element.className}: `
                     + `"${element.textContent.trim().replace(/\\s+/g, " ").slice(0, 80)}"`);
          break;
        }
        previous = here;
      }
    }
  }
  return [...new Set(found)];
}
"""
# Where a break inside a word would hurt: names, labels, headings, controls.
WORDS = ", ".join(
    [
        "h1",
        "h2",
        "h3",
        "h4",
        "th",
        "dt",
        "label",
        "button",
        ".badge",
        ".kind",
        ".tag-names a",
        ".command-label",
        ".breadcrumbs a",
        ".rights li",
        "nav a",
        "code.media-type",
        ".results a",
        ".card h2 a",
    ]
)


def mid_word_breaks(page: Page, selector: str = WORDS) -> list[str]:
    """The elements whose text wraps inside a word, as `tag.class: "text"`."""
    found: list[str] = page.evaluate(_MID_WORD, selector)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module (each test opens contexts of its own). Not one
    per run: Playwright's sync API keeps an event loop running in the main thread while it
    lives, where tests of other modules (in the same pytest-xdist worker) call asyncio.run."""
    with chromium() as launched:
        yield launched
