"""The pump: upstream bytes → SSE parser → `on_event` → client, and the outcome.

Streams are relayed chunk by chunk as they arrive; `StreamResponse.write` awaits the
client's drain, so a slow reader stops us reading the upstream (backpressure), and a
client that left surfaces as an exception at `write()`, at a known point.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from proxy.context import EndReason, Outcome, RequestContext
from proxy.dialects import is_error_event, is_terminal
from proxy.pipeline import PluginFailed, Run
from proxy.sse import SSEOverflow, SSEParser

#: Errors reading from the upstream mid-response: a reset, a timeout, a broken payload.
UPSTREAM_READ_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
#: Errors writing to a client that went away.
CLIENT_GONE = (ConnectionError, aiohttp.ClientConnectionResetError)


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


class ActiveStreams:
    """The upstream responses being relayed, so shutdown can end them."""

    def __init__(self) -> None:
        self.responses: set[aiohttp.ClientResponse] = set()
        self.shutting_down = False

    def abort_all(self) -> None:
        """Close every upstream response; their pumps end with reason `shutdown`."""
        self.shutting_down = True
        for resp in list(self.responses):
            resp.close()


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

    `idle` bounds each wait for upstream bytes (the upstream's `read_timeout`).
    """
    st = StreamState()
    reason: EndReason | None = None
    active.responses.add(upstream)
    watch = IdleWatch(upstream, idle) if idle is not None else None
    try:
        await _relay_loop(request, resp, upstream, ctx, run, st, watch)
    except PluginFailed as exc:
        reason, st.error = EndReason.PLUGIN_FAILED, str(exc)
    except UPSTREAM_READ_ERRORS as exc:
        st.error = f"upstream read failed: {type(exc).__name__}"
        st.broken = True
    except SSEOverflow as exc:
        # An event too large to relay whole: the stream cannot go on, like a reset.
        st.error = f"upstream stream unusable: {exc}"
        st.broken = True
    finally:
        if watch is not None:
            watch.cancel()
        active.responses.discard(upstream)
        upstream.close()
    if reason is None:
        reason = _reason(st, active)
    if st.broken and not st.terminal and not st.client_gone and request.transport is not None:
        # Mirror the upstream's failure: end the client's stream without its terminating
        # chunk, so the client knows the answer is incomplete (a clean EOF would hide it).
        request.transport.abort()
        st.client_gone = reason is EndReason.CLIENT_DISCONNECTED
    elif not st.client_gone:
        try:
            await resp.write_eof()
        except CLIENT_GONE:
            st.client_gone = True
    return Outcome(reason, upstream.status, st.events, st.bytes_relayed, st.drained, st.error)


def _reason(st: StreamState, active: ActiveStreams) -> EndReason:
    if st.client_gone:
        return EndReason.CLIENT_DISCONNECTED
    if st.errored:
        return EndReason.UPSTREAM_ERROR
    if st.terminal:
        return EndReason.COMPLETED
    if active.shutting_down:
        return EndReason.SHUTDOWN
    return EndReason.UPSTREAM_TRUNCATED


async def _relay_loop(
    request: web.Request,
    resp: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    ctx: RequestContext,
    run: Run,
    st: StreamState,
    watch: IdleWatch | None,
) -> None:
    parser = SSEParser()
    endpoint = ctx.endpoint
    reader = upstream.content
    while True:
        chunk = await read_chunk(reader, watch)
        if not chunk:
            break
        if request.transport is None or request.transport.is_closing():
            # The client left while we waited: these bytes will never be relayed, so the
            # plugins must not meter them as delivered (`partial` bills what was relayed).
            st.client_gone = True
            if ctx.drain_on_disconnect:
                await _drain(reader, parser, ctx, run, st, chunk)
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
                passed = await run.event(item)
                if passed is None:
                    continue
                item = passed
            out.append(item.raw)
        if out and not await _write(resp, b"".join(out), ctx, st):
            if not ctx.drain_on_disconnect:
                return
            await _drain(reader, parser, ctx, run, st)
            return
    rest = parser.flush()
    tail = b"".join(i for i in rest if isinstance(i, bytes))
    if tail:
        await _write(resp, tail, ctx, st)


async def _write(resp: web.StreamResponse, data: bytes, ctx: RequestContext, st: StreamState) -> bool:
    """Write to the client; False (and `client_gone`) when the client has left."""
    try:
        await resp.write(data)
    except CLIENT_GONE:
        st.client_gone = True
        return False
    if ctx.first_byte_at is None:
        ctx.first_byte_at = time.monotonic()
    st.bytes_relayed += len(data)
    return True


async def _drain(
    reader: aiohttp.StreamReader, parser: SSEParser, ctx: RequestContext, run: Run, st: StreamState,
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
                        await run.event(item)
    except TimeoutError:
        st.error = "drain timed out"


class IdleWatch:
    """Closes an upstream response that has been silent for `idle` seconds.

    aiohttp's own `sock_read` timer is not enough: when its parser rejects the framing (a
    bad chunk size), it drops that timer and leaves the body reader waiting forever with no
    error. One timer per response, re-armed lazily, costs a clock read per chunk; an
    `asyncio.timeout` around every read cost about 6 µs per chunk on the hot path.
    """

    __slots__ = ("_loop", "_idle", "_last", "_handle", "_upstream", "fired")

    def __init__(self, upstream: aiohttp.ClientResponse, idle: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._upstream = upstream
        self._last = self._loop.time()
        self._handle = self._loop.call_at(self._last + idle, self._check)
        self.fired = False

    def touch(self) -> None:
        """Bytes arrived: the silence starts again now."""
        self._last = self._loop.time()

    def _check(self) -> None:
        due = self._last + self._idle
        if self._loop.time() >= due:
            self.fired = True
            self._upstream.close()
        else:
            self._handle = self._loop.call_at(due, self._check)

    def cancel(self) -> None:
        """Stop watching (the response ended)."""
        self._handle.cancel()


async def read_chunk(reader: aiohttp.StreamReader, watch: IdleWatch | None) -> bytes:
    """The next upstream bytes (b"" at EOF). Raises `UpstreamIdle` when `watch` fired."""
    try:
        chunk = await reader.readany()
    except UPSTREAM_READ_ERRORS:
        if watch is not None and watch.fired:
            raise UpstreamIdle() from None
        raise
    if watch is not None:
        if watch.fired:
            raise UpstreamIdle()
        watch.touch()
    return chunk


class UpstreamIdle(asyncio.TimeoutError):
    """The upstream sent nothing for longer than its `read_timeout`."""

    def __init__(self) -> None:
        super().__init__("upstream silent for longer than its read_timeout")


async def read_body(upstream: aiohttp.ClientResponse, limit: int, idle: float | None = None) -> bytes:
    """Read a whole non-streamed upstream body, refusing one larger than `limit`."""
    chunks: list[bytes] = []
    size = 0
    watch = IdleWatch(upstream, idle) if idle is not None else None
    try:
        while chunk := await read_chunk(upstream.content, watch):
            size += len(chunk)
            if size > limit:
                raise ValueError(f"upstream body larger than {limit} bytes")
            chunks.append(chunk)
    finally:
        if watch is not None:
            watch.cancel()
    return b"".join(chunks)
