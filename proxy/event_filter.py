"""Which events of a stream a plugin's `on_event` sees, and the events the relay keeps for it.

A plugin that overrides `Plugin.event_filter` declares, once per streamed response, an
`EventFilter`: a byte pattern tested (in C, by `re`) on each event's raw bytes, so that its
`on_event` runs only on the events that match, and optionally an `EventTape`, on which the
relay keeps the raw bytes of every event that reached the plugin, seen or not, for the
plugin to read when it needs them (e.g. at the end of the stream). A plugin that declares
nothing sees every event, as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from proxy.context import SSEEvent
from proxy.sse import SSEParser

__all__ = ["EventFilter", "EventTape", "union_search"]


class EventTape:
    """The raw bytes of the events of one stream that reached a plugin, in stream order.

    The relay appends each event, as it reached the plugin (after the plugins nearer the
    upstream), whether or not the plugin's `on_event` ran on it. Memory is bounded: once the
    tape holds `limit` events, the plugin's `on_event` runs on the next event whatever its
    filter says, and should `take()` what the tape holds.
    """

    __slots__ = ("raws", "limit")

    def __init__(self, limit: int = 4096) -> None:
        if limit < 1:
            raise ValueError("an EventTape's limit must be positive")
        #: Each kept event's raw bytes (`SSEEvent.raw`): whole SSE blocks.
        self.raws: list[bytes] = []
        self.limit = limit

    def __len__(self) -> int:
        return len(self.raws)

    @property
    def full(self) -> bool:
        """Whether the tape holds `limit` events (its plugin should `take()` them)."""
        return len(self.raws) >= self.limit

    def take(self) -> list[bytes]:
        """The kept events' raw bytes, in order; the tape is empty afterwards."""
        raws = self.raws.copy()
        self.raws.clear()  # in place: the relay holds this list
        return raws

    @staticmethod
    def events(raws: Sequence[bytes]) -> list[SSEEvent]:
        """Parse kept raw bytes back into the events they were (same `data` and `event`)."""
        parser = SSEParser(max_event_bytes=max(1, sum(map(len, raws))))
        items = parser.feed(b"".join(raws))
        return [item for item in items if isinstance(item, SSEEvent)]


class EventFilter:
    """What a plugin's `on_event` sees of one stream (see `Plugin.event_filter`).

    * `pattern`: a bytes regular expression (or one compiled with `re.compile`); `on_event`
      runs only on events whose raw bytes (`SSEEvent.raw`, the `event:`/`data:` lines
      included) it is found in. None: `on_event` runs on no event (only when `tape` is full).
      A pattern may match more events than needed (they only cost a call); one that misses
      an event the plugin needs is a bug of the plugin.
    * `tape`: an `EventTape` on which the relay keeps every event that reached the plugin.

    Events `on_event` does not see pass it unchanged. Build patterns once (a module
    constant), not per stream: `re.compile` is not free.
    """

    __slots__ = ("pattern", "tape")

    def __init__(self, pattern: re.Pattern[bytes] | bytes | None = None, tape: EventTape | None = None) -> None:
        if isinstance(pattern, bytes):
            pattern = re.compile(pattern)
        elif pattern is not None and not (isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, bytes)):
            raise TypeError("EventFilter.pattern must be bytes, a compiled bytes pattern, or None")
        if tape is not None and not isinstance(tape, EventTape):
            raise TypeError("EventFilter.tape must be an EventTape or None")
        self.pattern: re.Pattern[bytes] | None = pattern
        self.tape = tape


def union_search(patterns: Sequence[re.Pattern[bytes]]) -> re.Pattern[bytes] | None:
    """One pattern that matches where any of `patterns` does (None for none)."""
    if not patterns:
        return None
    if len(patterns) == 1:
        return patterns[0]
    return re.compile(b"|".join(b"(?" + _flags(p) + b":" + p.pattern + b")" for p in patterns))


def _flags(pattern: re.Pattern[bytes]) -> bytes:
    """A pattern's own flags, as scoped inline flags (`(?i:...)`) keep them in a union."""
    return b"".join(letter for flag, letter in _SCOPED if pattern.flags & flag)


_SCOPED = ((re.IGNORECASE, b"i"), (re.MULTILINE, b"m"), (re.DOTALL, b"s"), (re.VERBOSE, b"x"))
