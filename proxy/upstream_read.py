"""Reading an upstream response's bytes: the idle watch, one chunk at a time, or a whole body.

Split out of the relay (`proxy.relay`), which streams with it; `proxy.forward` reads
non-streamed bodies with it.
"""

from __future__ import annotations

import asyncio

import aiohttp

#: Errors reading from the upstream mid-response: a reset, a timeout, a broken payload.
UPSTREAM_READ_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)

__all__ = ["UPSTREAM_READ_ERRORS", "IdleWatch", "UpstreamIdle", "read_body", "read_chunk"]


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
