"""`Slots`, the bound on a Redis store's commands in flight (plugins.billing.store.redis.slots)."""

from __future__ import annotations

import asyncio

import pytest

from plugins.billing.store.redis.slots import Slots


async def test_a_slot_given_back_goes_to_the_oldest_waiter_before_any_newcomer() -> None:
    slots = Slots(1)
    assert slots.take() and not slots.take()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await slots.wait(5)
        order.append(name)
        slots.release()

    first = asyncio.create_task(waiter("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(waiter("second"))
    await asyncio.sleep(0)
    slots.release()
    assert not slots.take()  # handed over to "first", not free for a newcomer
    await asyncio.gather(first, second)
    assert order == ["first", "second"]
    assert slots.take() and not slots.take()


async def test_a_wait_that_times_out_holds_no_slot_and_leaves_the_queue() -> None:
    slots = Slots(1)
    await slots.acquire()
    with pytest.raises(TimeoutError):
        await slots.wait(0.01)
    slots.release()
    assert slots.take()


async def test_a_cancelled_waiter_is_passed_over() -> None:
    slots = Slots(1)
    assert slots.take()
    gone = asyncio.create_task(slots.wait(5))
    await asyncio.sleep(0)
    stays = asyncio.create_task(slots.wait(5))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    slots.release()
    await stays  # got the slot
    assert not slots.take()
    slots.release()
    assert slots.take()
