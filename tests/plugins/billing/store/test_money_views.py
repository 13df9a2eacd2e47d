"""What billing's money metrics read from the store, on every backend: every instance's
open holds (count and oldest age) and the orphans the housekeeper resolves."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from plugins.billing.housekeeping import Housekeeper
from plugins.billing.money_metrics import MoneyMetrics, watch_open_holds

from .conftest import World


async def test_open_holds_of_every_instance_are_counted(world: World) -> None:
    """Two holds by two instances, 40 s and 10 s old: the store scope counts both and the
    oldest is 40 s old; after both settle, a new look counts none."""
    key = await world.user("alice", 1000)
    await world.store.heartbeat("i2")
    await world.held("r1", key, 100)
    world.clock.advance(30)
    await world.held("r2", key, 50, instance="i2")
    world.clock.advance(10)
    metrics = MoneyMetrics(500_000, clock=world.clock)
    await _one_look(world, metrics)
    assert metrics.store_holds == (2, 40.0)
    registry = CollectorRegistry()
    registry.register(metrics)
    text = generate_latest(registry).decode()
    assert 'weir_billing_open_holds{scope="store"} 2.0' in text
    assert 'weir_billing_open_hold_oldest_seconds{scope="store"} 40.0' in text
    await world.capture("r1", 60)
    await world.capture("r2", 50)
    await _one_look(world, metrics)
    assert metrics.store_holds == (0, 0.0)


async def test_resolved_orphans_are_counted_by_state(world: World) -> None:
    """A dead instance's hold, resolved by this instance's housekeeper, is counted once."""
    key = await world.user("alice", 1000)
    await world.store.heartbeat("dead")
    await world.held("r1", key, 100, instance="dead")
    metrics = MoneyMetrics(500_000, clock=world.clock)
    keeper = Housekeeper(world.store, "i1", 5.0, 30.0, clock=world.clock, on_resolved=metrics.orphans_resolved)
    world.clock.advance(31)
    assert await keeper.tick() == 1
    assert await keeper.tick() == 0
    assert metrics.orphans == {"expired": 1}
    user = await world.store.get_user("alice")
    assert user is not None and (user.balance, user.reserved) == (1000, 0)


async def _one_look(world: World, metrics: MoneyMetrics) -> None:
    """Run `watch_open_holds` until its first look is done."""
    metrics.store_holds = None
    task = asyncio.create_task(watch_open_holds(world.store, metrics, every=3600))
    try:
        for _ in range(1000):
            if metrics.store_holds is not None:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("watch_open_holds never looked")
    finally:
        task.cancel()
