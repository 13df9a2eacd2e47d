"""The async-task contract, on every backend: a task owns its hold; it ends exactly once
(capture or release, with its log row) whoever races to end it; the orphan rule never
touches it; polls are leased; and the audit sees a task hold without a live task."""

from __future__ import annotations

import asyncio

import pytest

from plugins.billing.store.base import HoldState, LogDetails, StoreError
from plugins.billing.store.tasks import TASK_OWNER, Task, TaskState

from .conftest import AUDIT_ORPHAN_AFTER, START, Backend, FakeClock, World

DONE = LogDetails(end_reason="completed", usage_source="task", model="sora-2", upstream="up", seconds=8)
FAILED = LogDetails(
    end_reason="failed", usage_source="none", model="sora-2", upstream="up", error="upstream: no", seconds=8
)


def task(tid: str, user: str, key_id: str, amount: int, now: float = START) -> Task:
    return Task(
        id=tid,
        user=user,
        key_id=key_id,
        api="videos",
        model="sora-2",
        upstream="up",
        upstream_model="sora-2",
        upstream_id="up_" + tid,
        amount=amount,
        seconds=8,
        terms='{"v": 1}',
        key_name="k",
        group="default",
        created_at=now,
        next_poll_at=now + 5,
    )


async def opened(world: World, tid: str, amount: int, balance: int = 10_000, quota: int | None = None) -> Task:
    key = await world.user("alice", balance, quota=quota)
    await world.held(tid, key, amount)
    t = task(tid, "alice", key.id, amount, world.clock.now)
    assert await world.store.open_task(t)
    return t


async def test_open_hands_the_hold_to_the_task(world: World) -> None:
    t = await opened(world, "video_1", 800)
    hold = await world.store.get_hold("video_1")
    assert hold is not None and (hold.state, hold.instance_id, hold.amount) == (HoldState.OPEN, TASK_OWNER, 800)
    got = await world.store.get_task("video_1")
    assert got == t and got.open
    assert not await world.store.open_task(t), "a second open writes nothing"
    assert [x.id for x in await world.store.list_tasks(user="alice")] == ["video_1"]
    assert await world.store.list_tasks(state=TaskState.ENDED) == []
    await world.store.end_task("video_1", None, FAILED, "failed", "failed", "")


async def test_open_needs_an_open_hold(world: World) -> None:
    key = await world.user("alice", 1000)
    assert not await world.store.open_task(task("video_x", "alice", key.id, 10))
    assert await world.store.get_task("video_x") is None
    await world.held("video_y", key, 10)
    await world.capture("video_y", 10)
    assert not await world.store.open_task(task("video_y", "alice", key.id, 10))


async def test_completed_captures_with_one_log_row(world: World) -> None:
    await opened(world, "video_1", 800, quota=5000)
    end = await world.store.end_task("video_1", 650, DONE, "completed", "completed", "")
    assert end.first and end.resolution.state is HoldState.CAPTURED and end.resolution.charged == 650
    assert (end.task.state, end.task.end_reason, end.task.charge, end.task.status) == (
        TaskState.ENDED,
        "completed",
        650,
        "completed",
    )
    user = await world.store.get_user("alice")
    assert user is not None and (user.balance, user.reserved, user.used, user.request_count) == (
        10_000 - 650,
        0,
        650,
        1,
    )
    (row,) = await world.store.query_logs(user="alice")
    assert (row.request_id, row.estimate, row.charge, row.details.seconds, row.details.end_reason) == (
        "video_1",
        800,
        650,
        8,
        "completed",
    )
    again = await world.store.end_task("video_1", None, FAILED, "failed", "failed", "")
    assert not again.first and again.resolution.charged == 650 and again.task.end_reason == "completed"
    assert len(await world.store.query_logs(user="alice")) == 1


async def test_a_refund_restores_wallet_key_and_counters(world: World) -> None:
    t = await opened(world, "video_1", 800, quota=5000)
    key = await world.store.get_key(t.key_id)
    assert key is not None and key.reserved == 800
    end = await world.store.end_task("video_1", None, FAILED, "failed", "failed", "upstream: no")
    assert end.first and (end.resolution.state, end.resolution.charged, end.task.charge) == (HoldState.RELEASED, 0, 0)
    user = await world.store.get_user("alice")
    key = await world.store.get_key(t.key_id)
    assert user is not None and (user.balance, user.reserved, user.used, user.request_count) == (10_000, 0, 0, 0)
    assert key is not None and (key.balance, key.reserved, key.used, key.request_count) == (5000, 0, 0, 0)
    (row,) = await world.store.query_logs(user="alice")
    assert (row.charge, row.estimate, row.details.end_reason, row.details.error) == (0, 800, "failed", "upstream: no")


async def test_completion_above_the_hold_is_charged(world: World) -> None:
    await opened(world, "video_1", 800)
    end = await world.store.end_task("video_1", 1200, DONE, "completed", "completed", "")
    assert end.resolution.charged == 1200
    user = await world.store.get_user("alice")
    assert user is not None and user.balance == 10_000 - 1200


async def test_racing_ends_bill_once(world: World, backend: Backend, clock: FakeClock) -> None:
    key = await world.user("alice", 1_000_000)
    for i in range(20):
        await world.held(f"video_{i}", key, 100)
        assert await world.store.open_task(task(f"video_{i}", "alice", key.id, 100))
    peers = [world.store] + [await backend.open_peer(clock) for _ in range(3)]

    async def end(i: int, p: int) -> bool:
        capture = p % 2 == 0
        log = DONE if capture else FAILED
        result = await peers[p].end_task(f"video_{i}", 100 if capture else None, log, "completed", "completed", "")
        return result.first

    firsts = await asyncio.gather(*(end(i, p) for i in range(20) for p in range(4)))
    assert sum(firsts) == 20
    rows = await world.store.query_logs(user="alice", limit=100)
    assert sorted(r.request_id for r in rows) == sorted(f"video_{i}" for i in range(20))
    assert all((r.charge, r.details.end_reason) in ((100, "completed"), (0, "failed")) for r in rows)
    user = await world.store.get_user("alice")
    assert user is not None and user.reserved == 0 and user.used == sum(r.charge for r in rows)


async def test_the_orphan_rule_leaves_task_holds_alone(world: World, clock: FakeClock) -> None:
    await opened(world, "video_1", 800)
    clock.advance(7 * 86400)  # the taking instance is long dead and the hold's ttl passed
    assert await world.store.resolve_orphans(clock.now, 30) == []
    hold = await world.store.get_hold("video_1")
    assert hold is not None and hold.state is HoldState.OPEN
    report = await world.store.audit(clock.now, AUDIT_ORPHAN_AFTER, stuck_after=300)
    assert report.ok, report
    await world.store.end_task("video_1", None, FAILED, "expired", "expired", "")


async def test_claims_lease_each_task_to_one_poller(world: World, backend: Backend, clock: FakeClock) -> None:
    key = await world.user("alice", 100_000)
    for i in range(10):
        await world.held(f"video_{i}", key, 10)
        assert await world.store.open_task(task(f"video_{i}", "alice", key.id, 10, clock.now))
    assert await world.store.claim_tasks(clock.now, 30, 100) == [], "none is due before its first poll"
    clock.advance(5)
    a, b = world.store, await backend.open_peer(clock)
    got_a, got_b = await asyncio.gather(a.claim_tasks(clock.now, 30, 6), b.claim_tasks(clock.now, 30, 6))
    ids_a, ids_b = {t.id for t in got_a}, {t.id for t in got_b}
    assert not ids_a & ids_b and len(ids_a | ids_b) == 10
    assert await a.claim_tasks(clock.now + 29, 30, 100) == [], "leased"
    assert await a.note_task("video_0", "in_progress", 40, 0, 0, clock.now + 2)
    clock.advance(2)
    (due,) = await b.claim_tasks(clock.now, 30, 100)
    assert (due.id, due.status, due.progress, due.polls) == ("video_0", "in_progress", 40, 1)
    await world.store.end_task("video_0", 10, DONE, "completed", "completed", "")
    assert not await a.note_task("video_0", "in_progress", 50, 0, 0, clock.now), "ended: no more notes"
    clock.advance(60)
    assert {t.id for t in await a.claim_tasks(clock.now, 30, 100)} == {f"video_{i}" for i in range(1, 10)}
    for i in range(1, 10):
        await world.store.end_task(f"video_{i}", None, FAILED, "failed", "failed", "")


async def test_the_audit_finds_a_task_hold_without_a_task(world: World, clock: FakeClock) -> None:
    t = await opened(world, "video_1", 800)
    # An operator resolving the task's hold behind the task's back leaves an open task
    # without its hold: the audit says so.
    await world.store.release("video_1", FAILED)
    report = await world.store.audit(clock.now, AUDIT_ORPHAN_AFTER)
    assert any("task video_1 is open" in m for m in report.mismatches), report
    end = await world.store.end_task(t.id, None, FAILED, "failed", "failed", "")
    assert end.first and end.resolution.state is HoldState.RELEASED and not end.resolution.first
    assert (await world.store.audit(clock.now, AUDIT_ORPHAN_AFTER)).ok


async def test_ending_an_unknown_task_is_an_error(world: World) -> None:
    with pytest.raises(StoreError):
        await world.store.end_task("video_nope", None, FAILED, "failed", "failed", "")
    assert await world.store.get_task("video_nope") is None
