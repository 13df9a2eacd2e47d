"""Screenshots of every page, with a month of made-up usage, in headless Chromium.

`tests/web/test_screenshots.py` runs it into a temporary directory (every page must render);
`python -m tests.web.screenshots docs/img` refreshes the pictures in docs/console.md.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugins.billing.apikeys import generate_key
from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from plugins.billing.store.base import LogDetails, Plan, Store
from plugins.billing.store.factory import make_store
from proxy.mock.upstream import MockUpstream
from proxy.testing import ProxyHandle, proxy_config, start_proxy

TOKEN = "admin-token-for-screenshots-0123456789"
QPU = 500_000
DAY = 86400.0
MODELS = (("mock-gpt", 0.15, 0.60), ("mock-claude", 3.0, 15.0), ("mock-gemini", 0.30, 2.50))
ENDINGS = (("completed", "upstream"),) * 12 + (("client_disconnected", "counted"), ("upstream_truncated", "estimate"))
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


class Clock:
    """A clock the seeding moves by hand (the store stamps ledger and log rows with it)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(slots=True)
class Seeded:
    """What the seeding made: the demo user's key."""

    alice_key: str


async def _request(
    store: Store, clock: Clock, rng: random.Random, user: str, key_id: str, key_name: str, n: int
) -> None:
    model, p_in, p_out = rng.choice(MODELS)
    tokens_in, tokens_out = rng.randint(200, 6000), rng.randint(50, 1500)
    charge = int((tokens_in * p_in + tokens_out * p_out) / 1e6 * QPU)
    end, source = rng.choice(ENDINGS)
    rid = f"seed-{user}-{n}"
    await store.hold(rid, user, key_id, charge * 2 + 100, None, "v1", 600, "seed", model)
    details = LogDetails(
        end,
        source,
        model,
        model,
        "mock",
        key_name,
        "default",
        "1",
        True,
        tokens_in,
        rng.randint(0, tokens_in // 4),
        0,
        0,
        tokens_out,
        latency_ms=rng.randint(300, 9000),
        ttft_ms=rng.randint(150, 900),
        status=200,
    )
    await store.capture(rid, charge, details)


async def seed(folder: Path, now: float) -> Seeded:
    """Users, keys, a plan and a month of requests in `folder/weir.db`."""
    config = proxy_config("http://127.0.0.1:9", folder)
    clock = Clock(now - 30 * DAY)
    store = make_store(config, clock)
    await store.open()
    rng = random.Random(16)
    try:
        made: dict[str, tuple[str, str]] = {}
        for name, usd, group in (
            ("alice", 40, "default"),
            ("bob-research", 120, "team"),
            ("carol", 8, "default"),
            ("dan@example.com", 0, "trial"),
        ):
            await store.create_user(name, group)
            if usd:
                await store.credit(name, usd * QPU, "initial balance")
            clear, digest, hint = generate_key()
            key = await store.create_key(name, digest, name="laptop", hint=hint)
            made[name] = (clear, key.id)
        await store.create_key("bob-research", generate_key()[1], name="ci-runner", quota=10 * QPU, models=("mock-*",))
        await store.create_plan(Plan("pro-monthly", 20 * QPU, "month", 30))
        await store.grant_subscription("bob-research", "pro-monthly", clock.now, clock.now + 60 * DAY)
        n = 0
        for day in range(30):
            busy = 1 if day % 7 not in (5, 6) else 0  # quieter weekends
            jobs = [
                (rng.uniform(0, DAY - 60), user)
                for user, weight in (("alice", 6), ("bob-research", 14), ("carol", 2))
                for _ in range(rng.randint(0, weight) * busy + rng.randint(0, 1))
            ]
            for offset, user in sorted(jobs):  # the log in time order, as a real day writes it
                clock.now = now - (30 - day) * DAY + offset
                n += 1
                await _request(store, clock, rng, user, made[user][1], "laptop", n)
        return Seeded(made["alice"][0])
    finally:
        await store.close()


async def _start(folder: Path, upstream: MockUpstream) -> ProxyHandle:
    config = proxy_config(upstream.url, folder, admin={"token": TOKEN})
    prices = {f"{m}*": {"input": p_in, "output": p_out} for m, p_in, p_out in MODELS}
    return await start_proxy(
        config, plugins=[BillingPlugin(BillingConfig(pricing={"models": prices}, quota_per_usd=QPU))]
    )


#: Long lists: the first screenful is picture enough (and keeps docs/img small).
SCREENFUL = {"admin-logs", "dashboard-requests"}


async def _shot(page: Any, url: str, out: Path, name: str) -> None:
    response = await page.goto(url)
    assert response is not None and response.status == 200, (url, response and response.status)
    await page.screenshot(path=out / f"{name}.png", full_page=name not in SCREENFUL)


async def _console(page: Any, base: str, out: Path) -> None:
    await _shot(page, base + "/", out, "front")
    await _shot(page, base + "/admin/login", out, "admin-login")
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    for path, name in (
        ("/admin", "admin-home"),
        ("/admin/users", "admin-users"),
        ("/admin/keys", "admin-keys"),
        ("/admin/plans", "admin-plans"),
        ("/admin/logs", "admin-logs"),
        ("/admin/upstreams", "admin-upstreams"),
        ("/admin/audit", "admin-audit"),
    ):
        await _shot(page, base + path, out, name)
    await _shot(page, base + "/admin/users/alice", out, "admin-user")
    await page.locator("a[href^='/admin/keys/k_']").first.click()
    await page.screenshot(path=out / "admin-key.png", full_page=True)
    await page.goto(base + "/admin/users/alice")
    await page.fill("input[name=usd]", "10")
    await page.fill("input[name=note]", "invoice 2026-12")
    await page.click("text=Review top-up")
    await page.screenshot(path=out / "admin-confirm.png", full_page=True)
    await page.click("text=Confirm top-up")
    await page.screenshot(path=out / "admin-topped-up.png", full_page=True)


async def _dashboard(page: Any, base: str, out: Path, key: str) -> None:
    await _shot(page, base + "/dashboard/login", out, "dashboard-login")
    await page.fill("input[name=key]", key)
    await page.click("button[type=submit]")
    await page.screenshot(path=out / "dashboard.png", full_page=True)
    await _shot(page, base + "/dashboard/requests", out, "dashboard-requests")


async def shoot(browser: Any, out: Path, work: Path) -> list[str]:
    """Seed a store in `work`, start Weir on it and save a PNG of every page in `out`;
    the names saved."""
    import time

    await seed(work, time.time())
    upstream = MockUpstream()
    await upstream.start()
    proxy = await _start(work, upstream)
    try:
        key = re.sub(r"\s", "", (await _key_of(proxy)))
        for viewport, suffix in ((LAPTOP, ""), (PHONE, "-phone")):
            context = await browser.new_context(viewport=viewport, is_mobile=viewport is PHONE)
            try:
                page = await context.new_page()
                if suffix:
                    await page.goto(proxy.url + "/admin/login")
                    await page.fill("input[name=token]", TOKEN)
                    await page.click("button[type=submit]")
                    await page.screenshot(path=out / "admin-home-phone.png", full_page=True)
                    await page.goto(proxy.url + "/dashboard/login")
                    await page.fill("input[name=key]", key)
                    await page.click("button[type=submit]")
                    await page.screenshot(path=out / "dashboard-phone.png", full_page=True)
                else:
                    await _console(page, proxy.url, out)
                    await _dashboard(page, proxy.url, out, key)
            finally:
                await context.close()
    finally:
        await proxy.stop()
        await upstream.stop()
    return sorted(p.stem for p in out.glob("*.png"))


async def _key_of(proxy: ProxyHandle) -> str:
    # The seeded key is not kept anywhere: give alice a fresh one for the dashboard.
    clear, digest, hint = generate_key()
    await proxy.store.create_key("alice", digest, name="dashboard", hint=hint)
    return clear


async def main(out: Path) -> None:
    """Refresh the screenshots in `out`."""
    from playwright.async_api import async_playwright

    out.mkdir(parents=True, exist_ok=True)
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=os.environ.get("WEIR_CHROMIUM", "/usr/bin/chromium"), headless=True, args=args
        )
        try:
            with tempfile.TemporaryDirectory() as work:
                names = await shoot(browser, out, Path(work))
        finally:
            await browser.close()
    print("\n".join(f"{out}/{n}.png" for n in names))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img")))
