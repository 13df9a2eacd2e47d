"""The dashboard in headless Chromium: sign in with an API key, see a request just made,
make a key (shown once) and revoke it, at laptop and phone widths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.web.conftest import PHONE, QUOTA_PER_USD, ConsoleFactory


async def test_a_user_signs_in_sees_their_usage_and_manages_keys(
    console: ConsoleFactory, page: Any, shots: Path
) -> None:
    c = await console()
    key = await c.user("alice", quota=3 * QUOTA_PER_USD)
    assert await c.chat(key) == 200
    assert await c.chat(key, model="mock-claude") == 200
    await page.goto(c.url + "/dashboard")
    await page.screenshot(path=shots / "dashboard-login.png", full_page=True)
    await page.fill("input[name=key]", key)
    await page.click("button[type=submit]")
    assert page.url == c.url + "/dashboard"
    assert await page.locator("h1").inner_text() == "Hello, alice"
    rows = page.locator("table.data >> nth=0").locator("tbody tr")
    assert await rows.count() == 2
    await page.screenshot(path=shots / "dashboard.png", full_page=True)

    await page.fill("input[name=name]", "phone")
    await page.fill("input[name=usd]", "0.25")
    await page.click("text=Create key")
    secret = await page.locator("code.secret").inner_text()
    assert secret.startswith("wk-")
    assert await c.chat(secret) == 200
    await page.reload()  # a reload re-posts nothing; the key is gone from the page
    assert await page.locator("code.secret").count() == 0

    row = page.locator("#keys + .table-wrap tr", has_text="phone")
    await row.locator("text=Revoke").click()
    assert (
        await page.locator("#keys + .table-wrap tr", has_text="phone").locator(".badge.bad").inner_text() == "revoked"
    )
    assert await c.chat(secret) == 403


async def test_the_dashboard_fits_a_phone(console: ConsoleFactory, browser: Any, shots: Path) -> None:
    c = await console()
    key = await c.user("alice")
    assert await c.chat(key) == 200
    context = await browser.new_context(viewport=PHONE, is_mobile=True)
    try:
        page = await context.new_page()
        await page.goto(c.url + "/dashboard/login")
        await page.fill("input[name=key]", key)
        await page.click("button[type=submit]")
        await page.screenshot(path=shots / "dashboard-phone.png", full_page=True)
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    finally:
        await context.close()
