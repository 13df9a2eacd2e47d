"""The pricing page and the price editor in headless Chromium, with money: the page lists
configured, reference (labelled) and unpriced models without script; the editor flags a
model priced both ways, shows the diff, saves, and the next request is charged the new
price; a rollback restores it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.plugins.billing.pricing_world import ADMIN, PRICES, Shop, ShopFactory, shop  # noqa: F401
from tests.web.conftest import PHONE

UPSTREAMS = [
    {"name": "alpha", "models": ["mock-*", "gpt-4o-mini"]},
    {"name": "beta", "type": "anthropic", "base_url": "http://127.0.0.1:9", "models": ["mystery-model"]},
]


@pytest.fixture
def backend() -> str:
    """Browser tests run on SQLite only (the stores are proven alike by the API tests)."""
    return "sqlite"


async def sign_in(page: Any, world: Shop) -> str:
    url = world.instances[0].url
    await page.goto(url + "/admin/login")
    await page.fill("input[name=token]", ADMIN)
    await page.click("button[type=submit]")
    await page.goto(url + "/admin/prices")
    return url


async def test_the_price_list_without_script(shop: ShopFactory, browser: Any, shots: Path) -> None:
    world = await shop(
        upstreams=UPSTREAMS, groups={"default": 1, "vip": "0.5"}, pricing={"fallback": "litellm", "models": PRICES}
    )
    context = await browser.new_context(java_script_enabled=False)
    try:
        page = await context.new_page()
        await page.goto(world.instances[0].url + "/pricing")
        await page.screenshot(path=shots / "pricing.png", full_page=True)
        sources = {
            await r.get_attribute("data-model"): await r.get_attribute("data-source")
            for r in await page.locator("#prices tbody tr").all()
        }
        assert sources["mock-image"] == sources["mock-gpt*"] == "configured"
        assert sources["gpt-4o-mini"] == "reference" and sources["mystery-model"] == "unpriced"
        row = page.locator("tr[data-model='gpt-4o-mini']")
        assert "LiteLLM reference price" in await row.inner_text()
        assert "litellm-1.109.1" in await page.locator("#reference-note").inner_text()
        assert "not callable until priced" in await page.locator("tr[data-model='mystery-model']").inner_text()
        channels = await page.locator("tr[data-upstream='beta']").inner_text()
        assert "mystery-model" in channels and "anthropic" in channels and "default, vip" in channels
        # Filters are a plain GET form: choose the vip group and an upstream type, press Show.
        await page.select_option("select[name=group]", "vip")
        await page.select_option("select[name=provider]", "mock")
        await page.click("button[type=submit]")
        assert "group=vip" in page.url
        assert "$0.02" in await page.locator("tr[data-model='mock-image']").inner_text()  # 0.04 × 0.5
        assert await page.locator("tr[data-model='mystery-model']").count() == 0
        await page.click("#prices thead a:text('Input')")
        await page.click("#prices thead a:text('Input')")  # again: descending
        names = [await r.get_attribute("data-model") for r in await page.locator("#prices tbody tr").all()]
        assert names.index("mock-gpt*") < names.index("mock-embed") < names.index("mock-image")
        # The channels follow the filters: beta serves no mock model.
        assert "none matching" in await page.locator("tr[data-upstream='beta']").inner_text()
    finally:
        await context.close()


async def test_edit_flag_diff_save_charge_and_roll_back(shop: ShopFactory, page: Any, shots: Path) -> None:
    world = await shop()
    await sign_in(page, world)
    assert await page.locator("#version").inner_text() == "1"
    # A model priced both ways, pasted as JSON: flagged, and the save is not offered.
    both = {**PRICES, "mock-image": {"per_request": "0.05", "input": "1", "output": "2"}}
    await page.click("#as-json summary")
    await page.fill("textarea[name=json]", json.dumps(both))
    await page.click("button[value=replace]")
    assert "both per-request and token prices" in await page.locator("#conflicts li[data-kind=both_modes]").inner_text()
    assert await page.locator("#save").count() == 0
    assert await page.locator("tr[data-model='mock-image']").get_attribute("data-source") == "invalid"
    await page.screenshot(path=shots / "editor-both-ways.png", full_page=True)
    # Fix it in the row: per request only (switching mode clears the token prices).
    row = page.locator("tr[data-model='mock-image']")
    await row.locator("summary").click()
    await row.locator("input[value=request]").check()
    await row.locator("input[name='e:mock-image:per_request']").fill("0.05")
    await row.locator("button[value='edit:mock-image']").click()
    assert await page.locator("#conflicts").count() == 0
    assert await page.locator("#diff").inner_text() == "~ mock-image: per_request 0.04 → 0.05"
    await page.screenshot(path=shots / "editor-review.png", full_page=True)
    await page.fill("input[name=note]", "dearer images")
    await page.click("#save")
    assert page.url.endswith("/admin/prices?saved=2")
    assert "Saved as price version 2" in await page.locator(".notice.good").inner_text()
    assert await world.image() == 25_000  # the next request pays the new price
    # Roll back from the history: the diff shows the way back, then save.
    await page.click("button[value='rollback:1']")
    assert await page.locator("#diff").inner_text() == "~ mock-image: per_request 0.05 → 0.04"
    await page.click("#save")
    assert page.url.endswith("/admin/prices?saved=3")
    assert await world.image() == 20_000
    versions = await world.store.list_price_versions()
    assert [(v.number, v.source, v.note) for v in versions] == [
        (3, "rollback", "rollback to version 1"),
        (2, "editor", "dearer images"),
        (1, "proxy.yaml", "proxy.yaml's prices"),
    ]


async def test_adopt_reference_confirm_conflicts_and_a_stale_save(shop: ShopFactory, page: Any) -> None:
    world = await shop(upstreams=UPSTREAMS, pricing={"fallback": "litellm", "models": PRICES})
    url = await sign_in(page, world)
    await page.locator("tr[data-model='gpt-4o-mini'] input[name=pick]").check()
    await page.click("button[value=adopt_selected]")
    assert "+ gpt-4o-mini: " in await page.locator("#diff").inner_text()
    assert await page.locator("tr[data-model='gpt-4o-mini']").get_attribute("data-source") == "configured"
    # A price of 0 is a conflict that needs confirming.
    row = page.locator("tr[data-model='mock-embed']")
    await row.locator("summary").click()
    await row.locator("input[name='e:mock-embed:input']").fill("0")
    await row.locator("input[name='e:mock-embed:output']").fill("0")
    await row.locator("button[value='edit:mock-embed']").click()
    assert await page.locator("#conflicts li[data-kind=zero_price]").count() == 1
    await page.click("#save")
    assert "confirm the conflicts" in await page.locator(".notice.warn").first.inner_text()
    # Someone saves through the API meanwhile: this save is refused, the draft kept.
    async with aiohttp.ClientSession() as s:
        r = await s.put(
            url + "/api/admin/prices",
            json={"base_version": 1, "models": PRICES, "confirm": True},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert r.status == 200
    await page.check("input[name=confirm]")
    await page.click("#save")
    assert "version 2 was saved meanwhile" in await page.locator(".notice.bad").inner_text()
    assert await world.store.price_head() == 2
    await page.check("input[name=confirm]")
    await page.click("#save")
    assert page.url.endswith("/admin/prices?saved=3")
    head = await world.store.get_price_version()
    assert head is not None and json.loads(head.document)["mock-embed"] == {"input": "0", "output": "0"}


async def test_names_are_escaped_and_the_editor_fits_a_phone(shop: ShopFactory, browser: Any, shots: Path) -> None:
    world = await shop()
    context = await browser.new_context(viewport=PHONE, is_mobile=True)
    try:
        page = await context.new_page()
        await sign_in(page, world)
        await page.click("#add summary")
        await page.fill("input[name='new:model']", "<img src=x onerror=alert(1)>")
        await page.fill("input[name='new:input']", "1")
        await page.fill("input[name='new:output']", "2")
        await page.click("button[value=add]")
        assert "<img src=x onerror=alert(1)>" in await page.locator("#diff").inner_text()
        assert await page.locator("#models img").count() == 0
        await page.screenshot(path=shots / "editor-phone.png", full_page=True)
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    finally:
        await context.close()


async def test_the_editor_needs_the_admin(shop: ShopFactory) -> None:
    world = await shop()
    async with aiohttp.ClientSession() as s:
        r = await s.get(world.instances[0].url + "/admin/prices", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"].startswith("/admin/login")
        r = await s.post(
            world.instances[0].url + "/admin/prices",
            data={"action": "save", "draft": "{}", "base": "1"},
            allow_redirects=False,
        )
        assert r.status in (303, 403)
    assert await world.store.price_head() == 1
