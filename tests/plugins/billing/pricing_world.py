"""Shared by the pricing tests: billed proxies (one or several on one store) with a funded
user, and a per-request model whose charge is its price × 500 000 whatever the usage."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
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

ADMIN = "admin-token-for-the-pricing-tests"
PRICES: dict[str, Any] = {
    "mock-image": {"per_request": 0.04},
    "mock-gpt*": {"input": 0.15, "output": 0.60, "cache_read": 0.075},
    "mock-embed": {"input": 0.02, "output": 0.02},
}


@dataclass(slots=True)
class Instance:
    """One running proxy with billing."""

    proxy: ProxyHandle
    plugin: BillingPlugin

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def store(self) -> Store:
        return self.proxy.store


@dataclass(slots=True)
class Shop:
    """Proxies sharing one store, and user alice's key."""

    upstream: MockUpstream
    instances: list[Instance] = field(default_factory=list)
    key: str = ""

    @property
    def store(self) -> Store:
        return self.instances[0].store

    async def image(self, i: int = 0) -> int:
        """Generate one image through instance `i`; the charge (quota units) it cost."""
        proxy = self.instances[i].proxy
        before = await self.balance()
        async with aiohttp.ClientSession() as s:
            r = await s.post(
                proxy.url + "/v1/images/generations",
                json={"model": "mock-image", "prompt": "a weir"},
                headers={"Authorization": f"Bearer {self.key}"},
            )
            assert r.status == 200, await r.text()
        await proxy.settled()
        return before - await self.balance()

    async def balance(self) -> int:
        for inst in self.instances:
            await inst.proxy.settled()
        user = await self.store.get_user("alice")
        assert user is not None
        return user.balance


ShopFactory = Callable[..., Awaitable[Shop]]


@pytest_asyncio.fixture
async def shop(
    backend: str, fake_upstream: MockUpstream, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ShopFactory]:
    """`await shop(instances=2, **billing_config)`: proxies on one store (SQLite file or
    Redis prefix), alice funded with 10 M units and one key."""
    started: list[Instance] = []

    async def factory(
        instances: int = 1,
        models: dict[str, Any] | None = None,
        upstreams: list[dict[str, Any]] | None = None,
        **config: Any,
    ) -> Shop:
        store_cfg: dict[str, Any] = {"backend": "sqlite", "path": str(tmp_path / "weir.db")}
        if backend == "redis":
            store_cfg = {
                "backend": "redis",
                "url": request.getfixturevalue("redis_url"),
                "prefix": f"weirtest:{uuid.uuid4().hex[:10]}",
            }
        more: dict[str, Any] = {}
        if upstreams is not None:  # each gets the fake upstream's address
            more["upstreams"] = [{"type": "mock", "base_url": fake_upstream.url, **u} for u in upstreams]
        cfg = proxy_config(fake_upstream.url, tmp_path, store=store_cfg, admin={"token": ADMIN}, **more)
        result = Shop(fake_upstream)
        for _ in range(instances):
            settings = {"pricing": {"models": PRICES if models is None else models}, **config}
            plugin = BillingPlugin(BillingConfig(**settings))
            inst = Instance(await start_proxy(cfg, plugins=[plugin]), plugin)
            started.append(inst)
            result.instances.append(inst)
        await result.store.create_user("alice")
        await result.store.credit("alice", 10_000_000, note="test funding")
        clear, digest, hint = generate_key()
        await result.store.create_key("alice", digest, name="test", hint=hint)
        result.key = clear
        return result

    yield factory
    for inst in reversed(started):
        await inst.proxy.settled()
        report = await inst.store.audit(time.time(), 30)
        assert report.ok, report
        await inst.proxy.stop()
    if started and backend == "redis":
        store: Any = started[0].store
        await store.open()
        await store.drop_all()
        await store.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each test runs on both stores (Redis: the suite's private redis-server)."""
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    return str(request.param)
