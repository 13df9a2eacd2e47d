"""End-to-end billing fixtures: a real Weir with the billing plugin, a real store (SQLite,
and Redis where available), a funded user and a key, and the official SDKs as clients."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import pytest_asyncio

from plugins.billing.apikeys import generate_key
from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from plugins.billing.store.base import Store
from proxy.mock.upstream import MockUpstream
from proxy.testing import ProxyHandle, proxy_config, start_proxy

PRICES = {
    "mock-gpt*": {"input": 0.15, "output": 0.60, "cache_read": 0.075},
    "mock-claude*": {"input": 3, "output": 15, "cache_read": 0.30, "cache_write": 3.75, "cache_write_1h": 6},
    "mock-gemini*": {"input": 0.30, "output": 2.50},
    "mock-embed": {"input": 0.02, "output": 0.02},
    "mock-image": {"per_request": 0.04},
    "mock-incomplete*": {"input": 0.15, "output": 0.60},
}


@dataclass(slots=True)
class Billed:
    """A running billed proxy with one funded user."""

    proxy: ProxyHandle
    upstream: MockUpstream
    key: str
    user: str

    @property
    def store(self) -> Store:
        return self.proxy.store

    def openai(self, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.proxy.openai_base, api_key=self.key, max_retries=0, **kw)

    def anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.proxy.url, api_key=self.key, max_retries=0)

    async def balance(self) -> int:
        await self.proxy.settled()
        user = await self.store.get_user(self.user)
        assert user is not None
        return user.balance

    async def last_log(self) -> Any:
        await self.proxy.settled()
        rows = await self.store.query_logs(user=self.user, limit=1)
        assert rows, "no consume log row"
        return rows[0]

    async def audit_ok(self) -> None:
        await self.proxy.settled()
        report = await self.store.audit(time.time(), 30)
        assert report.ok, report


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each billed test runs on both stores (Redis: the suite's private redis-server)."""
    if request.param == "redis":
        request.getfixturevalue("redis_url")  # skip (or fail) here, before the proxy starts
    return str(request.param)


BilledFactory = Callable[..., Awaitable[Billed]]


@pytest_asyncio.fixture
async def billed(
    backend: str, fake_upstream: MockUpstream, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[BilledFactory]:
    """Factory: `await billed(usd=1, server={...}, upstreams=[...], routing={...}, **billing_config)`
    → a Billed with a funded user."""
    started: list[Billed] = []
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else ""

    async def factory(
        quota: int = 500_000,
        user: str = "alice",
        key_quota: int | None = None,
        store_overrides: dict[str, Any] | None = None,
        server: dict[str, Any] | None = None,
        upstreams: list[dict[str, Any]] | None = None,
        routing: dict[str, Any] | None = None,
        **config: Any,
    ) -> Billed:
        store_cfg: dict[str, Any] = {}
        if backend == "redis":
            import uuid

            store_cfg = {"backend": "redis", "url": redis_url, "prefix": f"weirtest:{uuid.uuid4().hex[:10]}"}
        store_cfg.update(store_overrides or {})
        overrides: dict[str, Any] = {"store": store_cfg} if store_cfg else {}
        if server:
            overrides["server"] = server
        if upstreams is not None:
            overrides["upstreams"] = upstreams
        if routing is not None:
            overrides["routing"] = routing
        cfg = proxy_config(fake_upstream.url, tmp_path, **overrides)
        plugin = BillingPlugin(BillingConfig(**{"pricing": {"models": PRICES}, **config}))
        handle = await start_proxy(cfg, plugins=[plugin])
        store = handle.store
        await store.create_user(user)
        if quota:
            await store.credit(user, quota, note="test funding")
        clear, digest, hint = generate_key()
        await store.create_key(user, digest, name="test", quota=key_quota, hint=hint)
        b = Billed(handle, fake_upstream, clear, user)
        started.append(b)
        return b

    yield factory
    for b in started:
        await b.audit_ok()
        await b.proxy.stop()
        drop = getattr(b.store, "drop_all", None)
        if drop is not None:
            await b.store.open()
            await drop()
            await b.store.close()
