"""The lean RESP connection (`plugins.billing.store.redis.resp`) and its command layer (`plugins.billing.store.redis.resp_commands`).

Against the suite's private `redis-server` (the session fixture `redis_url`; skipped without
it, failed under WEIR_REQUIRE_REDIS=1), and, for a server that accepts and then never answers or hangs up,
a real loopback socket server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url

from plugins.billing.store.base import StoreError, StoreUnavailable
from plugins.billing.store.redis.client import RedisCore
from plugins.billing.store.redis.resp import RespClient, RespConnectionError, RespError, Target
from plugins.billing.store.redis.resp_commands import LeanRedis, Script, lean_target


@pytest.fixture
def local(redis_url: str) -> Target:
    """Where the suite's Redis is, as the lean connection takes it."""
    target = lean_target(parse_url(redis_url))
    if target is None:
        pytest.skip(f"{redis_url} needs redis-py (TLS or url options), not the lean connection")
    return target


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A redis-py client on the suite's Redis."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def key(raw: aioredis.Redis) -> AsyncIterator[str]:
    """A fresh key name; it and every key it prefixes are deleted afterwards."""
    name = f"weirtest:resp:{uuid.uuid4().hex}"
    yield name
    if found := [k async for k in raw.scan_iter(match=name + "*")]:
        await raw.delete(*found)


@pytest.fixture
async def client(local: Target) -> AsyncIterator[RespClient]:
    """A lean connection to the suite's Redis, closed afterwards."""
    resp = RespClient(local)
    yield resp
    await resp.close()


async def _silent_server(hang_up_after: int | None = None) -> tuple[asyncio.Server, int, list[bytes]]:
    """A loopback server that reads commands and never answers (or closes after N bytes)."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = 0
        while data := await reader.read(65536):
            seen.append(data)
            received += len(data)
            if hang_up_after is not None and received >= hang_up_after:
                writer.close()
                return

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def test_pipelined_commands_get_their_own_replies_in_order(
    raw: aioredis.Redis, key: str, client: RespClient
) -> None:
    replies = await asyncio.gather(*(client.execute("INCRBY", key, i) for i in range(1, 101)))
    # Each INCRBY saw every earlier one: the replies are the running sums, in call order.
    assert replies == [i * (i + 1) // 2 for i in range(1, 101)]
    assert await raw.get(key) == str(5050)
    out = await client.pipeline([("SET", key, "x"), ("HGET", key, "f"), ("GET", key)])
    assert out[0] == "OK" and isinstance(out[1], RespError) and "WRONGTYPE" in str(out[1]) and out[2] == "x"


async def test_pipelines_and_single_commands_interleaved_each_get_their_own_replies(
    raw: aioredis.Redis, key: str, client: RespClient
) -> None:
    # A pipeline waits on one future for all its replies; commands sent between pipelines
    # (and a pipeline whose caller gave up) must not take or shift anyone's replies.
    blocked = asyncio.ensure_future(client.pipeline([("INCR", key), ("BLPOP", key + ":empty", 0.3), ("INCR", key)]))
    calls = [
        client.pipeline([("INCR", key), ("GET", key)]) if i % 2 else client.execute("INCR", key) for i in range(20)
    ]
    running = asyncio.gather(*calls)
    await asyncio.sleep(0.05)
    blocked.cancel()
    results = await running
    counter = 2  # the blocked pipeline's INCRs ran first, around its BLPOP
    for i, got in enumerate(results):
        counter += 1
        assert got == ([counter, str(counter)] if i % 2 else counter), (i, got)
    assert await raw.get(key) == str(counter)


async def test_an_error_reply_is_raised_and_the_connection_goes_on(
    raw: aioredis.Redis, key: str, client: RespClient
) -> None:
    await raw.set(key, "text")
    with pytest.raises(RespError, match="WRONGTYPE"):
        await client.execute("HGET", key, "f")
    assert await client.execute("GET", key) == "text"
    assert await client.execute("GET", key + ":missing") is None


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(
    raw: aioredis.Redis, key: str, client: RespClient
) -> None:
    await raw.rpush(key, "a")
    # BLPOP on an empty list parks the connection's queue behind it for 0.3 s.
    blocked = asyncio.ensure_future(client.execute("BLPOP", key + ":empty", 0.3))
    after = asyncio.ensure_future(client.execute("LRANGE", key, 0, -1))
    await asyncio.sleep(0.05)
    blocked.cancel()
    assert await after == ["a"]  # not BLPOP's nil: the cancelled caller's reply was dropped
    assert await client.execute("LLEN", key) == 1


async def test_a_server_that_never_answers_fails_every_command_in_flight_within_the_timeout() -> None:
    server, port, seen = await _silent_server()
    client = RespClient(Target("127.0.0.1", port), timeout=0.3)
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        results = await asyncio.gather(*(client.execute("GET", f"k{i}") for i in range(5)), return_exceptions=True)
        waited = loop.time() - began
        assert all(isinstance(r, RespConnectionError) and "within 0.3 s" in str(r) for r in results), results
        assert 0.25 < waited < 2
        assert b"".join(seen).count(b"GET") == 5  # all five were written, in one connection
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_a_dropped_connection_fails_what_was_in_flight_and_the_next_command_reconnects(
    raw: aioredis.Redis, key: str, client: RespClient
) -> None:
    assert await client.execute("SET", key, "1") == "OK"
    name = f"weir-resp-{uuid.uuid4().hex[:8]}"
    assert await client.execute("CLIENT", "SETNAME", name) == "OK"
    parked = asyncio.ensure_future(client.execute("BLPOP", key + ":empty", 5))
    await asyncio.sleep(0.05)
    ids = [c["id"] for c in await raw.client_list() if c.get("name") == name]
    assert len(ids) == 1
    await raw.execute_command("CLIENT", "KILL", "ID", ids[0])
    with pytest.raises(RespConnectionError):
        await parked
    assert await client.execute("GET", key) == "1"  # a new connection


async def test_a_server_that_hangs_up_mid_command_is_a_connection_error() -> None:
    server, port, _ = await _silent_server(hang_up_after=1)
    client = RespClient(Target("127.0.0.1", port), timeout=2)
    try:
        with pytest.raises(RespConnectionError, match="closed the connection|connection lost"):
            await client.execute("GET", "k")
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_nothing_listening_is_a_connection_error() -> None:
    server, port, _ = await _silent_server()
    server.close()
    await server.wait_closed()
    client = RespClient(Target("127.0.0.1", port), timeout=1)
    with pytest.raises(RespConnectionError, match="cannot connect"):
        await client.execute("PING")


async def test_select_and_a_wrong_password_at_connection_setup(raw: aioredis.Redis, key: str, local: Target) -> None:
    db = 5 if local.db != 5 else 6  # another database of the same server
    client = RespClient(dataclasses.replace(local, db=db))
    other = aioredis.Redis(
        host=local.host,
        port=local.port,
        unix_socket_path=local.path,
        db=db,
        username=local.username,
        password=local.password,
        decode_responses=True,
    )
    try:
        await client.execute("SET", key, f"in db {db}")
        assert await other.get(key) == f"in db {db}" and await raw.get(key) is None
    finally:
        await other.delete(key)
        await other.aclose()
        await client.close()
    refused = RespClient(dataclasses.replace(local, password="not-the-password"))
    with pytest.raises(RespConnectionError, match="refused the connection setup"):
        await refused.execute("PING")


def test_urls_that_the_lean_connection_takes_and_those_left_to_redis_py() -> None:
    assert lean_target(parse_url("redis://127.0.0.1:6380/2")) == Target("127.0.0.1", 6380, db=2)
    assert lean_target(parse_url("redis://u:pw@h/0")) == Target("h", 6379, username="u", password="pw")
    assert lean_target(parse_url("unix:///run/redis.sock?db=1")) == Target(path="/run/redis.sock", db=1)
    assert lean_target(parse_url("rediss://h:6379/0")) is None  # TLS: redis-py
    assert lean_target(parse_url("redis://h:6379/0?socket_keepalive=true")) is None  # options: redis-py


async def test_scripts_reload_after_a_flush_and_replies_keep_redis_py_shapes(
    raw: aioredis.Redis, key: str, local: Target
) -> None:
    script = Script.of("t", "return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])")
    lean = LeanRedis(local, 2.0, {"t": script})
    await lean.open()
    try:
        await raw.script_flush()
        assert await lean.run("t", [key], ["f", "v"]) == 1  # NOSCRIPT, SCRIPT LOAD, retried
        assert await raw.script_exists(script.sha) == [True]
        assert await lean.call("hgetall", key) == {"f": "v"}
        assert await lean.call("hsetnx", key, "f", "w") is False
        assert await lean.batch([("sadd", (key + ":s", "a", "b")), ("smembers", (key + ":s",))]) == [2, {"a", "b"}]
        await raw.zadd(key + ":z", {"one": 1, "two": 2})
        assert await lean.call("zrevrangebyscore", key + ":z", "+inf", "-inf", 0, 10, True) == [
            ("two", 2.0),
            ("one", 1.0),
        ]
        assert set(await lean.scan(key + "*")) == {key, key + ":s", key + ":z"}
        with pytest.raises(StoreError, match="redis error: WRONGTYPE"):
            await lean.call("get", key)
    finally:
        await lean.close()


async def test_a_script_error_reaches_the_caller_as_store_error_without_the_weir_prefix(local: Target) -> None:
    lean = LeanRedis(local, 2.0, {"bad": Script.of("bad", "return redis.error_reply('weir: unknown user \"x\"')")})
    await lean.open()
    try:
        with pytest.raises(StoreError, match='^unknown user "x"$'):
            await lean.run("bad", [], [])
    finally:
        await lean.close()


async def test_the_core_uses_the_lean_connection_for_plain_urls_and_reports_an_absent_server(
    local: Target, redis_url: str
) -> None:
    core = RedisCore(redis_url, 1.0)
    await core.open()
    try:
        assert core.lean and await core.ping()
    finally:
        await core.close()
    server, port, _ = await _silent_server()
    server.close()
    await server.wait_closed()
    with pytest.raises(StoreUnavailable, match=f"cannot reach redis at redis://127.0.0.1:{port}/0"):
        await RedisCore(f"redis://127.0.0.1:{port}/0", 1.0).open()


def test_an_evalsha_packed_with_remembered_key_names_is_the_command_hiredis_packs() -> None:
    import hiredis

    from plugins.billing.store.redis.resp import EvalPacker

    packer = EvalPacker()
    sha = "0" * 40
    for keys, args in [
        (["p:{u:a}:user", "p:{u:a}:hold:r1", "p:{u:é}:key:k"], ["r1", 100, "", "ü" * 300, "1796745600.123456"]),
        (["p:{u:a}:user", "p:{u:a}:hold:r2"], ["r2", 0]),  # a remembered key, a new one
        (["k", "k"], []),
        ([], ["only", "args"]),
        ([], []),
    ]:
        for _ in range(2):  # first encoded, then remembered
            assert packer.evalsha(sha, keys, args) == hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))


async def test_a_script_run_through_the_packer_reads_its_keys_and_arguments(
    raw: aioredis.Redis, key: str, local: Target
) -> None:
    script = Script.of("echo", "return {KEYS[1], KEYS[2], ARGV[1], ARGV[2]}")
    lean = LeanRedis(local, 2.0, {"echo": script})
    await lean.open()
    try:
        for _ in range(2):  # the first run loads the script after NOSCRIPT
            assert await lean.run("echo", [key, key + ":b"], ["x", 7]) == [key, key + ":b", "x", "7"]
    finally:
        await lean.close()
