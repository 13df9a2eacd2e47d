"""Fixtures for page tests: headless Chromium through Playwright, and a signed-in HTTP client.

Chromium is Debian's (`/usr/bin/chromium`, or `$WEIR_CHROMIUM`), launched by path:
`playwright install` is never run. Without Chromium or the playwright package the browser
tests skip, saying why; with `WEIR_REQUIRE_CHROMIUM=1` (CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

CHROMIUM = os.environ.get("WEIR_CHROMIUM", "/usr/bin/chromium")
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def _unavailable(reason: str) -> None:
    if os.environ.get("WEIR_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"{reason}, and WEIR_REQUIRE_CHROMIUM=1 makes that a failure")
    pytest.skip(reason)


def chromium_path() -> str:
    """The Chromium binary to drive, or a skip (a failure under WEIR_REQUIRE_CHROMIUM=1)."""
    found = CHROMIUM if os.path.isabs(CHROMIUM) else shutil.which(CHROMIUM)
    if not found or not os.access(found, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set WEIR_CHROMIUM)")
    return str(found)


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium (Playwright's `Browser`), closed after the test."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    path = chromium_path()
    # As root (CI containers) Chromium refuses to start with its sandbox on.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=path, headless=True, args=args)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    """A fresh page at laptop size (a new context: no cookies from another test)."""
    context = await browser.new_context(viewport=LAPTOP)
    try:
        yield await context.new_page()
    finally:
        await context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where a test saves its screenshots (one per page it visits)."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder
