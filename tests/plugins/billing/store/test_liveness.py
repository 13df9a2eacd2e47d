"""The store contract, part 4: hold liveness (checkpoints stamp `touched_at` and extend the
ttl), stuck holds in the audit, and hand resolutions with their ledger note."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from plugins.billing.store.base import Hold, HoldState, LogDetails, Plan
from plugins.billing.store.rules import HAND_RESOLVED
from plugins.billing.store.sqlite.schema import MIGRATIONS
from plugins.billing.store.sqlite.store import SQLiteStore

from .conftest import DONE, START, Backend, World


async def _hold(world: World, rid: str) -> Hold:
    hold = await world.store.get_hold(rid)
    assert hold is not None
    return hold


async def test_checkpoint_stamps_touched_at_and_extends_the_ttl(world: World) -> None:
    key = await world.user("alice", 1000)
    held = await world.held("r1", key, 100, ttl=100)
    assert (held.touched_at, held.expires_at, held.last_sign_of_life) == (None, START + 100, START)
    assert (await _hold(world, "r1")).touched_at is None
    await world.tick(40)
    assert await world.store.checkpoint("r1", 5)
    hold = await _hold(world, "r1")
    assert (hold.checkpoint, hold.touched_at, hold.expires_at) == (5, START + 40, START + 140)
    await world.tick(90)  # past the hold's first expiry, within the extended one
    assert await world.store.resolve_orphans(world.clock.now, 30) == []
    assert await world.store.checkpoint("r1", 9)  # the ttl is still 100, not 100 + 40
    hold = await _hold(world, "r1")
    assert (hold.checkpoint, hold.touched_at, hold.expires_at) == (9, START + 130, START + 230)
    assert [h.touched_at for h in await world.store.open_holds()] == [START + 130]
    await world.capture("r1", 9)
    await world.tick(10)
    assert not await world.store.checkpoint("r1", 50)  # resolved: nothing moves
    hold = await _hold(world, "r1")
    assert (hold.state, hold.checkpoint, hold.touched_at) == (HoldState.CAPTURED, 9, START + 130)


async def test_an_untouched_hold_still_expires_at_its_ttl(world: World) -> None:
    key = await world.user("alice", 1000)
    await world.held("kept", key, 100, ttl=50)
    await world.held("lapsed", key, 100, ttl=50)
    await world.tick(30)
    await world.store.checkpoint("kept", 0)
    await world.tick(30)
    done = await world.store.resolve_orphans(world.clock.now, 30)
    assert [r.request_id for r in done] == ["lapsed"]
    await world.store.release("kept", DONE)


async def test_audit_reports_holds_without_a_sign_of_life_as_stuck(world: World) -> None:
    key = await world.user("alice", 1000, quota=800)
    await world.held("stale", key, 100)
    await world.held("checkpointed", key, 100)
    await world.tick(200)
    await world.store.checkpoint("checkpointed", 40)
    await world.held("recent", key, 100)
    await world.tick(150)  # i1 is alive; "stale" was taken 350 s ago and never touched

    assert (await world.store.audit(world.clock.now, 30)).ok  # without stuck_after: as before
    report = await world.store.audit(world.clock.now, 30, stuck_after=300)
    assert not report.ok and report.orphans == [] and report.mismatches == []
    [line] = report.stuck
    for part in ("stale", "alice", key.id, "amount 100", "checkpoint none", "i1", "350s"):
        assert part in line, (part, line)
    assert len((await world.store.audit(world.clock.now, 30, stuck_after=100)).stuck) == 3
    assert (await world.store.audit(world.clock.now, 30, stuck_after=400)).ok

    await world.store.release("stale", DONE)
    assert (await world.store.audit(world.clock.now, 30, stuck_after=300)).ok
    await world.capture("checkpointed", 40)
    await world.capture("recent", 10)


async def test_a_stuck_hold_of_a_dead_instance_is_an_orphan_too(world: World) -> None:
    key = await world.user("alice", 1000)
    await world.held("gone", key, 100, instance="ghost")
    await world.tick(400)
    report = await world.store.audit(world.clock.now, 30, stuck_after=300)
    assert len(report.orphans) == 1 and len(report.stuck) == 1
    assert "gone" in report.stuck[0] and "never seen" in report.stuck[0]
    await world.store.resolve_orphans(world.clock.now, 30)
    assert (await world.store.audit(world.clock.now, 30, stuck_after=300)).ok


async def test_instances_lists_every_heartbeat(world: World) -> None:
    await world.store.heartbeat("i2")
    await world.tick(5)
    assert await world.store.instances() == {"i1": START + 5, "i2": START}


def _notes(backend: Backend, user: str, request_id: str) -> list[str]:
    """The ledger notes of `request_id`'s entries, read behind the store's back."""
    if backend.name == "sqlite":
        with sqlite3.connect(backend.spec[1]) as raw:
            return [
                n for (n,) in raw.execute("SELECT note FROM ledger WHERE request_id = ? ORDER BY id", (request_id,))
            ]
    import redis

    from plugins.billing.store.redis.layout import Layout

    client = redis.Redis.from_url(backend.spec[1], decode_responses=True)
    try:
        entries = [json.loads(e) for e in client.lrange(Layout(backend.spec[2]).ledger(user), 0, -1)]
    finally:
        client.close()
    return [e.get("note", "") for e in entries if e.get("ref") == request_id]


@pytest.mark.parametrize("funding", ["wallet", "subscription"])
async def test_a_hand_resolution_notes_the_ledger_and_the_log(world: World, backend: Backend, funding: str) -> None:
    key = await world.user("alice", 1000, quota=500)
    if funding == "subscription":
        await world.store.create_plan(Plan("small", 1000, "day"))
        await world.store.grant_subscription("alice", "small", world.clock.now, world.clock.now + 86400)
    await world.held("r1", key, 100)
    await world.held("r2", key, 100)
    await world.store.checkpoint("r1", 30)
    by_hand = LogDetails(end_reason=HAND_RESOLVED, usage_source="partial", error="capture lost to a Redis failover")
    first = await world.store.capture("r1", 30, by_hand)
    again = await world.store.capture("r1", 30, by_hand)
    assert (first.first, again.first, again.charged) == (True, False, 30)
    await world.capture("r2", 20)

    notes = _notes(backend, "alice", "r1")
    assert "resolved by hand: capture lost to a Redis failover" in notes
    assert not any(_notes(backend, "alice", "r2")[1:])  # the capture: no note on any entry
    rows = {r.request_id: r for r in await world.store.query_logs()}
    assert (rows["r1"].details.end_reason, rows["r1"].details.error, rows["r1"].charge) == (
        HAND_RESOLVED,
        "capture lost to a Redis failover",
        30,
    )


async def test_a_version_3_database_gains_touched_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plugins.billing.store.sqlite import schema as sqlite_schema

    path = str(tmp_path / "w.db")
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", MIGRATIONS[:3])
    to_user = sqlite_schema.to_user
    monkeypatch.setattr(sqlite_schema, "to_user", lambda r: to_user({**dict(zip(r.keys(), r)), "disabled": 0}))
    store = SQLiteStore(path, checkpoint_every=0, clock=lambda: START)
    await store.open()
    with sqlite3.connect(path) as raw:  # a funded user as version 3 wrote one (today's reads newer columns)
        raw.execute(
            "INSERT INTO users(name, grp, preference, balance, created_at)"
            " VALUES ('alice', 'default', 'subscription_first', 1000, ?)",
            (START,),
        )
        raw.execute(
            "INSERT INTO ledger(ts, account, kind, d_balance, d_reserved, note)"
            " VALUES (?, 'wallet:alice', 'credit', 1000, 0, '')",
            (START,),
        )
    key = await store.create_key("alice", "h-alice")
    assert isinstance(await store.hold("old", "alice", key.id, 100, None, "pv", 60, "i1", "m"), Hold)
    await store.close()

    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", MIGRATIONS)
    monkeypatch.setattr(sqlite_schema, "to_user", to_user)
    store = SQLiteStore(path, checkpoint_every=0, clock=lambda: START + 20)
    await store.open()
    try:
        with sqlite3.connect(path) as raw:
            assert max(v for (v,) in raw.execute("SELECT version FROM schema_version")) == MIGRATIONS[-1][0]
        old = await store.get_hold("old")
        assert old is not None and (old.touched_at, old.expires_at) == (None, START + 60)
        assert await store.checkpoint("old", 7)
        old = await store.get_hold("old")
        assert old is not None and (old.touched_at, old.expires_at) == (START + 20, START + 80)
        assert len((await store.audit(START + 400, 1e9, stuck_after=300)).stuck) == 1
        await store.capture("old", 7, DONE)
        assert (await store.audit(START + 400, 1e9, stuck_after=300)).ok
    finally:
        await store.close()
