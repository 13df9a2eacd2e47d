"""Task billing across real `weir serve` processes sharing one store, on SQLite and Redis.

* Two instances poll the same 50 tasks while clients read them through both: every task is
  billed exactly once (one consume-log row, the wallet moved by exactly 50 prices).
* The instance that took a task is SIGKILLed while the task runs; the restarted instance, or
  a live peer, finishes it and bills it once, and the orphan rule (which does run meanwhile,
  on another hold) never releases the task's hold.
* Killed between the hold and the task's opening (mid-submit): the orphan rule releases the
  hold, as for any request, and no task exists.

The mock upstream runs in the test process, so its tasks outlive the killed instance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from plugins.billing.store.base import Hold, HoldState
from proxy.mock.upstream import MockUpstream
from proxy.testing import unique_prefix
from tests.reliability.procs import FUNDS, World, billing_plugin, killer_plugin, wait_for

pytestmark = pytest.mark.slow

ORPHAN_AFTER, HEARTBEAT = 1.5, 0.2
#: $0.001 per second, 4 s: 2000 units a task.
PRICE = 2000
PRICING = {"models": {"mock-video": {"per_second": "0.001"}, "mock-gpt*": {"input": 10, "output": 100}}}


def plugins(**tasks: Any) -> tuple[dict[str, Any], ...]:
    return (billing_plugin(pricing=PRICING, tasks={"poll_every": 0.1, "poll_timeout": 1.0, **tasks}),)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def world(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    timing = {"orphan_after": ORPHAN_AFTER, "heartbeat_every": HEARTBEAT}
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        store_cfg = {"backend": "redis", "url": url, "prefix": unique_prefix(), **timing}
    else:
        store_cfg = {"backend": "sqlite", "path": str(tmp_path / "weir.db"), **timing}
    mock = MockUpstream()
    await mock.start()
    w = World(tmp_path, mock, store_cfg)
    try:
        yield w
    finally:
        await w.close()
        await mock.stop()


async def call(url: str, key: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method,
            url + path,
            headers={"Authorization": f"Bearer {key}"},
            timeout=aiohttp.ClientTimeout(total=30),
            **kw,
        ) as r,
    ):
        return r.status, await r.json(content_type=None)


async def submit(url: str, key: str, prompt: str = "a weir") -> str:
    status, video = await call(url, key, "POST", "/v1/videos", json={"prompt": prompt, "model": "mock-video"})
    assert status == 200, video
    return str(video["id"])


async def all_ended(world: World, ids: list[str], timeout: float) -> None:
    async def done() -> bool:
        tasks = [await world.store.get_task(i) for i in ids]
        return all(t is not None and not t.open for t in tasks)

    await wait_for(done, timeout, f"{len(ids)} tasks to end", every=0.2)


async def test_two_instances_and_their_clients_bill_50_tasks_once(world: World) -> None:
    world.mock.tasks.step_seconds = 0.3  # each task completes about 0.9 s after its submit
    a = await world.start("a", plugins())
    b = await world.start("b", plugins())
    urls = [a.url, b.url]
    ids = await asyncio.gather(*(submit(urls[i % 2], world.key, f"task {i}") for i in range(50)))
    assert len(set(ids)) == 50

    async def read_until_done(i: int, task_id: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = await call(urls[(i + 1) % 2], world.key, "GET", f"/v1/videos/{task_id}")
            assert status == 200 and body["id"] == task_id
            if body["status"] == "completed":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{task_id} never completed")

    # Only the even tasks have a reader: the pollers race the readers on those, and end the
    # odd ones alone.
    await asyncio.gather(*(read_until_done(i, t) for i, t in enumerate(ids) if i % 2 == 0))
    await all_ended(world, ids, 60)
    for task_id in ids:
        row = await world.row(task_id)
        assert (row.charge, row.estimate, row.details.end_reason, row.details.seconds) == (PRICE, PRICE, "completed", 4)
        task = await world.store.get_task(task_id)
        assert task is not None and (task.end_reason, task.charge) == ("completed", PRICE)
    await world.assert_wallet(50 * PRICE, 50)
    user = await world.store.get_user("alice")
    assert user is not None and user.request_count == 50
    await world.assert_audit("a")


RESOLVERS = pytest.mark.parametrize("resolver", ["restart", "peer"])


@RESOLVERS
async def test_killed_while_its_task_runs(world: World, resolver: str) -> None:
    world.mock.tasks.script = "stuck"  # runs until the test finishes it
    victim = await world.start("a", plugins())
    if resolver == "peer":
        await world.start("b", plugins())
    task_id = await submit(victim.url, world.key)
    task = await world.store.get_task(task_id)
    assert task is not None and task.open
    # A hold of an instance that never lived: the orphan rule's sweep resolves it, which
    # shows that the sweep ran while the task's hold was open.
    ghost = await world.store.hold(
        "ghost-1",
        "alice",
        (await world.store.list_keys("alice"))[0].id,
        10,
        None,
        "pv",
        60,
        "ghost-instance",
        "mock-gpt",
    )
    assert isinstance(ghost, Hold)
    victim.kill()
    live = "a" if resolver == "restart" else "b"
    if resolver == "restart":
        await world.start("a")

    async def ghost_expired() -> bool:
        hold = await world.store.get_hold("ghost-1")
        return hold is not None and hold.state is HoldState.EXPIRED

    await wait_for(ghost_expired, ORPHAN_AFTER + 30, "the orphan sweep of the live instance", every=0.1)
    hold = await world.store.get_hold(task_id)
    assert hold is not None and hold.state is HoldState.OPEN, "the orphan rule must leave a task's hold alone"
    (upstream_id,) = list(world.mock.tasks.tasks)
    world.mock.tasks.finish(upstream_id, "completed")
    await all_ended(world, [task_id], 30)
    row = await world.row(task_id)
    assert (row.charge, row.details.end_reason) == (PRICE, "completed")
    await world.assert_wallet(PRICE, 2)  # the task, and the ghost's release
    await world.assert_audit(live)


async def test_killed_mid_submit_the_hold_is_an_ordinary_orphan(world: World) -> None:
    victim = await world.start("a", (*plugins(), killer_plugin("on_body", 0, marker=world.marker())))
    await world.start("b", plugins())
    with pytest.raises(aiohttp.ClientError):
        await submit(victim.url, world.key)
    task_id = await world.died_at(victim, "on_body", 0)
    assert task_id  # the request id; the hold carries the task's id
    await world.no_open_holds(ORPHAN_AFTER + 30)
    (row,) = await world.store.query_logs(user="alice")
    assert (row.charge, row.estimate, row.details.end_reason) == (0, PRICE, "orphaned")
    assert await world.store.list_tasks() == []
    await world.assert_wallet(0, 1)
    await world.assert_audit("b")
