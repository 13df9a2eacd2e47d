"""The console in headless Chromium, as an operator uses it on day one: sign in, create a
user, top up (with confirmation), issue a key, make a request through Weir with it, see it in
the user's dashboard and in the admin log; revoke the key and see the next request refused.
A screenshot per page lands in the test's temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.web.conftest import ADMIN_TOKEN, ConsoleFactory


async def test_day_one_in_the_console(console: ConsoleFactory, browser: Any, shots: Path) -> None:
    c = await console()
    admin = await (await browser.new_context(viewport={"width": 1280, "height": 860})).new_page()
    await admin.goto(c.url + "/admin")
    await admin.fill("input[name=token]", ADMIN_TOKEN)
    await admin.click("button[type=submit]")
    await admin.click("nav >> text=Users")
    await admin.screenshot(path=shots / "users-empty.png", full_page=True)

    await admin.fill("form[action='/admin/users'] input[name=name]", "erin")
    await admin.click("text=Add user")
    assert await admin.locator("h1").inner_text() == "erin"
    await admin.fill("input[name=usd] >> nth=0", "5")
    await admin.fill("input[name=note]", "welcome credit")
    await admin.click("text=Review top-up")
    await admin.screenshot(path=shots / "confirm.png", full_page=True)
    assert await c.store.get_user("erin") is not None and (await c.store.get_user("erin")).balance == 0  # type: ignore[union-attr]
    await admin.click("text=Confirm top-up")
    assert "The balance is now $5.00." in await admin.locator("[role=status]").inner_text()

    await admin.fill("form[action$='/keys'] input[name=name]", "laptop")
    await admin.click("text=Make key")
    key = await admin.locator("code.secret").inner_text()
    await admin.screenshot(path=shots / "user-key-made.png", full_page=True)
    assert await c.chat(key) == 200

    user = await (await browser.new_context(viewport={"width": 1280, "height": 860})).new_page()
    await user.goto(c.url + "/dashboard")
    await user.fill("input[name=key]", key)
    await user.click("button[type=submit]")
    recent = user.locator("table.data >> nth=0").locator("tbody tr")
    assert await recent.count() == 1 and "completed" in await recent.inner_text()
    await user.screenshot(path=shots / "dashboard.png", full_page=True)

    await admin.click("nav >> text=Logs")
    rows = admin.locator("table.data tbody tr")
    assert await rows.count() == 1 and "erin" in await rows.inner_text()
    await admin.screenshot(path=shots / "logs.png", full_page=True)

    await admin.click("nav >> text=Keys")
    await admin.locator("tr", has_text="laptop").locator("text=Revoke").click()
    assert "revoked for good" in await admin.locator("[role=status]").inner_text()
    assert await c.chat(key) == 403
    await user.reload()
    assert "/dashboard/login" in user.url  # the session ended with its key
    await c.audit_ok()
