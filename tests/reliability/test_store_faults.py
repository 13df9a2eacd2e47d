"""Store faults under a real `weir serve`: Redis restarted mid-run, SCRIPT FLUSH, SQLite locked
by another writer past `busy_timeout`, and a store outage at the capture followed by the death
of the process. Every test checks the money to the unit and ends with a clean audit.

Redis here is a private `redis-server` (append-only file in tmp), so it can be stopped and
restarted without disturbing anyone else's tests.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from plugins.billing.store.base import HoldState
from proxy.mock.upstream import MockUpstream
from tests.redis_server import RedisServer
from tests.reliability.procs import (
    IN_UNIT,
    OUT_UNIT,
    Answer,
    World,
    billing_plugin,
    chat,
    chat_body,
    killer_plugin,
    wait_for,
)

pytestmark = pytest.mark.slow

HEARTBEAT = 0.2


def charge_of(ans: Answer) -> int:
    """What a completed mock-gpt answer costs, from the usage the client saw."""
    assert ans.usage is not None, ans
    return int(ans.usage["prompt_tokens"]) * IN_UNIT + int(ans.usage["completion_tokens"]) * OUT_UNIT


def outbox_entries(files: list[Path]) -> list[dict[str, Any]]:
    """Every pending resolution in the given outbox files."""
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


class Outage:
    """Makes the store unusable for writes, then usable again: a private Redis stopped and
    restarted, or SQLite locked by a second connection holding `BEGIN IMMEDIATE`."""

    def __init__(self, world: World, redis: RedisServer | None) -> None:
        self.world = world
        self.redis = redis
        self._lock: sqlite3.Connection | None = None

    async def begin(self) -> None:
        """Start the outage."""
        if self.redis is not None:
            self.redis.stop()
            return
        self._lock = sqlite3.connect(self.world.store_cfg["path"], isolation_level=None, timeout=5)
        self._lock.execute("BEGIN IMMEDIATE")

    async def end(self) -> None:
        """End it; the test's own store connection is usable again afterwards."""
        if self.redis is not None:
            await self.redis.start()
            await self.world.store.close()
            await self.world.store.open()
            return
        assert self._lock is not None
        self._lock.execute("ROLLBACK")
        self._lock.close()
        self._lock = None


@pytest_asyncio.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    """The mock upstream, in this process (its `requests` show what was admitted)."""
    upstream = MockUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest_asyncio.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A private redis-server with an append-only file."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    await server.start()
    try:
        yield server
    finally:
        server.kill()


def sqlite_cfg(tmp: Path, **extra: Any) -> dict[str, Any]:
    """A SQLite store with a short busy timeout, so a lock turns into an error quickly."""
    return {
        "backend": "sqlite",
        "path": str(tmp / "weir.db"),
        "busy_timeout_ms": 300,
        "heartbeat_every": HEARTBEAT,
        **extra,
    }


def redis_cfg(server: RedisServer, **extra: Any) -> dict[str, Any]:
    """The private Redis."""
    return {"backend": "redis", "url": server.url, "prefix": "weir", "heartbeat_every": HEARTBEAT, **extra}


@pytest_asyncio.fixture
async def closing(tmp_path: Path) -> AsyncIterator[list[World]]:
    """Worlds appended here are closed (processes killed) at the end."""
    worlds: list[World] = []
    yield worlds
    for w in worlds:
        await w.close()


async def test_redis_restart_mid_run_then_script_flush(
    tmp_path: Path, mock: MockUpstream, redis_server: RedisServer, closing: list[World]
) -> None:
    """Redis stops while four streams run and three requests arrive; then it comes back.

    The newcomers get 503 `store_unavailable` and never reach the upstream; the four
    captures that failed wait in the outbox and land once each when Redis is back. After a
    SCRIPT FLUSH, requests still work (the scripts are reloaded on NOSCRIPT).
    """
    world = World(tmp_path, mock, redis_cfg(redis_server))
    closing.append(world)
    weir = await world.start("a", (billing_plugin(),))
    mock.behaviour.pace, mock.behaviour.words = 0.1, 15
    streams = [asyncio.create_task(chat(weir.url, world.key, chat_body(f"stream number {i}"))) for i in range(4)]
    await wait_for(lambda: len(mock.requests) == 4, 10, "four streams to reach the upstream")
    outage = Outage(world, redis_server)
    await outage.begin()
    refused = [await chat(weir.url, world.key, chat_body("during the outage", stream=False)) for _ in range(3)]
    assert [(r.status, (r.error or {}).get("code")) for r in refused] == [(503, "store_unavailable")] * 3
    assert len(mock.requests) == 4, "a request was admitted without a hold"
    answers = await asyncio.gather(*streams)
    assert all(a.status == 200 and a.done for a in answers), answers
    await wait_for(lambda: _ops(world.outbox("a")).count("capture") == 4, 10, "four captures in the outbox")
    await outage.end()
    await wait_for(lambda: not world.outbox("a"), 20, "the outbox to drain")
    total = 0
    for ans in answers:
        row = await world.row(ans.request_id)
        assert (row.details.end_reason, row.charge) == ("completed", charge_of(ans))
        total += row.charge
    for rid in [r.request_id for r in refused]:
        assert await world.store.get_hold(rid) is None
    await redis_server.command("SCRIPT", "FLUSH")
    mock.behaviour.pace = 0.0
    after = await asyncio.gather(*(chat(weir.url, world.key, chat_body(f"after flush {i}")) for i in range(3)))
    assert all(a.status == 200 and a.done for a in after), after
    await asyncio.sleep(0.5)
    for ans in after:
        row = await world.row(ans.request_id)
        assert (row.details.end_reason, row.charge) == ("completed", charge_of(ans))
        total += row.charge
    await world.assert_wallet(total, 7)
    await world.assert_audit("a")


async def test_sqlite_locked_at_the_hold(tmp_path: Path, mock: MockUpstream, closing: list[World]) -> None:
    """Another writer holds SQLite's lock past busy_timeout: 503, nothing held, nothing sent."""
    world = World(tmp_path, mock, sqlite_cfg(tmp_path))
    closing.append(world)
    weir = await world.start("a", (billing_plugin(),))
    outage = Outage(world, None)
    await outage.begin()
    try:
        ans = await chat(weir.url, world.key, chat_body(stream=False))
        # Billing cannot know whether the failed hold was written: it queues a release.
        await wait_for(lambda: bool(world.outbox("a")), 5, "the release in the outbox")
    finally:
        await outage.end()
    assert (ans.status, (ans.error or {}).get("code")) == (503, "store_unavailable")
    assert mock.requests == []
    assert await world.store.get_hold(ans.request_id) is None
    # Once the store answers, the release finds no hold, and must leave the outbox.
    await wait_for(lambda: not world.outbox("a"), 15, "the outbox to be empty")
    ok = await chat(weir.url, world.key, chat_body())
    assert ok.status == 200 and ok.done
    await world.no_open_holds(5)
    row = await world.row(ok.request_id)
    assert (row.details.end_reason, row.charge) == ("completed", charge_of(ok))
    await world.assert_wallet(charge_of(ok), 1)
    await world.assert_audit("a")


async def test_sqlite_locked_at_the_capture(tmp_path: Path, mock: MockUpstream, closing: list[World]) -> None:
    """Locked when billing captures: the capture goes to the outbox while locked, and lands
    exactly once after the lock is released."""
    world = World(tmp_path, mock, sqlite_cfg(tmp_path))
    closing.append(world)
    plugins = (billing_plugin(), killer_plugin("on_complete", 0, "pause", world.marker(), world.go()))
    weir = await world.start("a", plugins)
    ans = await chat(weir.url, world.key, chat_body())
    assert ans.status == 200 and ans.done
    await wait_for(lambda: world.marker().exists(), 5, "billing's on_complete to be next")
    rid = world.acted("on_complete", 0)
    outage = Outage(world, None)
    await outage.begin()
    try:
        world.go().touch()
        await wait_for(lambda: bool(world.outbox("a")), 10, "the failed capture in the outbox")
        [entry] = outbox_entries(world.outbox("a"))
        assert (entry["op"], entry["request_id"], entry["amount"]) == ("capture", rid, charge_of(ans))
        hold = await world.store.get_hold(rid)
        assert hold is not None and hold.state is HoldState.OPEN
    finally:
        await outage.end()
    await wait_for(lambda: not world.outbox("a"), 15, "the retried capture to land")
    row = await world.row(rid)
    assert (row.details.end_reason, row.charge) == ("completed", charge_of(ans))
    await world.assert_wallet(charge_of(ans), 1)
    await world.assert_audit("a")


@pytest.mark.parametrize("store", ["sqlite", "redis"])
@pytest.mark.parametrize("resolution", ["replay", "orphan"])
async def test_capture_outbox_survives_death(
    tmp_path: Path, mock: MockUpstream, closing: list[World], store: str, resolution: str
) -> None:
    """The store is out when billing captures, and then the process dies.

    The outbox file survives it. `replay`: the same config restarted replays it, one capture.
    `orphan`: a live peer resolves the hold by the orphan rule first (no checkpoint: 0), and the
    replay that follows is a no-op. Either way one log row, and the ledger is exact.
    """
    redis = None
    if store == "redis":
        redis = await RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        await _outbox_survives_death(tmp_path, mock, closing, redis, resolution)
    finally:
        if redis is not None:
            for world in closing:
                await world.close()
            closing.clear()
            redis.kill()


async def _outbox_survives_death(
    tmp: Path, mock: MockUpstream, closing: list[World], redis: RedisServer | None, resolution: str
) -> None:
    timing = {"orphan_after": 1.5 if resolution == "orphan" else 30.0}
    world = World(tmp, mock, redis_cfg(redis, **timing) if redis is not None else sqlite_cfg(tmp, **timing))
    closing.append(world)
    plugins = (billing_plugin(), killer_plugin("on_complete", 0, "pause", world.marker(), world.go()))
    victim = await world.start("a", plugins)
    if resolution == "orphan":
        await world.start("b", (billing_plugin(),))
    ans = await chat(victim.url, world.key, chat_body())
    assert ans.status == 200 and ans.done
    await wait_for(lambda: world.marker().exists(), 5, "billing's on_complete to be next")
    rid = world.acted("on_complete", 0)
    outage = Outage(world, redis)
    await outage.begin()
    world.go().touch()
    await wait_for(lambda: bool(world.outbox("a")), 10, "the failed capture in the outbox")
    victim.kill()
    [entry] = outbox_entries(world.outbox("a"))
    assert (entry["op"], entry["request_id"], entry["amount"]) == ("capture", rid, charge_of(ans))
    await outage.end()
    if resolution == "orphan":
        await world.no_open_holds(15)
    await world.start("a")
    await wait_for(lambda: not world.outbox("a"), 15, "the outbox to be replayed")
    row = await world.row(rid)
    hold = await world.store.get_hold(rid)
    assert hold is not None
    if resolution == "replay":
        assert (row.details.end_reason, row.charge, hold.state) == ("completed", charge_of(ans), HoldState.CAPTURED)
    else:
        assert (row.details.end_reason, row.charge, hold.state) == ("orphaned", 0, HoldState.EXPIRED)
    await world.assert_wallet(row.charge, 1)
    await world.assert_audit("a")


def _ops(files: list[Path]) -> list[str]:
    return [entry["op"] for entry in outbox_entries(files)]
