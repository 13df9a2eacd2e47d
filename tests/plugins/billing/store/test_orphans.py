"""The store contract, part 3: heartbeats, orphan resolution and what audit says about it."""

from __future__ import annotations

from plugins.billing.store.base import HoldState, Plan

from .conftest import DONE, World


async def test_silent_instance_holds_are_expired_once(world: World) -> None:
    key = await world.user("alice", 1000, quota=5000)
    await world.store.heartbeat("i2")
    await world.held("r1", key, 100)
    assert await world.store.checkpoint("r1", 250)  # more was delivered than held
    await world.held("r2", key, 50)
    await world.held("r3", key, 70, instance="i2")
    await world.tick(31, instances=("i2",))  # i1 died 31 s ago

    report = await world.store.audit(world.clock.now, 30)
    assert not report.ok and len(report.orphans) == 2
    assert any("r1" in o and "i1" in o for o in report.orphans)

    done = {r.request_id: r for r in await world.store.resolve_orphans(world.clock.now, 30)}
    assert set(done) == {"r1", "r2"}
    assert (done["r1"].state, done["r1"].charged, done["r1"].first) == (HoldState.EXPIRED, 250, True)
    assert (done["r2"].state, done["r2"].charged) == (HoldState.EXPIRED, 0)
    assert await world.store.resolve_orphans(world.clock.now, 30) == []

    user = await world.store.get_user("alice")
    assert user is not None and (user.balance, user.reserved, user.used, user.request_count) == (750, 70, 250, 1)
    k = await world.store.get_key(key.id)
    assert k is not None and (k.balance, k.reserved, k.used) == (4750, 70, 250)
    logs = {r.request_id: r for r in await world.store.query_logs()}
    assert (logs["r1"].details.end_reason, logs["r1"].details.usage_source, logs["r1"].charge, logs["r1"].estimate) == (
        "orphaned",
        "partial",
        250,
        100,
    )
    assert (logs["r2"].details.end_reason, logs["r2"].details.usage_source, logs["r2"].charge) == (
        "orphaned",
        "none",
        0,
    )
    assert [h.request_id for h in await world.store.open_holds()] == ["r3"]

    late = await world.capture("r1", 999)  # the dead instance's own settlement arrives too late
    assert (late.state, late.charged, late.first) == (HoldState.EXPIRED, 250, False)
    await world.capture("r3", 70)


async def test_live_instance_is_left_alone(world: World) -> None:
    key = await world.user("alice", 1000)
    await world.held("r1", key, 100)
    world.clock.advance(30)  # exactly orphan_after: still alive
    assert await world.store.resolve_orphans(world.clock.now, 30) == []
    assert (await world.store.get_hold("r1")).state is HoldState.OPEN  # type: ignore[union-attr]
    await world.store.heartbeat("i1")
    await world.capture("r1", 10)


async def test_never_seen_instance_and_passed_ttl_are_orphans(world: World) -> None:
    key = await world.user("alice", 1000)
    await world.held("ghost-hold", key, 100, instance="ghost")
    await world.held("short", key, 100, ttl=10)
    await world.held("long", key, 100, ttl=100)
    await world.tick(11)
    done = await world.store.resolve_orphans(world.clock.now, 30)
    assert sorted(r.request_id for r in done) == ["ghost-hold", "short"]
    assert all(r.state is HoldState.EXPIRED and r.charged == 0 for r in done)
    assert (await world.store.get_user("alice")).reserved == 100  # type: ignore[union-attr]
    await world.store.release("long", DONE)


async def test_orphaned_subscription_hold_spills_overage(world: World) -> None:
    key = await world.user("alice", 0)
    await world.store.create_plan(Plan("small", 100, "day"))
    await world.store.grant_subscription("alice", "small", world.clock.now, world.clock.now + 86400 * 30)
    await world.held("r1", key, 80)
    await world.store.checkpoint("r1", 130)
    world.clock.advance(60)
    [res] = await world.store.resolve_orphans(world.clock.now, 30)
    assert (res.charged, res.overage) == (130, 30)
    assert (await world.store.get_user("alice")).balance == -30  # type: ignore[union-attr]
    await world.store.heartbeat("i1")


async def test_zero_checkpoint_is_a_partial_capture(world: World) -> None:
    key = await world.user("alice", 1000)
    await world.held("r1", key, 100)
    await world.store.checkpoint("r1", 0)
    world.clock.advance(60)
    [res] = await world.store.resolve_orphans(world.clock.now, 30)
    assert res.charged == 0
    [row] = await world.store.query_logs()
    assert row.details.usage_source == "partial"
    assert (await world.store.get_user("alice")).request_count == 1  # type: ignore[union-attr]
    await world.store.heartbeat("i1")
