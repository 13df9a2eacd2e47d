"""A stream's meter that reads its events only when an answer needs them.

Billing needs little from a streamed response: the usage the upstream reports, whether the
stream ended properly, and, only when no usage came, the relayed text to count. Parsing
every content event for that cost as much as relaying it. So the events are kept as the
relay received them, on an `EventTape` (the relay keeps them there itself for billing's
`EventFilter`, without calling `on_event`), and each question is answered when asked, by
searching the kept bytes joined (in C, over the whole stream at once, not per event) for
the few events that can answer it, and parsing only those:

* `usage`: every event a usage object may be in (`USAGE`), fed in stream order to the
  *quick* meter (per field the last value wins, so all of them, in order);
* `terminal`, `error`: one event that makes a meter terminal (`END_MARKS`, per endpoint) or
  errored (`ERROR_MARKS`) is enough, and the end is usually the last event, so the search
  runs from the end and stops at the first real one (a mark inside content text is parsed,
  found not to count, and passed over);
* `has_content`, `output_count`: the *full* meter is fed every event; once it exists it
  answers everything.

Each answer is what one `UsageMeter` fed every event would give: the marks name every key
its handlers read for that answer. A stream longer than `KEEP` events is handed to the full
meter in batches of `KEEP`, so memory stays bounded and a long stream costs what it did
before. Checkpoints ask mid-stream; each answer reads only the events kept since it last did.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

import orjson

from plugins.billing.meter import UsageMeter
from plugins.billing.usage import Usage
from proxy.plugin import Endpoint, EventTape, SSEEvent

__all__ = ["END_MARKS", "ERROR_MARKS", "USAGE", "StreamMeter"]

#: Where a usage object may be (Gemini's `usageMetadata` too): every `usage` but a compact
#: `"usage":null` (OpenAI sends one in every chunk when usage is asked for). Keys spelled
#: with JSON escapes (`"us\u0061ge"`) are not found, as the substring tests before did not.
USAGE = re.compile(rb'usage(?!":null)')
_DONE = b"[DONE]"  # `[DONE]` makes a UsageMeter terminal whatever the endpoint
#: `[DONE]` events as upstreams write them, byte for byte (each parses to data `[DONE]`).
_DONE_EVENTS = frozenset((b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n", b"data:[DONE]\n\n"))
#: OpenAI: a `finish_reason` that is not a compact `null` (looked for only when no `[DONE]`).
_FINISH, _NO_FINISH = b'"finish_reason"', b'"finish_reason":null'
#: Per endpoint, substrings one of which every event that ends a stream carries, the
#: likeliest first (the Responses API and others: `*.completed`, `response.incomplete`,
#: `response.failed`).
END_MARKS: dict[Endpoint, tuple[bytes, ...]] = {
    Endpoint.CHAT: (_DONE, _FINISH),
    Endpoint.COMPLETIONS: (_DONE, _FINISH),
    Endpoint.MESSAGES: (b"message_stop", _DONE),
    Endpoint.GEMINI_STREAM: (b"finishReason", _DONE),
    Endpoint.GEMINI_GENERATE: (b"finishReason", _DONE),
}
OTHER_END_MARKS = (b"completed", b"incomplete", b"failed", _DONE)
#: An `error` key or type, an `event: error` line, `response.failed`.
ERROR_MARKS = (b"rror", b"failed")


class StreamMeter:
    """Keeps a response's events and meters them when asked (see the module docstring)."""

    __slots__ = ("_endpoint", "_counter", "_tape", "_quick", "_full", "_read", "_joined", "_ended", "_errored")

    #: Events kept before they are handed to the full meter.
    KEEP = 4096

    def __init__(self, endpoint: Endpoint, counter: Callable[[str], int] | None = None) -> None:
        self._endpoint = endpoint
        self._counter = counter
        self._tape: EventTape | None = None  # made when first needed: streams only
        self._quick: UsageMeter | None = None  # made when first asked: streams only
        self._full: UsageMeter | None = None
        # Per answer: kept events already searched (`usage`, `terminal`, `error`), and
        # whether the answer is known to be True.
        self._read = [0, 0, 0]
        self._joined: tuple[int, int, bytes] = (0, 0, b"")  # the last batch searched, joined
        self._ended = False
        self._errored = False

    @property
    def tape(self) -> EventTape:
        """The kept events (raw bytes), which the relay appends to for billing's `EventFilter`."""
        tape = self._tape
        if tape is None:
            tape = self._tape = EventTape(self.KEEP)
        return tape

    def see(self, event: SSEEvent) -> None:
        """`on_event` saw `event`: keep it, unless the relay already did (it is then the
        last event on the tape), and hand a full tape to the full meter."""
        raws = self.tape.raws
        if not raws or raws[-1] is not event.raw:
            raws.append(event.raw)
        if len(raws) >= self.KEEP:
            self._all()

    def feed_body(self, body: Any) -> None:
        """Meter a whole non-streamed JSON response."""
        self._all().feed_body(body)

    @property
    def usage(self) -> Usage | None:
        """The upstream's usage, normalised; None when no usage object was seen."""
        if self._full is not None:
            return self._all().usage
        quick = self._quick
        if quick is None:
            quick = self._quick = UsageMeter(self._endpoint)
        batch, joined = self._unread(0)
        if batch:
            for event in _events_at(batch, marked(batch, joined)):
                quick.feed_sse(event.data, _parse(event.data), event.event)
        return quick.usage

    @property
    def terminal(self) -> bool:
        """Whether the response ended properly (a finish reason, `[DONE]`, a stop event)."""
        if self._full is not None:
            return self._all().terminal
        batch, joined = self._unread(1)
        if batch and not self._ended:
            if batch[-1] in _DONE_EVENTS:  # the usual last event: nothing to search or parse
                self._ended = True
            else:
                marks = END_MARKS.get(self._endpoint, OTHER_END_MARKS)
                self._ended = _any_real(batch, joined, marks, self._endpoint, _ends)
        return self._ended

    @property
    def error(self) -> bool:
        """Whether an error event was relayed."""
        if self._full is not None:
            return self._all().error
        batch, joined = self._unread(2)
        if batch and not self._errored:
            self._errored = _any_real(batch, joined, ERROR_MARKS, self._endpoint, _errs)
        return self._errored

    def has_content(self) -> bool:
        """Whether any output text, tool-call argument or reasoning text was relayed."""
        return self._all().has_content

    def output_count(self) -> int:
        """Tokens of all countable relayed output (reads every event)."""
        return self._all().output_count()

    def _unread(self, answer: int) -> tuple[list[bytes], bytes]:
        """The kept events `answer` has not searched yet (now marked searched), and their
        bytes joined (shared by the answers that search the same events)."""
        if self._tape is None:
            return [], b""
        raws, read = self._tape.raws, self._read
        start, end = read[answer], len(raws)
        if start >= end:
            return [], b""
        read[answer] = end
        batch = raws[start:]
        cached = self._joined
        if cached[0] != start or cached[1] != end:
            cached = self._joined = (start, end, b"".join(batch))
        return batch, cached[2]

    def _all(self) -> UsageMeter:
        full = self._full
        if full is None:
            full = self._full = UsageMeter(self._endpoint, self._counter)
        if self._tape is not None and self._tape.raws:
            for event in EventTape.events(self._tape.take()):
                full.feed_sse(event.data, _parse(event.data), event.event)
            self._read = [0, 0, 0]
            self._joined = (0, 0, b"")
        return full


def marked(raws: Sequence[bytes], joined: bytes) -> list[int]:
    """The positions in `raws` (whole SSE events) of the events `USAGE` occurs in, in order.

    `bytes.find` first (it skips ahead faster than `re`); past a few hits (OpenAI's
    `"usage":null` in every chunk) one `USAGE.finditer` reads the rest. `joined` is
    `raws` joined."""
    hits: list[int] = []
    at, looked = joined.find(b"usage"), 0
    while at >= 0:
        if not joined.startswith(b'usage":null', at):
            hits.append(at)
        looked += 1
        if looked > 8:
            hits += [m.start() for m in USAGE.finditer(joined, at + 1)]
            break
        at = joined.find(b"usage", at + 1)
    return _events_of(raws, len(joined), hits) if hits else []


def _events_of(raws: Sequence[bytes], total: int, hits: Sequence[int]) -> list[int]:
    """The positions in `raws` of the events holding the byte offsets `hits` of their join
    (`total` bytes). A few hits are found by walking from the nearer end (usage and ends
    are usually among the last events, or the first), many by bisecting the offsets."""
    if len(hits) > 4:
        starts = list(accumulate(map(len, raws), initial=0))
        return sorted({bisect_right(starts, at) - 1 for at in hits})
    found: set[int] = set()
    for at in hits:
        if at < total // 2:
            i, end = 0, len(raws[0])  # the end of event i
            while end <= at:
                i += 1
                end += len(raws[i])
        else:
            i = len(raws) - 1
            start = total - len(raws[i])  # the start of event i
            while start > at:
                i -= 1
                start -= len(raws[i])
        found.add(i)
    return sorted(found)


def _any_real(
    raws: Sequence[bytes],
    joined: bytes,
    marks: Sequence[bytes],
    endpoint: Endpoint,
    says: Callable[[UsageMeter], bool],
) -> bool:
    """Whether an event holding one of `marks` makes a `UsageMeter` say so (`says`): each
    candidate, from the last back, is fed alone to a fresh meter (it must not disturb the
    usage's order). `joined` is `raws` joined."""
    total = len(joined)
    for mark in marks:
        if mark is _FINISH and joined.count(_FINISH) == joined.count(_NO_FINISH):
            continue  # every finish reason is a compact null
        i = len(raws) - 1
        start = total - len(raws[i])  # the start of event i
        at = joined.rfind(mark)
        while at >= 0:
            while start > at:
                i -= 1
                start -= len(raws[i])
            probe = UsageMeter(endpoint)
            for event in EventTape.events([raws[i]]):
                probe.feed_sse(event.data, _parse(event.data), event.event)
            if says(probe):
                return True
            at = joined.rfind(mark, 0, start)  # in the events before this one
    return False


def _ends(meter: UsageMeter) -> bool:
    return meter.terminal


def _errs(meter: UsageMeter) -> bool:
    return meter.error


def _events_at(raws: Sequence[bytes], picked: Sequence[int]) -> list[SSEEvent]:
    """The events at `picked` positions of `raws`, parsed, in order."""
    return EventTape.events([raws[i] for i in picked]) if picked else []


def _parse(data: str) -> Any:
    """An event's JSON payload, or None (`[DONE]`, not JSON)."""
    if not data or data == "[DONE]":
        return None  # spares orjson's exception
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
