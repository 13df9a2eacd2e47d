"""100 concurrent streams by a user who can afford exactly 10 estimates."""

from __future__ import annotations

import asyncio

import aiohttp

from plugins.billing.plugin import BillingPlugin
from proxy import keys
from proxy.context import Endpoint
from tests.e2e.conftest import BilledFactory

BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "go"}], "stream": True, "max_tokens": 1000}


async def test_exactly_ten_admitted(billed: BilledFactory) -> None:
    b = await billed(quota=0)
    # Price one estimate, then fund exactly ten of them.
    plugin = b.proxy.app[keys.PIPELINE].plugins[0]
    assert isinstance(plugin, BillingPlugin)
    price = plugin.table.lookup("mock-gpt")
    assert price is not None
    estimate = plugin.estimator.estimate(
        Endpoint.CHAT, BODY, "mock-gpt", price, plugin.table.multiplier("default", None)
    )
    await b.store.credit(b.user, estimate.quota * 10, note="exactly ten")
    b.upstream.behaviour.pace = 0.01  # keep the admitted streams open while the others arrive

    async def one(s: aiohttp.ClientSession) -> int:
        async with s.post(
            b.proxy.url + "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {b.key}"}
        ) as r:
            await r.read()
            return r.status

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:
        statuses = await asyncio.gather(*(one(s) for _ in range(100)))
    assert statuses.count(200) == 10 and statuses.count(402) == 90
    await b.proxy.settled()
    rows = await b.store.query_logs(user=b.user, limit=200)
    assert len(rows) == 10
    user = await b.store.get_user(b.user)
    assert user is not None
    assert user.balance == estimate.quota * 10 - sum(r.charge for r in rows)
    assert user.used == sum(r.charge for r in rows) and user.reserved == 0
