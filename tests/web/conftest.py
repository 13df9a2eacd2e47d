"""Fixtures for page tests: headless Chromium through Playwright, and a signed-in HTTP client.

Chromium is Debian's (`/usr/bin/chromium`, or `$WEIR_CHROMIUM`), launched by path:
`playwright install` is never run. Without Chromium or the playwright package the browser
tests skip, saying why; with `WEIR_REQUIRE_CHROMIUM=1` (CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from plugins.billing.apikeys import generate_key
from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from plugins.billing.store.base import Store
from proxy.mock.upstream import MockUpstream
from proxy.testing import ProxyHandle, proxy_config, start_proxy

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


# ---- a real Weir with billing, for the API and page tests ---------------------------------


ADMIN_TOKEN = "admin-token-for-tests-0123456789"
PRICES = {"mock-gpt*": {"input": 0.15, "output": 0.60, "cache_read": 0.075}, "mock-claude*": {"input": 3, "output": 15}}
QUOTA_PER_USD = 500_000


@dataclass(slots=True)
class Console:
    """A running Weir with billing (and, unless told otherwise, an admin token)."""

    proxy: ProxyHandle
    upstream: MockUpstream
    token: str

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def store(self) -> Store:
        return self.proxy.store  # type: ignore[no-any-return]

    @property
    def admin(self) -> dict[str, str]:
        """The admin API's headers."""
        return {"Authorization": f"Bearer {self.token}"}

    async def user(self, name: str, quota: int = 5 * QUOTA_PER_USD, **key: object) -> str:
        """Create a funded user with one key (options as `Store.create_key`); its clear key."""
        await self.store.create_user(name)
        if quota:
            await self.store.credit(name, quota, note="test funding")
        return await self.key(name, **key)

    async def key(self, user: str, name: str = "main", **options: object) -> str:
        """One more key for `user`; its clear text."""
        clear, digest, hint = generate_key()
        await self.store.create_key(user, digest, name=name, hint=hint, **options)  # type: ignore[arg-type]
        return clear

    async def chat(self, key: str, model: str = "mock-gpt", stream: bool = True) -> int:
        """One chat request through Weir with `key`; its HTTP status (settled when it returns)."""
        body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello"}]}
        async with aiohttp.ClientSession() as s:
            async with s.post(
                self.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            ) as r:
                await r.read()
                status = r.status
        await self.proxy.settled()
        return status

    async def audit_ok(self) -> None:
        await self.proxy.settled()
        report = await self.store.audit(time.time(), 30)
        assert report.ok, report


def browser_session() -> aiohttp.ClientSession:
    """An HTTP client that keeps cookies from 127.0.0.1 (for page tests without a browser)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


ConsoleFactory = Callable[..., Awaitable[Console]]


@pytest_asyncio.fixture
async def console(
    fake_upstream: MockUpstream, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ConsoleFactory]:
    """Factory: `await console(admin=True, backend="sqlite")` → a running Weir with billing
    (on Redis: the suite's private redis-server, under a fresh prefix)."""
    started: list[Console] = []

    async def factory(admin: bool = True, backend: str = "sqlite", **billing: Any) -> Console:
        folder = tmp_path / f"c{len(started)}"
        folder.mkdir()
        overrides: dict[str, Any] = {"admin": {"token": ADMIN_TOKEN}} if admin else {}
        if backend == "redis":
            import uuid

            overrides["store"] = {
                "backend": "redis",
                "url": request.getfixturevalue("redis_url"),
                "prefix": f"weirtest:{uuid.uuid4().hex[:10]}",
            }
        config = proxy_config(fake_upstream.url, folder, **overrides)
        plugin = BillingPlugin(
            BillingConfig(**{"pricing": {"models": PRICES}, "quota_per_usd": QUOTA_PER_USD, **billing})
        )
        handle = await start_proxy(config, plugins=[plugin])
        made = Console(handle, fake_upstream, ADMIN_TOKEN if admin else "")
        started.append(made)
        return made

    yield factory
    for made in started:
        await made.audit_ok()
        await made.proxy.stop()
        drop = getattr(made.store, "drop_all", None)
        if drop is not None:  # Redis: leave nothing behind under the test's prefix
            await made.store.open()
            await drop()
            await made.store.close()


async def admin_client(url: str) -> aiohttp.ClientSession:
    """An HTTP client signed in to the console (close it when done)."""
    import re

    s = browser_session()
    async with s.get(url + "/admin/login") as r:
        found = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert found
    async with s.post(
        url + "/admin/login", data={"csrf": found.group(1), "token": ADMIN_TOKEN}, allow_redirects=False
    ) as r:
        assert r.status == 303, await r.text()
    return s
