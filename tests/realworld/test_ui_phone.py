"""Every page of the catalog UI at 1280 px and at 390 px (a phone), in real Chromium: nothing
scrolls sideways, and no name, label or heading breaks inside a word. Each page is saved as a
screenshot in the test's temporary directory (its path is printed) for people to look at."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ViewportSize

from tests.support.browser import (
    DESKTOP,
    PHONE,
    mid_word_breaks,
    sideways_overflow,
    sign_in,
)
from tests.support.gateway import Stack
from tests.support.uistack import GROUPED, PAGES


def shot_name(viewer: str | None, width: int, path: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "home"
    return f"{width}-{viewer or 'anonymous'}-{slug[:60]}.png"


@pytest.mark.parametrize("viewer", list(PAGES), ids=lambda v: v or "anonymous")
@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280px", "390px"])
def test_every_page_fits_and_wraps_between_words(
    browser: Browser,
    ui_stack: Stack,
    tmp_path: Path,
    viewer: str | None,
    size: ViewportSize,
) -> None:
    context = browser.new_context(
        base_url=ui_stack.gateway.url,
        viewport=size,
        is_mobile=size == PHONE,
        has_touch=size == PHONE,
    )
    problems: list[str] = []
    try:
        page = context.new_page()
        if viewer:
            sign_in(page, viewer)
        for path in PAGES[viewer]:
            answer = page.goto(path)
            assert answer is not None
            expected = 404 if "not/a/page" in path else 200
            assert answer.status == expected, path
            page.screenshot(path=tmp_path / shot_name(viewer, size["width"], path), full_page=True)
            overflow = sideways_overflow(page)
            if overflow:
                problems.append(f"{path}: the page is {overflow}px wider than the window")
            problems += [f"{path}: breaks inside a word: {b}" for b in mid_word_breaks(page)]
    finally:
        context.close()
    print(f"screenshots: {tmp_path}")
    assert not problems, "\n".join(problems)


def test_tables_become_cards_on_a_phone(browser: Browser, ui_stack: Stack) -> None:
    """Under 600 px each row is a card of labelled lines: the tags' row and its size stay
    readable without a table's columns."""
    context = browser.new_context(base_url=ui_stack.gateway.url, viewport=PHONE, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(f"/r/{GROUPED}")
        row = page.locator("table.images tbody tr").first
        assert row.evaluate("r => getComputedStyle(r).display") == "block"
        assert page.locator("table.images thead").evaluate("h => h.offsetHeight") <= 1
        size = row.locator("td[data-label=Size]")
        label = size.evaluate("td => getComputedStyle(td, '::before').content")
        assert label == '"Size"'
        page.goto("/n/library")
        # Each label stays within its own line, however many lines it takes.
        overlaps = page.evaluate(
            """[...document.querySelectorAll('td[data-label]')].filter(td => {
                 const label = parseFloat(getComputedStyle(td, '::before').height);
                 return td.getBoundingClientRect().height + 0.5 < label;
               }).map(td => td.dataset.label)"""
        )
        assert overlaps == []
        page.goto(f"/r/{GROUPED}")
        tags = row.locator(".tag-names a").all_inner_texts()
        assert tags == ["latest", "stable", "v1"]
        boxes = [row.locator(".tag-names a").nth(i).bounding_box() for i in range(3)]
        assert all(box is not None and box["height"] < 30 for box in boxes)  # one line each
    finally:
        context.close()
