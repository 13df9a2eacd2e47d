"""Every page renders in Chromium over a month of made-up usage (`tests/web/screenshots.py`,
which also refreshes docs/img); the pictures go to the test's temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.web.screenshots import shoot

PAGES = {
    "front",
    "admin-login",
    "admin-home",
    "admin-users",
    "admin-user",
    "admin-key",
    "admin-confirm",
    "admin-topped-up",
    "admin-keys",
    "admin-plans",
    "admin-logs",
    "admin-upstreams",
    "admin-audit",
    "admin-home-phone",
    "dashboard-login",
    "dashboard",
    "dashboard-requests",
    "dashboard-phone",
}


async def test_every_page_renders(browser: Any, shots: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    assert set(await shoot(browser, shots, work)) == PAGES
