"""Races: concurrent holds on one wallet, resolutions racing the orphan sweep, two processes.

Every race uses several store objects on the same data (for SQLite: several connections to
one file; for Redis: several clients on one prefix), so the backend, not one connection's
queue, has to serialise them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from plugins.billing.store.base import Hold, HoldRefusal, HoldState, Refusal, Resolution

from .conftest import DONE, Backend, FakeClock, World

ROOT = Path(__file__).resolve().parents[4]


async def test_200_concurrent_holds_exactly_37_fit(world: World, backend: Backend, clock: FakeClock) -> None:
    key = await world.user("alice", 37 * 10)
    peers = [world.store] + [await backend.open_peer(clock) for _ in range(4)]

    async def attempt(i: int) -> Hold | HoldRefusal:
        peer = peers[i % len(peers)]
        return await peer.hold(f"r{i}", "alice", key.id, 10, None, "pv1", 3600, "i1", "gpt-4o")

    results = await asyncio.gather(*(attempt(i) for i in range(200)))
    won = [r for r in results if isinstance(r, Hold)]
    lost = [r for r in results if isinstance(r, HoldRefusal)]
    assert (len(won), len(lost)) == (37, 163)
    assert all(r.reason is Refusal.INSUFFICIENT_WALLET and r.available < 10 for r in lost)
    user = await world.store.get_user("alice")
    assert user is not None and (user.reserved, user.available) == (370, 0)
    for i, hold in enumerate(won):
        if i % 2:
            await peers[i % 5].capture(hold.request_id, 10, DONE)
        else:
            await peers[i % 5].release(hold.request_id, DONE)
    assert (await world.store.get_user("alice")).balance == 370 - 10 * (len(won) // 2)  # type: ignore[union-attr]


async def test_resolutions_racing_the_orphan_sweep_resolve_once(
    world: World, backend: Backend, clock: FakeClock
) -> None:
    key = await world.user("alice", 100_000, quota=100_000)
    capturer, releaser, sweeper = [await backend.open_peer(clock) for _ in range(3)]
    rids = [f"r{i}" for i in range(25)]
    for rid in rids:
        await world.held(rid, key, 100, instance="dead")  # never heartbeats: an orphan at once
        await world.store.checkpoint(rid, 80)

    async def sweep() -> list[Resolution]:
        return await sweeper.resolve_orphans(clock.now, 30)

    outcomes = await asyncio.gather(
        *(capturer.capture(rid, 60, DONE) for rid in rids),
        *(releaser.release(rid, DONE) for rid in rids),
        sweep(),
        sweep(),
    )
    flat: list[Resolution] = []
    for item in outcomes:
        if isinstance(item, Resolution):
            flat.append(item)
        else:
            assert isinstance(item, list)
            flat.extend(item)
    winners = {rid: [r for r in flat if r.request_id == rid and r.first] for rid in rids}
    assert all(len(w) == 1 for w in winners.values()), winners
    charge = {HoldState.CAPTURED: 60, HoldState.RELEASED: 0, HoldState.EXPIRED: 80}
    for rid, [win] in winners.items():
        assert win.charged == charge[win.state]
        assert all(r.state is win.state and r.charged == win.charged for r in flat if r.request_id == rid)
        assert (await world.store.get_hold(rid)).state is win.state  # type: ignore[union-attr]
    total = sum(w[0].charged for w in winners.values())
    user = await world.store.get_user("alice")
    assert user is not None and (user.balance, user.reserved, user.used) == (100_000 - total, 0, total)
    assert len(await world.store.query_logs(limit=1000)) == len(rids)


WORKER = r"""
import asyncio, json, sys
from plugins.billing.store.base import Hold, LogDetails

async def main(kind, target, extra, now, tag, key_id, rounds):
    if kind == "sqlite":
        from plugins.billing.store.sqlite.store import SQLiteStore
        store = SQLiteStore(target, clock=lambda: now)
    else:
        from plugins.billing.store.redis.store import RedisStore
        store = RedisStore(url=target, prefix=extra, clock=lambda: now)
    await store.open()
    await store.heartbeat(tag)
    print("ready", flush=True)
    sys.stdin.readline()  # both processes start together
    done = {"charged": 0, "captured": 0, "released": 0, "refused": 0}
    log = LogDetails(end_reason="completed", usage_source="upstream", upstream="up-" + tag)
    for i in range(rounds):
        await asyncio.sleep(0.0005)  # request pacing: SQLite's busy handler is not fair to a waiter
        rid = f"{tag}-{i}"
        held = await store.hold(rid, "alice", key_id, 100, None, "pv1", 3600, tag, "gpt-4o")
        if not isinstance(held, Hold):
            done["refused"] += 1
            continue
        if i % 5 == 4:
            await store.release(rid, log)
            done["released"] += 1
        else:
            actual = (i * 37) % 160
            res = await store.capture(rid, actual, log)
            assert res.first and res.charged == actual
            done["charged"] += actual
            done["captured"] += 1
    await store.close()
    print(json.dumps(done))

args = sys.argv[1:]
asyncio.run(main(args[0], args[1], args[2], float(args[3]), args[4], args[5], int(args[6])))
"""


def _spawn(backend: Backend, now: float, tag: str, key_id: str, rounds: int) -> subprocess.Popen[str]:
    """A child process running WORKER against the backend described by `backend.spec`."""
    kind, target, *rest = backend.spec
    extra = rest[0] if rest else ""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, kind, target, extra, str(now), tag, key_id, str(rounds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


async def test_two_processes_keep_the_ledger_exact(world: World, backend: Backend, clock: FakeClock) -> None:
    initial = 40_000
    key = await world.user("alice", initial, quota=35_000)
    procs = [_spawn(backend, clock.now, tag, key.id, 400) for tag in ("p1", "p2")]
    for proc in procs:
        assert proc.stdout is not None and proc.stdin is not None
        ready = await asyncio.to_thread(proc.stdout.readline)
        assert ready.strip() == "ready", (ready, proc.stderr.read() if proc.stderr else "")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reports = []
    for proc in procs:
        out, err = await asyncio.to_thread(proc.communicate, timeout=180)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    charged = sum(r["charged"] for r in reports)
    captured = sum(r["captured"] for r in reports)
    assert sum(r["refused"] for r in reports) > 0, reports  # the funds really ran out under contention
    user = await world.store.get_user("alice")
    assert user is not None
    assert (user.balance, user.reserved, user.used, user.request_count) == (initial - charged, 0, charged, captured)
    k = await world.store.get_key(key.id)
    assert k is not None and (k.balance, k.used) == (35_000 - charged, charged)
    stats = await world.store.upstream_stats()
    assert {name: stats[name] for name in ("up-p1", "up-p2")} == {
        f"up-{tag}": (r["charged"], r["captured"]) for tag, r in zip(("p1", "p2"), reports)
    }
    order = [row.request_id.split("-")[0] for row in reversed(await world.store.query_logs(limit=10_000))]
    switches = sum(a != b for a, b in zip(order, order[1:]))
    assert switches > 10, f"the two processes barely overlapped ({switches} switches)"
    for tag in ("p1", "p2"):
        await world.store.heartbeat(tag)
    report = await world.store.audit(clock.now, 30)
    assert report.mismatches == [] and report.orphans == []
