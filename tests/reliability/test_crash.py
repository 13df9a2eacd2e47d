"""Crash tests: a real `weir serve` is SIGKILLed at each billing boundary, then another
instance (a live peer, or the same config restarted) resolves what it left, per spec §5.

The kill is exact: the test-only `tests.reliability.killer:Killer` plugin, placed before or
after billing in the subprocess's proxy.yaml, SIGKILLs its own process at a given hook call.
Each test checks the money to the unit (the consume log row, the wallet, no open hold) and
that `weir audit --json` exits 0, on SQLite and on Redis.

Prices are chosen so that no rounding happens: one mock-gpt input token is 5 quota units and
one output token 50, so a charge off by a single token shows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from plugins.billing.store.base import HoldState
from plugins.billing.tokenizer import Tokenizer
from proxy.mock.upstream import MockUpstream
from proxy.testing import unique_prefix
from tests.reliability.procs import (
    IN_UNIT,
    OUT_UNIT,
    WeirProcess,
    World,
    billing_plugin,
    chat,
    chat_body,
    killer_plugin,
)

pytestmark = pytest.mark.slow

ORPHAN_AFTER = 1.5
HEARTBEAT = 0.2


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each crash test runs on both stores."""
    return str(request.param)


@pytest_asyncio.fixture
async def crash(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """A `World` on `backend` with fast heartbeats; everything is cleaned up afterwards."""
    timing = {"orphan_after": ORPHAN_AFTER, "heartbeat_every": HEARTBEAT}
    if backend == "redis":
        url = request.getfixturevalue("redis_url")  # the suite's private redis-server
        store_cfg = {"backend": "redis", "url": url, "prefix": unique_prefix(), **timing}
    else:
        store_cfg = {"backend": "sqlite", "path": str(tmp_path / "weir.db"), **timing}
    mock = MockUpstream()
    await mock.start()
    world = World(tmp_path, mock, store_cfg)
    try:
        yield world
    finally:
        await world.close()
        await mock.stop()


async def run_to_crash(world: World, resolver: str, plugins: tuple[dict[str, Any], ...]) -> WeirProcess:
    """Start the instance that will die (named `a`) and, for `peer`, a live second instance."""
    victim = await world.start("a", plugins)
    if resolver == "peer":
        await world.start("b", (billing_plugin(),))
    return victim


async def resolve(world: World, resolver: str) -> str:
    """After the crash: restart `a` on its own config, or rely on the running peer `b`.
    Waits for the sweep and returns the name of the live instance."""
    if resolver == "restart":
        await world.start("a")
    await world.no_open_holds(ORPHAN_AFTER + 15)
    return "a" if resolver == "restart" else "b"


RESOLVERS = pytest.mark.parametrize("resolver", ["restart", "peer"])


@RESOLVERS
async def test_killed_after_hold_before_upstream(crash: World, resolver: str) -> None:
    """Dead between the hold and the upstream call: the hold is released in full."""
    plugins = (billing_plugin(), killer_plugin("on_request", 0, marker=crash.marker()))
    victim = await run_to_crash(crash, resolver, plugins)
    ans = await chat(victim.url, crash.key, chat_body())
    assert ans.broken and ans.status == 0
    rid = await crash.died_at(victim, "on_request", 0)
    assert crash.mock.requests == [], "the upstream was called although the process died before"
    hold = await crash.store.get_hold(rid)
    assert hold is not None and hold.state is HoldState.OPEN and hold.checkpoint is None and hold.amount > 0
    live = await resolve(crash, resolver)
    row = await crash.row(rid)
    assert (row.details.end_reason, row.charge, row.estimate) == ("orphaned", 0, hold.amount)
    resolved = await crash.store.get_hold(rid)
    assert resolved is not None and resolved.state is HoldState.EXPIRED
    await crash.assert_wallet(0, 1)
    await crash.assert_audit(live)


@RESOLVERS
async def test_killed_mid_stream_without_checkpoint(crash: World, resolver: str) -> None:
    """Dead mid-stream before any checkpoint: content was relayed, but nothing is charged."""
    crash.mock.behaviour.pace, crash.mock.behaviour.words = 0.05, 20
    plugins = (billing_plugin(), killer_plugin("on_event", 5, marker=crash.marker()))
    victim = await run_to_crash(crash, resolver, plugins)
    ans = await chat(victim.url, crash.key, chat_body())
    assert ans.status == 200 and ans.broken and not ans.done and ans.text
    rid = await crash.died_at(victim, "on_event", 5)
    hold = await crash.store.get_hold(rid)
    assert hold is not None and hold.state is HoldState.OPEN and hold.checkpoint is None
    live = await resolve(crash, resolver)
    row = await crash.row(rid)
    assert (row.details.end_reason, row.details.usage_source, row.charge) == ("orphaned", "none", 0)
    await crash.assert_wallet(0, 1)
    await crash.assert_audit(live)


@RESOLVERS
async def test_killed_mid_stream_after_checkpoints(crash: World, resolver: str) -> None:
    """Dead mid-stream after checkpoints: the last checkpoint is captured, even above the hold.

    Events come every 0.3 s and billing's timer checkpoints the request every 0.05 s, so
    several checkpoints land between two events; the killer sits after billing, so event 8
    kills the process before billing sees it: the last checkpoint covers exactly what the
    client received.
    """
    crash.mock.behaviour.pace, crash.mock.behaviour.words = 0.3, 30
    reserve = 2  # a tiny hold, which the relayed output soon exceeds
    plugins = (
        billing_plugin(checkpoint_every=0.05, default_output_reserve=reserve),
        killer_plugin("on_event", 8, marker=crash.marker()),
    )
    victim = await run_to_crash(crash, resolver, plugins)
    ans = await chat(victim.url, crash.key, chat_body())
    assert ans.status == 200 and ans.broken and len(ans.events) == 8
    rid = await crash.died_at(victim, "on_event", 8)
    hold = await crash.store.get_hold(rid)
    assert hold is not None and hold.state is HoldState.OPEN
    prompt_estimate, rest = divmod(hold.amount - reserve * OUT_UNIT, IN_UNIT)
    assert rest == 0 and prompt_estimate > 0
    expected = prompt_estimate * IN_UNIT + Tokenizer().count(ans.text, "mock-gpt") * OUT_UNIT
    assert hold.checkpoint == expected
    assert expected > hold.amount, "the test must exercise a checkpoint above the hold"
    live = await resolve(crash, resolver)
    row = await crash.row(rid)
    assert (row.details.end_reason, row.details.usage_source) == ("orphaned", "partial")
    assert (row.charge, row.estimate) == (expected, hold.amount)
    await crash.assert_wallet(expected, 1)
    await crash.assert_audit(live)


@RESOLVERS
async def test_killed_after_upstream_before_capture(crash: World, resolver: str) -> None:
    """Dead after the upstream ended but before billing's on_complete: no checkpoint was
    taken (a short request), so the orphan rule releases everything."""
    plugins = (billing_plugin(), killer_plugin("on_complete", 0, marker=crash.marker()))
    victim = await run_to_crash(crash, resolver, plugins)
    ans = await chat(victim.url, crash.key, chat_body())
    assert ans.status == 200 and ans.done and ans.usage is not None
    rid = await crash.died_at(victim, "on_complete", 0)
    hold = await crash.store.get_hold(rid)
    assert hold is not None and hold.state is HoldState.OPEN and hold.checkpoint is None
    live = await resolve(crash, resolver)
    row = await crash.row(rid)
    assert (row.details.end_reason, row.charge) == ("orphaned", 0)
    await crash.assert_wallet(0, 1)
    await crash.assert_audit(live)


@RESOLVERS
async def test_killed_after_capture(crash: World, resolver: str) -> None:
    """Dead right after the capture: the completed charge stands, untouched by the sweep."""
    plugins = (killer_plugin("on_complete", 0, marker=crash.marker()), billing_plugin())
    victim = await run_to_crash(crash, resolver, plugins)
    ans = await chat(victim.url, crash.key, chat_body())
    assert ans.status == 200 and ans.done and ans.usage is not None
    rid = await crash.died_at(victim, "on_complete", 0)
    charge = ans.usage["prompt_tokens"] * IN_UNIT + ans.usage["completion_tokens"] * OUT_UNIT
    hold = await crash.store.get_hold(rid)
    assert hold is not None and hold.state is HoldState.CAPTURED
    live = await resolve(crash, resolver)
    await asyncio.sleep(ORPHAN_AFTER + 4 * HEARTBEAT)  # sweeps past orphan_after change nothing
    row = await crash.row(rid)
    assert (row.details.end_reason, row.details.usage_source, row.charge) == ("completed", "upstream", charge)
    await crash.assert_wallet(charge, 1)
    await crash.assert_audit(live)


async def test_restart_with_a_pinned_instance_id(crash: World) -> None:
    """A restart that keeps `server.instance_id` (a StatefulSet pod, `${HOSTNAME}`) must still
    resolve its dead predecessor's holds: they are not its own, whatever the id says."""
    plugins = (billing_plugin(), killer_plugin("on_request", 0, marker=crash.marker()))
    victim = await crash.start("a", plugins, server={"instance_id": "weir-0"})
    ans = await chat(victim.url, crash.key, chat_body())
    assert ans.broken
    rid = await crash.died_at(victim, "on_request", 0)
    await crash.start("a")
    await crash.no_open_holds(ORPHAN_AFTER + 15)
    row = await crash.row(rid)
    assert (row.details.end_reason, row.charge) == ("orphaned", 0)
    await crash.assert_wallet(0, 1)
    await crash.assert_audit("a")
