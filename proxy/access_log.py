"""The access log: one line per request, written in batches off the request path.

A request only appends a tuple of its fields (about a microsecond); `AccessLog.run`, a
service task, formats and writes what waits once a second, in one write, and `close`
writes the rest at shutdown. A line per request through `logging` cost ~140 µs of CPU
(a LogRecord, a formatter, a write and a flush each); batching leaves the lines as they
were. A crash loses at most the last second's lines (a SIGKILL cannot be caught).

Lines go to standard error, in the format of the rest of the log:

    2026-12-07 14:10:00,123 INFO weir.access: request_id=... client=... method=POST ...
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import TextIO

#: One request: (time, request id, client, method, path, model, upstream, status, stream,
#: outcome, events, ms, ttft ms or None).
Entry = tuple[float, str, str, str, str, str | None, str, int, bool, str, int, float, float | None]

_LINE = (
    "%s INFO weir.access: request_id=%s client=%s method=%s path=%s model=%s upstream=%s status=%s"
    " stream=%s outcome=%s events=%d ms=%.1f ttft_ms=%s\n"
)


class AccessLog:
    """Buffers access-log entries and writes them in batches (see the module docstring)."""

    #: Seconds between writes.
    FLUSH_EVERY = 1.0
    #: Entries that trigger a write before the second is up (bounds memory under load).
    MAX_PENDING = 2048

    def __init__(self, stream: Callable[[], TextIO] = lambda: sys.stderr) -> None:
        """`stream` returns where to write (looked up at each write, so a replaced
        `sys.stderr`, as under a test runner, is honoured)."""
        self._stream = stream
        self._pending: list[Entry] = []
        self._stamp_second = -1
        self._stamp = ""

    def add(self, entry: Entry) -> None:
        """Queue one request's line; writes at once only when `MAX_PENDING` lines wait."""
        pending = self._pending
        pending.append(entry)
        if len(pending) >= self.MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        """Format and write every queued line, in one write."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        text = "".join([self._format(entry) for entry in batch])
        stream = self._stream()
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # a closed or full stderr must not break serving
            pass

    def _format(self, e: Entry) -> str:
        at = e[0]
        second = int(at)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        stamp = f"{self._stamp},{int((at - second) * 1000):03d}"
        ttft = e[12]
        return _LINE % (stamp, *e[1:12], "-" if ttft is None else f"{ttft:.1f}")

    async def run(self) -> None:
        """Forever (a service task): write what waits, once every `FLUSH_EVERY` seconds."""
        while True:
            await asyncio.sleep(self.FLUSH_EVERY)
            self.flush()
