"""Redis says "not now": `LOADING` after a restart with data, `OOM` at `maxmemory`.

Both replies mean the same call can succeed later, so they are unavailability, never a
definitive refusal: a request that needs a hold meanwhile is refused with 503
`store_unavailable` and reaches no upstream, and a capture that meets them waits in the
outbox and lands exactly once when Redis can write again. Before this was so, such
captures were dropped: the streams were served and never charged.

The upstream is a raw loopback server whose streams wait on a gate before their last
chunk (the usage), so every stream ends while Redis is in the state under test, whatever
the speed of the machine. The loading phase is held open by `key-load-delay` (a Redis
setting that slows loading down per key) and ended by setting it back to 0, which Redis
accepts while loading.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.redis_server import RedisServer
from tests.reliability.procs import IN_UNIT, OUT_UNIT, Answer, World, billing_plugin, chat, chat_body, wait_for
from tests.reliability.rawserver import RawConn, RawUpstream, chunk, sse_head, usage_chunk
from tests.reliability.test_store_faults import _ops, redis_cfg

pytestmark = pytest.mark.slow

PROMPT, COMPLETION = 7, 3
#: What one gated stream costs: its usage at the test prices.
CHARGE = PROMPT * IN_UNIT + COMPLETION * OUT_UNIT
#: Keys written before the restart, so that loading them takes a while.
PADDING = 60_000
#: Microseconds each loaded key takes. Redis answers (`LOADING`) between every 1024 commands
#: it loads, so about every half second; loading all of `PADDING` would take 30 s, but the
#: test ends it as soon as the captures have failed.
LOAD_DELAY_US = 500
_PAD = "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'pad:' .. i, 'x') end return 1"


class GatedUpstream(RawUpstream):
    """Streams one content chunk, then waits for `gate` before the usage and `[DONE]`."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        super().__init__(self._stream)

    async def _stream(self, conn: RawConn) -> None:
        await conn.send(sse_head() + chunk("hello"))
        await self.gate.wait()
        await conn.send(usage_chunk(PROMPT, COMPLETION) + b"data: [DONE]\n\n")


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[GatedUpstream]:
    """The gated raw upstream."""
    server = GatedUpstream()
    await server.start()
    yield server
    server.gate.set()
    await server.stop()


@pytest_asyncio.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A private redis-server with an append-only file, padded with `PADDING` keys."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    await server.start()
    await server.command("EVAL", _PAD, "0", str(PADDING))
    try:
        yield server
    finally:
        server.kill()


@pytest_asyncio.fixture
async def world(tmp_path: Path, upstream: GatedUpstream, redis: RedisServer) -> AsyncIterator[World]:
    """A funded world on the private Redis (processes killed at the end)."""
    w = World(tmp_path, upstream, redis_cfg(redis))
    yield w
    await w.close()


def _small(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with a small `max_tokens`: holds that the funds cover many times over."""
    return {**body, "max_tokens": 16}


async def _loading(redis: RedisServer) -> bool:
    """True while Redis answers that it is loading (redis-py drops the `LOADING` code)."""
    try:
        await redis.command("PING")
    except OSError as exc:
        return "loading the dataset" in str(exc)
    return False


async def _served_while(
    world: World, upstream: GatedUpstream, begin: Callable[[], Awaitable[None]], end: Callable[[], Awaitable[None]]
) -> None:
    """Four streams are admitted; `begin()` puts Redis in the state under test; a newcomer
    is refused; the streams end (their captures fail); `end()` lets Redis write again; then
    every stream is charged its usage exactly once and the books balance."""
    weir = await world.start("a", (billing_plugin(),))
    streams = [asyncio.create_task(chat(weir.url, world.key, _small(chat_body(f"stream {i}")))) for i in range(4)]
    await wait_for(lambda: len(upstream.requests) == 4, 15, "four streams to reach the upstream")
    await begin()
    refused = await chat(weir.url, world.key, _small(chat_body("meanwhile", stream=False)))
    assert (refused.status, (refused.error or {}).get("code")) == (503, "store_unavailable"), refused
    assert len(upstream.requests) == 4, "a request was admitted without a hold"
    upstream.gate.set()
    answers: list[Answer] = await asyncio.gather(*streams)
    assert all(a.status == 200 and a.done and a.usage for a in answers), answers
    await wait_for(lambda: _ops(world.outbox("a")).count("capture") == 4, 20, "four captures waiting in the outbox")
    await end()
    await wait_for(lambda: not world.outbox("a"), 30, "the outbox to drain")
    await world.store.close()
    await world.store.open()
    await world.no_open_holds(10)
    for ans in answers:
        row = await world.row(ans.request_id)
        assert (row.details.end_reason, row.charge) == ("completed", CHARGE), row
    assert await world.store.get_hold(refused.request_id) is None
    await world.assert_wallet(4 * CHARGE, 4)
    await world.assert_audit("a")


async def test_captures_while_redis_loads_its_data_land_once_it_has(
    world: World, upstream: GatedUpstream, redis: RedisServer
) -> None:
    """Redis restarts with data and answers `LOADING` while the streams end."""

    async def restart_loading() -> None:
        redis.stop()
        await redis.start(
            extra=("--key-load-delay", str(LOAD_DELAY_US), "--loading-process-events-interval-bytes", "1024"),
            wait=False,
        )
        await wait_for(lambda: _loading(redis), 15, "redis to answer LOADING")

    async def finish_loading() -> None:
        await redis.command("CONFIG", "SET", "key-load-delay", "0")
        await wait_for(lambda: _answers_with_pong(redis), 30, "redis to finish loading")

    await _served_while(world, upstream, restart_loading, finish_loading)


async def test_captures_while_redis_is_out_of_memory_land_once_it_has_room(
    world: World, upstream: GatedUpstream, redis: RedisServer
) -> None:
    """Redis reaches `maxmemory` (answers `OOM` to every write) while the streams end."""

    async def full() -> None:
        await redis.command("CONFIG", "SET", "maxmemory", "1mb")

    async def room() -> None:
        await redis.command("CONFIG", "SET", "maxmemory", "0")

    await _served_while(world, upstream, full, room)


async def _answers_with_pong(redis: RedisServer) -> bool:
    try:
        return bool(await redis.command("PING"))
    except OSError:
        return False
