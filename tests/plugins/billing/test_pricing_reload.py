"""Price edits while serving (docs/billing-rules.md §9), with money: every instance charges a
new version within 5 s without a restart, and a hold made before an edit settles at the
price it was made with while a request after the edit pays the new one.

Runs on both stores: two proxies on one SQLite file, and two on one Redis prefix.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from plugins.billing.store.base import PriceVersion
from tests.plugins.billing.pricing_world import PRICES, Shop, ShopFactory, backend, shop  # noqa: F401

OLD, NEW = 20_000, 25_000  # mock-image at 0.04 and 0.05 USD per request, × 500 000
EDIT = {**PRICES, "mock-image": {"per_request": "0.05"}}


async def until(predicate: object, deadline: float) -> float:
    """Poll `predicate()` until true; the seconds it took (fails after `deadline` seconds)."""
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - start < deadline, f"not true within {deadline} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_an_edit_on_one_instance_is_charged_by_the_other_within_5_s(shop: ShopFactory) -> None:
    world: Shop = await shop(instances=2)
    a, b = world.instances
    assert await world.image(1) == OLD
    saved = await a.plugin.book.save(a.store, 1, EDIT, "test")
    assert isinstance(saved, PriceVersion) and saved.number == 2
    assert await world.image(0) == NEW  # the saving instance charges it at once
    # The other instance polls every second (price_poll_every): well within the 5 s of §9.
    await until(lambda: b.plugin.book.current.number == 2, 5.0)
    assert await world.image(1) == NEW
    rows = await world.store.query_logs(user="alice", limit=3)
    assert [r.price_version.split(":")[0] for r in rows] == ["v2", "v2", "v1"]


async def test_a_hold_made_before_an_edit_settles_at_its_old_price(shop: ShopFactory) -> None:
    world = await shop(instances=1)
    inst, store = world.instances[0], world.store
    before = await world.balance()
    # Request A is held at 0.04 USD, then the upstream takes a while to answer.
    world.upstream.behaviour.stall_before_headers = 2.0

    async def request_a() -> int:
        async with aiohttp.ClientSession() as s:
            r = await s.post(
                inst.url + "/v1/images/generations",
                json={"model": "mock-image", "prompt": "a"},
                headers={"Authorization": f"Bearer {world.key}"},
            )
            return r.status

    task = asyncio.create_task(request_a())
    deadline = time.monotonic() + 10
    while not await store.open_holds():
        assert time.monotonic() < deadline, "request A was never held"
        await asyncio.sleep(0.02)
    world.upstream.behaviour.stall_before_headers = 0.0
    saved = await inst.plugin.book.save(store, 1, EDIT, "test")
    assert isinstance(saved, PriceVersion)
    await world.image()  # request B, made after the edit while A is still held
    assert await task == 200
    assert before - await world.balance() == OLD + NEW
    rows = {r.charge: r.price_version.split(":")[0] for r in await store.query_logs(user="alice", limit=2)}
    assert rows == {OLD: "v1", NEW: "v2"}
