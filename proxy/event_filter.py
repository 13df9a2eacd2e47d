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
from collections.abc import Callable, Sequence
from typing import Any, Final

from proxy.context import SSEEvent
from proxy.sse import SSEParser

__all__ = ["ANY_RAW", "EVERY_EVENT", "EventFilter", "EventTape", "StreamFilters", "union_search"]

#: `StreamFilters.gate` while some plugin with `on_event` declared no filter: every event
#: goes through the plugins.
EVERY_EVENT: Final = object()
#: `StreamFilters.gate` when only the `needle` decides which events go through the plugins.
ANY_RAW: Final = object()
#: `StreamFilters.room()` when no plugin keeps a tape.
_NO_LIMIT: Final = 1 << 62


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

    * `pattern`: a bytes regular expression (or one compiled with `re.compile`) searched in
      each event's raw bytes (`SSEEvent.raw`, the `event:`/`data:` lines included).
    * `substring`: a string (no line break) looked for in each event's `data`: the cheapest
      test there is (`in`), worth giving as a first sieve even with a `pattern`.
    * `tape`: an `EventTape` on which the relay keeps every event that reached the plugin.

    `on_event` runs on the events that hold `substring` (when given) and match `pattern`
    (when given); with neither, on no event (only when `tape` is full). A filter may let
    through more events than needed (they only cost a call); one that misses an event the
    plugin needs is a bug of the plugin. Events `on_event` does not see pass it unchanged.
    Build patterns once (a module constant), not per stream: `re.compile` is not free.
    """

    __slots__ = ("pattern", "substring", "tape")

    def __init__(
        self,
        pattern: re.Pattern[bytes] | bytes | None = None,
        tape: EventTape | None = None,
        *,
        substring: str | None = None,
    ) -> None:
        if isinstance(pattern, bytes):
            pattern = re.compile(pattern)
        elif pattern is not None and not (isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, bytes)):
            raise TypeError("EventFilter.pattern must be bytes, a compiled bytes pattern, or None")
        if tape is not None and not isinstance(tape, EventTape):
            raise TypeError("EventFilter.tape must be an EventTape or None")
        if substring is not None and not (isinstance(substring, str) and substring and "\n" not in substring):
            raise TypeError("EventFilter.substring must be a non-empty str without a line break, or None")
        self.pattern: re.Pattern[bytes] | None = pattern
        self.substring = substring
        self.tape = tape

    @property
    def tests(self) -> bool:
        """Whether the filter lets any event through (it has a pattern or a substring)."""
        return self.pattern is not None or self.substring is not None

    def wants(self, event: SSEEvent) -> bool:
        """Whether `on_event` runs on `event` (a full tape aside)."""
        if self.substring is not None and self.substring not in event.data:
            return False
        if self.pattern is not None:
            return self.pattern.search(event.raw) is not None
        return self.substring is not None

    def sieve(self) -> re.Pattern[bytes] | None:
        """A bytes pattern matching at least the events this filter wants (for a union)."""
        if self.pattern is not None:
            return self.pattern
        if self.substring is not None:
            return re.compile(re.escape(self.substring.encode()))
        return None


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


class StreamFilters:
    """The filters the plugins declared for one stream (by `id` of the plugin), and what the
    relay needs to pass an event by them without a call (see `passing`)."""

    __slots__ = ("declared", "gate", "needle", "keep")

    def __init__(self, declared: dict[int, EventFilter]) -> None:
        self.declared = declared
        #: `EVERY_EVENT` (no passing by), None (every event may), `ANY_RAW` (the `needle`
        #: decides) or a pattern's `search`: the events it does not find may pass by.
        self.gate: Any = EVERY_EVENT
        #: A substring an event's `data` must hold not to pass by (None: no such test).
        self.needle: str | None = None
        #: Keeps a passed-by event's raw bytes on every tape (None: no tape).
        self.keep: Callable[[bytes], None] | None = None

    def plan(self, event_hooks: Sequence[object]) -> None:
        """Work out `gate`, `needle` and `keep` for the plugins with `on_event` (again after
        one is skipped): events pass by only when every one of them declared a filter."""
        found = [self.declared.get(id(p)) for p in event_hooks]
        declared = [d for d in found if d is not None]
        self.gate, self.needle, self.keep = EVERY_EVENT, None, None
        if not found or len(declared) < len(found):
            return
        tested = [d for d in declared if d.tests]
        if len(tested) == 1:
            only = tested[0]
            self.needle = only.substring
            self.gate = ANY_RAW if only.pattern is None else only.pattern.search
        else:
            union = union_search([p for p in (d.sieve() for d in tested) if p is not None])
            self.gate = None if union is None else union.search
        lists = [d.tape.raws for d in declared if d.tape is not None]
        self.keep = lists[0].append if len(lists) == 1 else (_keeper(lists) if lists else None)

    def room(self) -> int:
        """Events that may still pass by before one must go through the plugins, so that
        the plugin of a tape that is full is called."""
        if self.keep is None:
            return _NO_LIMIT
        return min(d.tape.limit - 1 - len(d.tape.raws) for d in self.declared.values() if d.tape is not None)

    def wanted(self, plugin: object, event: SSEEvent) -> bool:
        """Keep `event` on `plugin`'s tape; whether its `on_event` must run on it (always
        for a plugin that declared nothing)."""
        declared = self.declared.get(id(plugin))
        if declared is None:
            return True
        tape = declared.tape
        if tape is not None:
            tape.raws.append(event.raw)
            if len(tape.raws) >= tape.limit:
                return True
        return declared.wants(event)


def _keeper(lists: Sequence[list[bytes]]) -> Callable[[bytes], None]:
    def keep(raw: bytes) -> None:
        for kept in lists:
            kept.append(raw)

    return keep
