"""The pump: upstream bytes → SSE parser → `on_event` → client, and the outcome.

Streams are relayed chunk by chunk as they arrive; `StreamResponse.write` awaits the
client's drain, so a slow reader stops us reading the upstream (backpressure), and a
client that left surfaces as an exception at `write()`, at a known point. A client that
accepts nothing for `server.client_write_timeout` seconds is cut off (`client_stalled`), and
shutdown ends every relay still running after its grace period (`shutdown`), even one
waiting on a client: either way the transport is aborted and the outcome still delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from proxy.context import EndReason, Outcome, RequestContext, SSEEvent
from proxy.dialects import is_error_event, is_terminal
from proxy.event_filter import ANY_RAW, EVERY_EVENT
from proxy.pipeline import PluginFailed, Run
from proxy.respond import CLIENT_GONE, PLUGIN_FAILED, internal_message, stream_error
from proxy.sse import SSEOverflow, SSEParser
from proxy.upstream_read import UPSTREAM_READ_ERRORS, IdleWatch, UpstreamIdle, read_body, read_chunk

log = logging.getLogger(__name__)

__all__ = [
    "CLIENT_GONE",
    "UPSTREAM_READ_ERRORS",
    "ActiveStreams",
    "IdleWatch",
    "UpstreamIdle",
    "pump_stream",
    "read_body",
    "read_chunk",
]


@dataclass(slots=True)
class StreamState:
    """What the pump saw, to decide the outcome."""

    events: int = 0
    bytes_relayed: int = 0
    terminal: bool = False
    errored: bool = False
    client_gone: bool = False
    drained: bool = False
    broken: bool = False
    error: str | None = None


#: The stall watch ticks this many times per `client_write_timeout`: a write that waits is
#: stopped after the timeout and at most a quarter of it more.
STALL_TICKS = 4


@dataclass(slots=True, eq=False)
class Relaying:
    """One response being relayed to a client: what shutdown and the stall watch need to end it.

    `writes` is odd while a write to the client waits (it counts starts and ends), so the
    stall watch needs no clock read per write.
    """

    upstream: aiohttp.ClientResponse
    transport: asyncio.Transport | None
    stopped: EndReason | None = None
    writes: int = 0
    _seen: int = -1
    _ticks: int = 0

    def stop(self, reason: EndReason) -> None:
        """End the relay now: close the upstream and abort the client's connection. A write
        waiting on the client returns, and the relay ends with `reason`."""
        if self.stopped is None:
            self.stopped = reason
        self.upstream.close()
        if self.transport is not None:
            self.transport.abort()

    def stalled(self) -> bool:
        """One tick of the stall watch: True once the same write has waited `STALL_TICKS` ticks."""
        if self.writes & 1 and self.writes == self._seen:
            self._ticks += 1
            return self._ticks >= STALL_TICKS
        self._seen, self._ticks = self.writes, 0
        return False


class ActiveStreams:
    """The responses being relayed, so shutdown can end them and stalled clients are cut off.

    `write_timeout` (`server.client_write_timeout`) bounds how long one write may wait on a
    client that accepts nothing; one timer for all streams checks them, while any is open.
    """

    def __init__(self, write_timeout: float | None = None) -> None:
        self.streams: set[Relaying] = set()
        self.shutting_down = False
        self.write_timeout = write_timeout
        self._timer: asyncio.TimerHandle | None = None

    def open(self, upstream: aiohttp.ClientResponse, transport: asyncio.Transport | None) -> Relaying:
        """Register a relay that is starting (stopped at once when shutdown already ended the rest)."""
        relaying = Relaying(upstream, transport)
        self.streams.add(relaying)
        if self.shutting_down:
            relaying.stop(EndReason.SHUTDOWN)
        elif self._timer is None and self.write_timeout:
            self._arm()
        return relaying

    def close(self, relaying: Relaying) -> None:
        """The relay has ended (its outcome is decided)."""
        self.streams.discard(relaying)

    def abort_all(self) -> None:
        """End every relay: they stop reading and writing at once and end with reason `shutdown`."""
        self.shutting_down = True
        for relaying in list(self.streams):
            relaying.stop(EndReason.SHUTDOWN)

    def _arm(self) -> None:
        assert self.write_timeout is not None
        self._timer = asyncio.get_running_loop().call_later(self.write_timeout / STALL_TICKS, self._tick)

    def _tick(self) -> None:
        self._timer = None
        for relaying in list(self.streams):
            if relaying.stopped is None and relaying.stalled():
                relaying.stop(EndReason.CLIENT_STALLED)
        if self.streams:
            self._arm()


async def pump_stream(
    request: web.Request,
    resp: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    ctx: RequestContext,
    run: Run,
    active: ActiveStreams,
    idle: float | None = None,
) -> Outcome:
    """Relay an SSE stream and return how it ended. The caller delivers the outcome.

    `idle` bounds each wait for upstream bytes (the upstream's `read_timeout`). The relay
    stays registered in `active` until its outcome is decided, the final write included.
    """
    st = StreamState()
    relaying = active.open(upstream, request.transport)
    try:
        reason = await _relay(request, resp, upstream, ctx, run, st, relaying, idle)
        if relaying.stopped is None:
            await _end(request, resp, ctx, st, reason, relaying)
    finally:
        active.close(relaying)
    if relaying.stopped is not None:
        reason = relaying.stopped
    return Outcome(reason, upstream.status, st.events, st.bytes_relayed, st.drained, st.error)


async def _relay(
    request: web.Request,
    resp: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    ctx: RequestContext,
    run: Run,
    st: StreamState,
    relaying: Relaying,
    idle: float | None,
) -> EndReason:
    watch = IdleWatch(upstream, idle) if idle is not None else None
    try:
        await _relay_loop(request, resp, upstream, ctx, run, st, watch, relaying)
    except PluginFailed as exc:
        st.error = str(exc)
        return EndReason.PLUGIN_FAILED
    except UPSTREAM_READ_ERRORS as exc:
        st.error = f"upstream read failed: {type(exc).__name__}"
        st.broken = True
    except SSEOverflow as exc:
        # An event too large to relay whole: the stream cannot go on, like a reset.
        st.error = f"upstream stream unusable: {exc}"
        st.broken = True
    except Exception as exc:
        # Something the pipeline's checks did not catch (a bug, or an event a plugin built
        # that cannot be sent): the stream ends as a plugin failure would, visibly.
        log.exception("request %s: the relay failed", ctx.request_id)
        st.error = f"internal error: {type(exc).__name__}"
        return EndReason.PLUGIN_FAILED
    finally:
        if watch is not None:
            watch.cancel()
        upstream.close()
    return _reason(st)


async def _end(
    request: web.Request,
    resp: web.StreamResponse,
    ctx: RequestContext,
    st: StreamState,
    reason: EndReason,
    relaying: Relaying,
) -> None:
    """End the client's response: its terminating chunk, or an abort when the upstream broke.

    A stream that a plugin's failure cut short gets an error event in the dialect first,
    so that the client's SDK raises rather than taking the cut for a complete answer."""
    if reason is EndReason.PLUGIN_FAILED and not st.client_gone:
        relaying.writes += 1
        st.client_gone = not await stream_error(resp, ctx, PLUGIN_FAILED, internal_message(ctx.request_id))
        relaying.writes += 1
    if st.broken and not st.terminal and not st.client_gone and request.transport is not None:
        # Mirror the upstream's failure: end the client's stream without its terminating
        # chunk, so the client knows the answer is incomplete (a clean EOF would hide it).
        request.transport.abort()
        st.client_gone = reason is EndReason.CLIENT_DISCONNECTED
    elif not st.client_gone:
        relaying.writes += 1
        try:
            await resp.write_eof()
        except CLIENT_GONE:
            st.client_gone = True
        relaying.writes += 1


def _reason(st: StreamState) -> EndReason:
    # A relay that shutdown or the stall watch stopped ends with that reason instead.
    if st.client_gone:
        return EndReason.CLIENT_DISCONNECTED
    if st.errored:
        return EndReason.UPSTREAM_ERROR
    if st.terminal:
        return EndReason.COMPLETED
    return EndReason.UPSTREAM_TRUNCATED


async def _relay_loop(
    request: web.Request,
    resp: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    ctx: RequestContext,
    run: Run,
    st: StreamState,
    watch: IdleWatch | None,
    relaying: Relaying,
) -> None:
    parser = SSEParser()
    endpoint = ctx.endpoint
    reader = upstream.content
    dispatch = run.open_stream() if run.event_hooks else run.event
    # Plugins that declared an `EventFilter`: an event no pattern matches passes them by
    # here, kept on their tapes, without a call (`Run.filtered_event` when one matches).
    filtering = run.filters is not None
    gate: Any
    needle: str | None
    keep: Callable[[bytes], None] | None
    gate, needle, keep, room = run.passing() if filtering else (EVERY_EVENT, None, None, 0)
    while True:
        chunk = await read_chunk(reader, watch)
        if not chunk:
            break
        if request.transport is None or request.transport.is_closing():
            # The client left while we waited: these bytes will never be relayed, so the
            # plugins must not meter them as delivered (`partial` bills what was relayed).
            st.client_gone = True
            if ctx.drain_on_disconnect and relaying.stopped is None:
                await _drain(reader, parser, ctx, run, st, dispatch, chunk)
            return
        out: list[bytes] = []
        for item in parser.feed(chunk):
            if isinstance(item, bytes):
                out.append(item)
                continue
            st.events += 1
            if is_terminal(endpoint, item):
                st.terminal = True
            elif is_error_event(endpoint, item):
                st.errored = True
            if run.event_hooks:
                if (
                    gate is not EVERY_EVENT
                    and room > 0
                    and (
                        gate is None
                        or (needle is not None and needle not in item.data)
                        or (gate is not ANY_RAW and gate(item.raw) is None)
                    )
                ):
                    room -= 1
                    if keep is not None:
                        keep(item.raw)
                    out.append(item.raw)
                    continue
                try:
                    passed = await dispatch(item)
                except PluginFailed:
                    # What every plugin passed before the failure still reaches the client.
                    if out:
                        await _write(resp, b"".join(out), ctx, st, relaying)
                    raise
                if filtering:
                    gate, needle, keep, room = run.passing()
                if passed is None:
                    continue
                item = passed
            out.append(item.raw)
        if out and not await _write(resp, b"".join(out), ctx, st, relaying):
            if not ctx.drain_on_disconnect or relaying.stopped is not None:
                return
            await _drain(reader, parser, ctx, run, st, dispatch)
            return
    rest = parser.flush()
    tail = b"".join(i for i in rest if isinstance(i, bytes))
    if tail:
        await _write(resp, tail, ctx, st, relaying)


async def _write(
    resp: web.StreamResponse, data: bytes, ctx: RequestContext, st: StreamState, relaying: Relaying
) -> bool:
    """Write to the client; False (and `client_gone`) when the client has left, or False
    when the relay was stopped while the write waited (shutdown, a stalled client)."""
    relaying.writes += 1  # odd: a write is waiting on the client
    try:
        await resp.write(data)
    except CLIENT_GONE:
        relaying.writes += 1
        st.client_gone = True
        return False
    relaying.writes += 1
    if relaying.stopped is not None:
        return False
    if ctx.first_byte_at is None:
        ctx.first_byte_at = time.monotonic()
    st.bytes_relayed += len(data)
    return True


async def _drain(
    reader: aiohttp.StreamReader,
    parser: SSEParser,
    ctx: RequestContext,
    run: Run,
    st: StreamState,
    dispatch: Callable[[SSEEvent], Awaitable[SSEEvent | None]],
    pending: bytes = b"",
) -> None:
    """After a client left: keep reading (not relaying) within the time and byte bounds,
    so plugins see the upstream's usage. Events still pass through `on_event`. `pending`
    is upstream bytes already read but not yet parsed."""
    budget = ctx.drain_max_bytes
    try:
        async with asyncio.timeout(ctx.drain_timeout):
            while budget > 0:
                chunk, pending = pending or await reader.readany(), b""
                if not chunk:
                    st.drained = True
                    return
                budget -= len(chunk)
                for item in parser.feed(chunk):
                    if isinstance(item, bytes):
                        continue
                    st.events += 1
                    if is_terminal(ctx.endpoint, item):
                        st.terminal = True
                    elif is_error_event(ctx.endpoint, item):
                        st.errored = True
                    if run.event_hooks:
                        await dispatch(item)
    except TimeoutError:
        st.error = "drain timed out"
