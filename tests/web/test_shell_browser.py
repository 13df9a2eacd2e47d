"""The console's sign-in in headless Chromium: the form, a refused token, the session, a
form whose CSRF token was removed, and the layout at phone width."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from proxy.testing import ProxyHandle
from tests.web.conftest import PHONE

TOKEN = "admin-token-for-tests-0123456789"
MakeProxy = Callable[..., Awaitable[ProxyHandle]]


async def test_sign_in_and_out_of_the_console(make_proxy: MakeProxy, page: Any, shots: Path) -> None:
    proxy = await make_proxy(admin={"token": TOKEN})
    await page.goto(proxy.url + "/admin")
    assert page.url.endswith("/admin/login?next=/admin")
    await page.screenshot(path=shots / "admin-login.png", full_page=True)
    await page.fill("input[name=token]", "not-the-admin-token-at-all")
    await page.click("button[type=submit]")
    assert await page.locator("[role=alert]").inner_text() == "That is not the admin token."
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    assert page.url == proxy.url + "/admin"
    assert await page.locator("h1").inner_text() == "Console"
    assert TOKEN not in await page.content()
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["weir_admin"]["httpOnly"] and cookies["weir_admin"]["sameSite"] == "Strict"
    await page.screenshot(path=shots / "admin-home.png", full_page=True)
    await page.click("text=Sign out")
    assert "/admin/login" in page.url


async def test_a_form_stripped_of_its_csrf_token_is_refused(make_proxy: MakeProxy, page: Any) -> None:
    proxy = await make_proxy(admin={"token": TOKEN})
    await page.goto(proxy.url + "/admin/login")
    await page.evaluate("document.querySelector('input[name=csrf]').remove()")
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    assert await page.locator("h1").inner_text() == "Form expired"
    await page.goto(proxy.url + "/admin")
    assert "/admin/login" in page.url  # not signed in


async def test_the_layout_fits_a_phone(make_proxy: MakeProxy, browser: Any, shots: Path) -> None:
    proxy = await make_proxy(admin={"token": TOKEN})
    context = await browser.new_context(viewport=PHONE, is_mobile=True)
    try:
        page = await context.new_page()
        await page.goto(proxy.url + "/admin/login")
        await page.fill("input[name=token]", TOKEN)
        await page.click("button[type=submit]")
        await page.screenshot(path=shots / "admin-home-phone.png", full_page=True)
        # Nothing overflows sideways: the page is as wide as the screen.
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
    finally:
        await context.close()
