"""What only the Redis backend has: script caching, hash tags, key prefixes, a server restart.

Runs against the suite's private `redis-server` (the session fixture `redis_url`, DB 0)
under a `weirtest:<uuid>` prefix and drops it afterwards. Skips without `redis-server`,
unless WEIR_REQUIRE_REDIS=1. The restart test starts a `redis-server` of its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from plugins.billing.store.base import (
    FundingSource,
    Hold,
    HoldRefusal,
    HoldState,
    LogDetails,
    Plan,
    Refusal,
    Resolution,
    StoreError,
    StoreUnavailable,
)
from plugins.billing.store.redis.store import RedisStore
from tests.redis_server import RedisServer

from .conftest import FakeClock

DONE = LogDetails(end_reason="completed", usage_source="upstream", upstream="openai")


def _tag(key: str) -> str | None:
    """The hash tag Redis Cluster would use for `key`, or None when it has none."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else None


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix for one test."""
    return f"weirtest:{uuid.uuid4().hex}"


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the same Redis, to look behind the store's back."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def rstore(redis_url: str, prefix: str, clock: FakeClock) -> AsyncIterator[RedisStore]:
    """An opened RedisStore on a fresh prefix; dropped and closed afterwards."""
    store = RedisStore(redis_url, prefix=prefix, clock=clock)
    await store.open()
    yield store
    await store.drop_all()
    await store.close()


async def _keys(raw: aioredis.Redis, prefix: str) -> list[str]:
    return sorted([k async for k in raw.scan_iter(match=f"{prefix}:*", count=500)])


async def _user_with_key(store: RedisStore, name: str, balance: int, quota: int | None = None) -> str:
    await store.create_user(name)
    await store.credit(name, balance, "top-up")
    key = await store.create_key(name, f"hash-{name}-{uuid.uuid4().hex}", name=f"{name}-key", quota=quota)
    return key.id


async def _everything(store: RedisStore, clock: FakeClock, user: str) -> None:
    """Touch every kind of key: wallet, keys, plan, subscription, holds, log, orphans."""
    key_id = await _user_with_key(store, user, 10_000, quota=5_000)
    await store.create_plan(Plan("pro", 300, "day", models=("gpt-*",)))
    await store.grant_subscription(user, "pro", clock.now - 10, clock.now + 30 * 86400)
    await store.heartbeat("i1")
    for i, amount in enumerate((200, 400, 50)):
        assert isinstance(await store.hold(f"{user}-r{i}", user, key_id, amount, None, "pv", 60, "i1", "gpt-4o"), Hold)
    assert await store.checkpoint(f"{user}-r2", 20)
    await store.capture(f"{user}-r0", 350, DONE)
    await store.release(f"{user}-r1", DONE)
    clock.advance(86400)  # a rollover, and r2's instance is now silent
    assert [r.request_id for r in await store.resolve_orphans(clock.now, 30)] == [f"{user}-r2"]
    await store.list_subscriptions(user)
    assert len(await store.query_logs(user=user)) == 3
    assert (await store.audit(clock.now, 30)).ok


async def test_scripts_are_reloaded_after_script_flush_mid_run(
    rstore: RedisStore, raw: aioredis.Redis, clock: FakeClock
) -> None:
    key_id = await _user_with_key(rstore, "alice", 1000)
    for i in range(3):
        await rstore.hold(f"r{i}", "alice", key_id, 100, None, "pv", 60, "i1")
    hold_sha = rstore._core._scripts["hold"].sha  # noqa: SLF001 - the cache is what this test is about
    assert await raw.script_exists(hold_sha) == [True]
    await raw.script_flush()
    assert await raw.script_exists(hold_sha) == [False]
    assert (await rstore.capture("r0", 150, DONE)).charged == 150  # NOSCRIPT, reload, retry
    assert (await rstore.release("r1", DONE)).state is HoldState.RELEASED

    async def hold(i: int) -> Hold | HoldRefusal:
        return await rstore.hold(f"c{i}", "alice", key_id, 100, None, "pv", 60, "i1")

    # A flush in the middle of concurrent holds: every call still gets an answer, and the
    # ledger stays exact (balance 850, r2 holds 100: exactly 7 more fit).
    results = await asyncio.gather(*(hold(i) for i in range(10)), raw.script_flush(), *(hold(i) for i in range(10, 20)))
    holds = [r for r in results if isinstance(r, Hold)]
    refusals = [r for r in results if isinstance(r, HoldRefusal)]
    assert (len(holds), len(refusals)) == (7, 13)
    assert all(r.reason is Refusal.INSUFFICIENT_WALLET for r in refusals)
    user = await rstore.get_user("alice")
    assert user is not None and (user.balance, user.reserved) == (850, 800)
    assert await raw.script_exists(hold_sha) == [True]
    for h in holds + [await rstore.get_hold("r2")]:
        assert h is not None
        await rstore.release(h.request_id, DONE)
    assert (await rstore.audit(clock.now, 30)).ok


async def test_every_key_of_a_user_shares_its_hash_tag(
    rstore: RedisStore, raw: aioredis.Redis, clock: FakeClock, prefix: str
) -> None:
    odd = "b{o}b%:x"  # braces and % in a name must not end, nest or collide with a tag
    for name in ("alice", odd, "b"):
        await _everything(rstore, clock, name)
    keys = await _keys(raw, prefix)
    by_tag: dict[str, list[str]] = {}
    for key in keys:
        tag = _tag(key[len(prefix) :])
        assert tag is not None, f"{key} has no hash tag"
        by_tag.setdefault(tag, []).append(key)
    user_tags = {t for t in by_tag if t.startswith("u:")}
    assert user_tags == {"u:alice", "u:b%7Bo%7Db%25:x", "u:b"}
    for tag in user_tags:
        slots = {key_slot(k.encode()) for k in by_tag[tag]}
        assert slots == {key_slot(tag.encode())}
        suffixes = {k.rsplit("}:", 1)[1].split(":")[0] for k in by_tag[tag]}
        assert {"user", "keys", "key", "subs", "sub", "hold", "ledger", "log", "logidx", "up"} <= suffixes
    # Global indexes each have a tag of their own, none of them a user's.
    assert set(by_tag) - user_tags == {
        "users",
        "openusers",
        "requests",
        "keyhash",
        "keyid",
        "subid",
        "plans",
        "instances",
        "logs",
    }


async def _monitor(redis_url: str, store: RedisStore, action: Callable[[], Awaitable[object]]) -> list[dict[str, str]]:
    """Every command Redis ran (MONITOR: ours, our scripts' and other clients') while `action` ran."""
    seen: list[dict[str, str]] = []
    monitor_client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with monitor_client.monitor() as mon:

        async def listen() -> None:
            while True:
                seen.append(await mon.next_command())

        async def marked(marker: str) -> None:  # MONITOR has seen `marker` (it starts late)
            for _ in range(100):
                await store.heartbeat(marker)
                await asyncio.sleep(0.05)
                if any(marker in c["command"] for c in seen):
                    return
            raise AssertionError(f"MONITOR never showed {marker}")

        listener = asyncio.create_task(listen())
        await marked("start-marker")
        start = len(seen)
        await action()
        await marked("done-marker")
        listener.cancel()
    await monitor_client.aclose()
    return [c for c in seen[start:] if "-marker" not in c["command"]]


@pytest.mark.parametrize("one_slot", [True, False], ids=["cluster-shaped", "one-server"])
async def test_scripts_touch_only_their_declared_keys_in_one_slot(
    rstore: RedisStore, redis_url: str, clock: FakeClock, prefix: str, monkeypatch: pytest.MonkeyPatch, one_slot: bool
) -> None:
    """What Redis Cluster requires, checked on the real command stream (MONITOR). Shaped for
    one server, settlements also declare the global log counter and index, and holds the
    request index and the open-users set (and nothing else outside the user's slot)."""
    monkeypatch.setattr(rstore._core, "one_slot_scripts", one_slot)
    k = rstore._k
    logs = {k.log_seq, k.log_global}
    indexes = {k.log_seq, k.log_global, k.requests, k.open_users}
    seen = await _monitor(redis_url, rstore, lambda: _everything(rstore, clock, "alice"))
    scripts, with_indexes, current = 0, 0, None
    for entry in seen:
        words = entry["command"].split(" ")
        if entry["client_type"] != "lua":
            current = None
            if words[0].upper() == "EVALSHA" and words[3].startswith(prefix + ":"):
                current = set(words[3 : 3 + int(words[2])])
                own = current if one_slot or logs == current else current - indexes
                with_indexes += own != current
                assert len({key_slot(key.encode()) for key in own}) == 1, f"keys in several slots: {current}"
                scripts += 1
            continue
        if current is not None:  # a command run by one of our scripts: its key must be declared
            assert words[1] in current, f"script touched undeclared key {words[1]} (declared {current})"
    # One server runs one script fewer per settlement (no separate log id): the same bound.
    assert scripts + with_indexes >= 15, f"saw only {scripts} script calls in MONITOR"
    assert (with_indexes == 0) if one_slot else (with_indexes >= 2), with_indexes


async def test_drop_all_deletes_its_prefix_and_nothing_else(
    redis_url: str, raw: aioredis.Redis, clock: FakeClock
) -> None:
    base = f"weirtest:{uuid.uuid4().hex}"
    globby = RedisStore(redis_url, prefix=f"{base}:[x]*", clock=clock)  # glob characters are literal
    plain = RedisStore(redis_url, prefix=f"{base}:x", clock=clock)
    for store in (globby, plain):
        await store.open()
        await _everything(store, clock, "alice")
    try:
        assert await _keys(raw, f"{base}:[[]x]\\*")
        await globby.drop_all()
        assert await _keys(raw, f"{base}:[[]x]\\*") == []
        assert await globby.get_user("alice") is None
        user = await plain.get_user("alice")
        assert user is not None and user.used == 350 + 20
        assert (await plain.audit(clock.now, 30)).ok
    finally:
        await plain.drop_all()
        assert await _keys(raw, base) == [] and not [k async for k in raw.scan_iter(match=f"{base}*")]
        for store in (globby, plain):
            await store.close()


async def test_unreachable_redis_names_the_setting_without_the_password() -> None:
    store = RedisStore("redis://:hunter2@127.0.0.1:1/0", prefix="weirtest:none", timeout=1)
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    assert "store.url: cannot reach redis at redis://:***@127.0.0.1:1/0" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert not await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.get_user("alice")


def test_a_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="brace-free"):
        RedisStore("redis://127.0.0.1:1/0", prefix="weir{x}")  # refused before connecting


async def test_large_amounts_and_fractional_times_stay_exact(rstore: RedisStore, clock: FakeClock) -> None:
    clock.now = 1_700_000_000.123456789  # more digits than Lua's tostring or cjson would keep
    big = 2**53 - 1  # the largest integer a Lua number holds exactly
    key_id = await _user_with_key(rstore, "alice", big)
    hold = await rstore.hold("r1", "alice", key_id, big - 2, None, "pv", 0.000123, "i1")
    assert isinstance(hold, Hold) and hold.amount == big - 2
    assert (hold.created_at, hold.expires_at) == (clock.now, clock.now + 0.000123)
    assert (await rstore.capture("r1", big - 1, DONE)).charged == big - 1
    user = await rstore.get_user("alice")
    assert user is not None and (user.balance, user.used, user.created_at) == (1, big - 1, clock.now)
    (row,) = await rstore.query_logs()
    assert (row.ts, row.charge, row.estimate) == (clock.now, big - 1, big - 2)
    with pytest.raises(StoreError, match="must not exceed"):  # a double would round it
        await rstore.credit("alice", big + 2)
    assert (await rstore.get_user("alice")) == user
    assert (await rstore.audit(clock.now, 30)).ok


async def test_racing_captures_leave_one_log_row_despite_reserved_ids(
    rstore: RedisStore, redis_url: str, prefix: str, clock: FakeClock
) -> None:
    key_id = await _user_with_key(rstore, "alice", 1000)
    peers = [RedisStore(redis_url, prefix=prefix, clock=clock) for _ in range(4)]
    for peer in peers:
        await peer.open()
    try:
        for i in range(3):
            await rstore.hold(f"r{i}", "alice", key_id, 100, None, "pv", 60, "i1")
            results = await asyncio.gather(*(p.capture(f"r{i}", 10 + i, DONE) for p in peers))
            assert sorted(r.first for r in results) == [False, False, False, True]
    finally:
        for peer in peers:
            await peer.close()
    rows = await rstore.query_logs(limit=2)
    assert [r.request_id for r in rows] == ["r2", "r1"]
    assert [r.request_id for r in await rstore.query_logs(before_id=rows[-1].id)] == ["r0"]
    user = await rstore.get_user("alice")
    assert user is not None and (user.balance, user.request_count) == (1000 - 33, 3)
    assert (await rstore.audit(clock.now, 30)).ok


async def test_a_request_id_of_another_user_returns_that_hold(rstore: RedisStore) -> None:
    alice_key = await _user_with_key(rstore, "alice", 1000)
    bob_key = await _user_with_key(rstore, "bob", 1000)
    first = await rstore.hold("r1", "alice", alice_key, 100, None, "pv", 60, "i1")
    again = await rstore.hold("r1", "bob", bob_key, 300, None, "pv", 60, "i1")
    assert first == again and isinstance(again, Hold) and again.user == "alice"
    bob = await rstore.get_user("bob")
    assert bob is not None and bob.reserved == 0
    await rstore.release("r1", DONE)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, with an append-only file: it is stopped mid-test."""
    server = RedisServer(tmp_path, appendonly=True).start_blocking()
    try:
        yield server
    finally:
        server.kill()


async def test_server_restart_is_unavailable_then_recovers_with_fresh_scripts(
    private_redis: RedisServer, clock: FakeClock
) -> None:
    store = RedisStore(private_redis.url, prefix="weir", clock=clock, timeout=1)
    await store.open()
    try:
        key_id = await _user_with_key(store, "alice", 1000)
        assert isinstance(await store.hold("r1", "alice", key_id, 100, None, "pv", 60, "i1"), Hold)
        private_redis.stop()
        with pytest.raises(StoreUnavailable):
            await store.capture("r1", 40, DONE)
        assert not await store.ping()
        private_redis.start_blocking()
        # The new server kept the data (AOF) but not the script cache: NOSCRIPT, reload, retry.
        assert (await store.capture("r1", 40, DONE)).charged == 40
        user = await store.get_user("alice")
        assert user is not None and (user.balance, user.reserved) == (960, 0)
        assert (await store.audit(clock.now, 30)).ok
    finally:
        await store.close()


# Round trips, the memory of holds and pool exhaustion ---------------------------------------


def _sent(seen: list[dict[str, str]], prefix: str) -> list[str]:
    """The names of the commands clients (not scripts) sent with a key under `prefix`."""
    return [c["command"].split(" ")[0].upper() for c in seen if c["client_type"] != "lua" and prefix in c["command"]]


async def test_a_billed_request_sends_one_command_per_step_on_one_server(
    rstore: RedisStore, redis_url: str, prefix: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id = await _user_with_key(rstore, "alice", 1000)

    async def billed(rid: str) -> None:
        assert isinstance(await rstore.hold(rid, "alice", key_id, 100, None, "pv", 60, "i1"), Hold)
        assert await rstore.checkpoint(rid, 10)
        assert (await rstore.capture(rid, 40, DONE)).charged == 40

    # hold: its script, which claims the request id and marks the user itself (pipelined
    # after a read of the subscription terms the first time this store holds for the user);
    # checkpoint: its script; capture: its script, which takes the log id too. No lookups:
    # this store made the hold.
    assert _sent(await _monitor(redis_url, rstore, lambda: billed("r1")), prefix) == [
        "HGETALL",
        "EVALSHA",
        "EVALSHA",
        "EVALSHA",
    ]
    assert _sent(await _monitor(redis_url, rstore, lambda: billed("r2")), prefix) == ["EVALSHA"] * 3
    peer = RedisStore(redis_url, prefix=prefix, clock=clock)
    await peer.open()
    try:  # a store that did not make the hold finds it through the request index
        assert isinstance(await rstore.hold("r3", "alice", key_id, 100, None, "pv", 60, "i1"), Hold)
        seen = await _monitor(redis_url, rstore, lambda: peer.release("r3", DONE))
    finally:
        await peer.close()
    assert _sent(seen, prefix) == ["HGET", "HGETALL", "EVALSHA"]
    # Shaped for a Cluster, the hold claims and marks first (global indexes live in slots of
    # their own), pipelined with its script, and the capture reserves its log id first.
    monkeypatch.setattr(rstore._core, "one_slot_scripts", True)
    assert _sent(await _monitor(redis_url, rstore, lambda: billed("r4")), prefix) == [
        "HSETNX",
        "SADD",
        "EVALSHA",
        "EVALSHA",
        "EVALSHA",
        "EVALSHA",
    ]
    for user in ("alice", None):  # the user's index, and the global one the scripts wrote
        assert [row.request_id for row in await rstore.query_logs(user=user)] == ["r4", "r3", "r2", "r1"]
    for rid in ("r1", "r2", "r4"):  # every hold is in the request index, whoever wrote it
        assert await rstore._core.hget(rstore._k.requests, rid) == "alice"
    assert (await rstore.audit(clock.now, 30)).ok


async def test_a_new_hold_equals_what_redis_stored(rstore: RedisStore, clock: FakeClock) -> None:
    clock.now = 1_700_000_000.123456789
    key_id = await _user_with_key(rstore, "alice", 1000, quota=500)
    await rstore.create_plan(Plan("pro", 300, "day", models=("gpt-*",)))
    sub = await rstore.grant_subscription("alice", "pro", clock.now - 10, clock.now + 86400)
    held: list[Hold] = []
    for rid, model in (("r1", "gpt-4o"), ("r2", "claude")):
        h = await rstore.hold(rid, "alice", key_id, 100, None, "pv", 0.000123, "i1", model)
        assert isinstance(h, Hold) and h == await rstore.get_hold(rid)
        held.append(h)
    assert [(h.source, h.subscription_id, h.key_amount) for h in held] == [
        (FundingSource.SUBSCRIPTION, sub.id, 100),
        (FundingSource.WALLET, None, 100),
    ]
    assert await rstore.hold("r1", "alice", key_id, 999, None, "pv", 60, "i1", "gpt-4o") == held[0]
    assert (await rstore.capture("r1", 350, DONE)).overage == 50  # the remembered subscription pays first
    await rstore.release("r2", DONE)
    assert (await rstore.audit(clock.now, 30)).ok


async def test_a_stale_memory_of_a_hold_moves_no_wrong_money(
    rstore: RedisStore, redis_url: str, prefix: str, clock: FakeClock
) -> None:
    old_key = await _user_with_key(rstore, "alice", 1000)
    for rid in ("r1", "r2"):
        await rstore.hold(rid, "alice", old_key, 100, None, "pv", 60, "i1")
    peer = RedisStore(redis_url, prefix=prefix, clock=clock)
    await peer.open()
    try:  # everything is dropped behind rstore's back; r1 is held again, on another key
        await peer.drop_all()
        new_key = await _user_with_key(peer, "alice", 500, quota=300)
        assert isinstance(await peer.hold("r1", "alice", new_key, 50, None, "pv", 60, "i1"), Hold)
    finally:
        await peer.close()
    assert (await rstore.capture("r1", 30, DONE)).charged == 30
    key = await rstore.get_key(new_key)
    user = await rstore.get_user("alice")
    assert key is not None and (key.balance, key.reserved, key.used) == (270, 0, 30)
    assert user is not None and (user.balance, user.reserved) == (470, 0)
    with pytest.raises(StoreError, match="unknown hold"):
        await rstore.release("r2", DONE)
    assert (await rstore.audit(clock.now, 30)).ok


async def test_a_mark_dropped_while_a_hold_is_in_flight_is_set_again(
    rstore: RedisStore, raw: aioredis.Redis, prefix: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id = await _user_with_key(rstore, "alice", 1000)
    open_users = f"{prefix}:{{openusers}}"
    core = rstore._core  # noqa: SLF001 - the window between the mark and the script is the point
    # Shaped for a Cluster, where the mark is a command of its own before the script (on one
    # server the script marks the user itself, in the same atomic step: no window).
    monkeypatch.setattr(core, "one_slot_scripts", True)
    swept = []

    async def pre_step_then_a_sweep(
        calls: list[tuple[str, tuple[object, ...]]], name: str, keys: list[str], args: list[str | int]
    ) -> tuple[list[object], object]:
        # The hold's commands and its script are pipelined, but other clients' commands can
        # still run between them on the server: a resolver sweeps in that gap here.
        replies = await core.batch(calls)
        if calls[0][0] == "hsetnx":  # alice is marked, her hold not yet made
            assert await rstore.open_holds() == []
            assert not await raw.sismember(open_users, "alice")
            swept.append(name)
        return replies, await core.run(name, keys, args)

    monkeypatch.setattr(core, "batch_and_run", pre_step_then_a_sweep)
    assert isinstance(await rstore.hold("r1", "alice", key_id, 100, None, "pv", 60, "i1"), Hold)
    monkeypatch.undo()
    assert swept == ["hold"]
    assert await raw.sismember(open_users, "alice")
    clock.advance(120)  # instance i1 never beat: r1 is an orphan, and the resolver finds it
    assert [r.request_id for r in await rstore.resolve_orphans(clock.now, 30)] == ["r1"]
    assert (await rstore.audit(clock.now, 30)).ok


@pytest.mark.parametrize("max_connections", [64, 3])
async def test_300_concurrent_holds_queue_for_a_connection_instead_of_failing(
    redis_url: str, prefix: str, clock: FakeClock, max_connections: int
) -> None:
    """redis-py's pool raises "Too many connections" past 100 commands in flight; the store
    must queue them (the 503s seen under 256 concurrent streams)."""
    store = RedisStore(redis_url, prefix=prefix, clock=clock, max_connections=max_connections)
    await store.open()
    try:
        key_id = await _user_with_key(store, "alice", 250 * 100)
        results = await asyncio.gather(
            *(store.hold(f"r{i}", "alice", key_id, 100, None, "pv", 60, "i1") for i in range(300)),
            return_exceptions=True,
        )
        holds = [r for r in results if isinstance(r, Hold)]
        refused = [r for r in results if isinstance(r, HoldRefusal) and r.reason is Refusal.INSUFFICIENT_WALLET]
        assert (len(holds), len(refused)) == (250, 50), {type(r).__name__: str(r) for r in results}
        settled = await asyncio.gather(*(store.capture(h.request_id, 60, DONE) for h in holds), return_exceptions=True)
        assert all(isinstance(r, Resolution) and r.charged == 60 for r in settled), settled
        user = await store.get_user("alice")
        assert user is not None and (user.balance, user.reserved, user.request_count) == (25_000 - 250 * 60, 0, 250)
        assert (await store.audit(clock.now, 30)).ok
    finally:
        await store.drop_all()
        await store.close()


async def test_the_wait_for_a_free_connection_is_bounded(redis_url: str, prefix: str, clock: FakeClock) -> None:
    store = RedisStore(redis_url, prefix=prefix, clock=clock, timeout=0.2, max_connections=1)
    await store.open()
    slots = store._core._slots  # noqa: SLF001 - stands for one command stuck in flight
    try:
        await slots.acquire()
        began = time.monotonic()
        with pytest.raises(StoreUnavailable, match="no connection free within 0.2 s"):
            await store.get_user("alice")
        assert 0.15 < time.monotonic() - began < 20  # bounded: without the limit it would wait forever
        slots.release()
        assert await store.get_user("alice") is None
    finally:
        await store.close()


# The hold in one round trip: terms remembered per user, checked by the script ---------------


async def test_a_subscription_granted_elsewhere_is_used_by_the_next_hold(
    rstore: RedisStore, redis_url: str, prefix: str, clock: FakeClock
) -> None:
    key_id = await _user_with_key(rstore, "alice", 1000)
    assert (await rstore.hold("r0", "alice", key_id, 10, None, "pv", 60, "i1")).source is FundingSource.WALLET
    peer = RedisStore(redis_url, prefix=prefix, clock=clock)  # a CLI or another instance
    await peer.open()
    try:
        await peer.create_plan(Plan("pro", 500, "none"))
        sub = await peer.grant_subscription("alice", "pro", clock.now - 1, clock.now + 3600)
    finally:
        await peer.close()
    # rstore last saw no terms for alice: its script answers `stale`, and the hold is sent
    # again with the terms read just then.
    seen = await _monitor(redis_url, rstore, lambda: rstore.hold("r1", "alice", key_id, 100, None, "pv", 60, "i1"))
    assert _sent(seen, prefix) == ["EVALSHA", "HGETALL", "EVALSHA"]
    held = await rstore.get_hold("r1")
    assert isinstance(held, Hold) and (held.source, held.subscription_id) == (FundingSource.SUBSCRIPTION, sub.id)
    assert (await rstore.capture("r1", 60, DONE)).charged == 60
    [s] = await rstore.list_subscriptions("alice")
    assert (s.balance, s.reserved) == (440, 0)
    await rstore.release("r0", DONE)
    assert (await rstore.audit(clock.now, 30)).ok


@pytest.mark.parametrize("one_slot", [True, False], ids=["cluster-shaped", "one-server"])
async def test_a_request_id_held_by_another_user_answers_with_that_hold_and_reserves_nothing(
    rstore: RedisStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, one_slot: bool
) -> None:
    monkeypatch.setattr(rstore._core, "one_slot_scripts", one_slot)
    alice_key = await _user_with_key(rstore, "alice", 1000)
    bob_key = await _user_with_key(rstore, "bob", 1000)
    mine = await rstore.hold("same-id", "alice", alice_key, 100, None, "pv", 60, "i1")
    assert isinstance(mine, Hold)
    # Cluster-shaped, bob's script ran in the same round trip as the claim that found
    # alice's id: his reservation is released again (logged duplicate_request_id). On one
    # server his script claims the id itself, finds alice's and reserves nothing. Either
    # way the caller gets the hold that owns the id.
    theirs = await rstore.hold("same-id", "bob", bob_key, 300, None, "pv", 60, "i1")
    assert isinstance(theirs, Hold) and theirs.user == "alice"
    bob = await rstore.get_user("bob")
    assert bob is not None and (bob.balance, bob.reserved, bob.used) == (1000, 0, 0)
    voided = [row.details.end_reason for row in await rstore.query_logs(user="bob")]
    assert voided == (["duplicate_request_id"] if one_slot else [])
    assert (await rstore.capture("same-id", 70, DONE)).charged == 70
    alice = await rstore.get_user("alice")
    assert alice is not None and (alice.balance, alice.reserved) == (930, 0)
    assert (await rstore.audit(clock.now, 30)).ok
