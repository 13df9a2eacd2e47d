"""How relays are ended: the stall watch, shutdown's `abort_all`, and a cancelled handler.

Unit tests on `proxy.relay.ActiveStreams` / `Relaying` with stand-in upstreams and
transports, and on the handler's last-resort terminal hook. The end-to-end behaviour, with
real sockets and a real `weir serve`, is in tests/reliability/test_slow_clients.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from proxy.context import Dialect, Endpoint, EndReason, Outcome, ProxyError, RequestContext
from proxy.handler import _end_abandoned
from proxy.pipeline import Pipeline
from proxy.plugin import Plugin
from proxy.relay import STALL_TICKS, ActiveStreams, Relaying
from proxy.tasks import TaskTracker


class Closable:
    """Stands in for an upstream response and a client transport: records close/abort."""

    def __init__(self) -> None:
        self.closed = self.aborted = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def relaying() -> tuple[Relaying, Closable, Closable]:
    up, client = Closable(), Closable()
    return Relaying(up, client), up, client  # type: ignore[arg-type]


def test_a_write_waiting_through_every_tick_is_a_stall() -> None:
    """Stalled only after the same write waited `STALL_TICKS` ticks after the one that first
    saw it; a write that completes, or no write at all, starts the count again."""
    r, _, _ = relaying()
    assert not any(r.stalled() for _ in range(10))  # idle: no write waiting
    r.writes += 1  # a write starts
    assert [r.stalled() for _ in range(STALL_TICKS + 1)] == [False] * STALL_TICKS + [True]
    r, _, _ = relaying()
    r.writes += 1
    for _ in range(STALL_TICKS):
        assert not r.stalled()
    r.writes += 2  # that write ended and the next one started: progress
    assert not r.stalled()


def test_stop_closes_the_upstream_aborts_the_client_and_keeps_the_first_reason() -> None:
    r, up, client = relaying()
    r.stop(EndReason.CLIENT_STALLED)
    r.stop(EndReason.SHUTDOWN)
    assert (r.stopped, up.closed, client.aborted) == (EndReason.CLIENT_STALLED, True, True)


async def test_abort_all_stops_every_relay_and_any_that_starts_later() -> None:
    active = ActiveStreams()
    up, client = Closable(), Closable()
    first = active.open(up, client)  # type: ignore[arg-type]
    active.abort_all()
    assert first.stopped is EndReason.SHUTDOWN and up.closed and client.aborted
    late_up, late_client = Closable(), Closable()
    late = active.open(late_up, late_client)  # type: ignore[arg-type]
    assert late.stopped is EndReason.SHUTDOWN and late_up.closed and late_client.aborted
    active.close(first)
    active.close(late)
    assert not active.streams


async def test_the_watch_stops_a_blocked_write_and_spares_a_quiet_stream() -> None:
    """With a 0.2 s write timeout: a relay whose write never returns is stopped as
    `client_stalled`; one waiting on its upstream (no write pending) is left alone."""
    active = ActiveStreams(write_timeout=0.2)
    blocked = active.open(Closable(), Closable())  # type: ignore[arg-type]
    quiet = active.open(Closable(), Closable())  # type: ignore[arg-type]
    blocked.writes += 1
    async with asyncio.timeout(30):
        while blocked.stopped is None:
            await asyncio.sleep(0.05)
    assert blocked.stopped is EndReason.CLIENT_STALLED and quiet.stopped is None
    active.close(blocked)
    active.close(quiet)


class Recorder(Plugin):
    """Records the terminal hook it gets."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.got: list[Any] = []

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        """Record the outcome."""
        self.got.append(outcome)

    async def on_error(self, ctx: RequestContext, error: ProxyError) -> None:
        """Record the error."""
        self.got.append(error)


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), TypeError("not an SSEEvent")], ids=["cancelled", "error"])
async def test_an_abandoned_handler_delivers_one_terminal_hook(exc: BaseException) -> None:
    """A handler leaving before its terminal hook delivers one: `shutdown` when it was
    cancelled, `plugin_failed` after an unexpected error; on_complete when something was
    relayed, on_error otherwise; never a second one."""
    expected = EndReason.SHUTDOWN if isinstance(exc, asyncio.CancelledError) else EndReason.PLUGIN_FAILED
    for relayed in (False, True):
        rec, tracker = Recorder(), TaskTracker()
        ctx = RequestContext(
            "r1",
            Dialect.OPENAI,
            Endpoint.CHAT,
            "POST",
            "/v1/chat/completions",
            MultiDictProxy(MultiDict()),
            CIMultiDictProxy(CIMultiDict()),
            "127.0.0.1",
            b"{}",
            {},
            "mock-gpt",
            True,
        )
        ctx.status = 200
        if relayed:
            ctx.first_byte_at = ctx.started_at
        run = Pipeline([rec], tracker).start(ctx)
        await run.request()
        _end_abandoned(run, ctx, exc)
        _end_abandoned(run, ctx, exc)
        await tracker.idle()
        (got,) = rec.got
        assert isinstance(got, Outcome if relayed else ProxyError) and got.reason is expected
        assert ctx.end_reason == expected.value
