"""A stream's meter that reads its events only when an answer needs them.

Billing needs little from a streamed response: the usage the upstream reports, whether the
stream ended properly, whether it carried an error, and, only when no usage came, the
relayed text to count. Parsing every content event for that cost as much as relaying it.
So the events are kept as the relay received them, on an `EventTape` (the relay keeps them
there itself for billing's `EventFilter`, without calling `on_event`), and the questions
are answered when asked, by two `UsageMeter`s fed in the stream's order:

* the *quick* meter is fed only the events that can carry usage, an end or an error, found
  by a few substring searches (`MARKS`, per endpoint) over the kept bytes joined, so the
  searching runs in C over the whole stream at once, not per event; it answers `usage`,
  `terminal` and `error`;
* the *full* meter is fed every event; it answers `has_content` and `output_count`, and
  once it exists it answers everything.

Both give what one meter fed every event would: the quick meter sees, in order, every
event that changes usage, the end or the error (those fields depend on nothing else), and
the full meter sees them all. A stream longer than `KEEP` events is handed to the full
meter in batches of `KEEP`, so memory stays bounded and a long stream costs what it did
before. Checkpoints ask mid-stream; each meter reads only the events kept since.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

import orjson

from plugins.billing.meter import UsageMeter
from plugins.billing.usage import Usage
from proxy.plugin import Endpoint, EventTape, SSEEvent

__all__ = ["MARKS", "StreamMeter"]

#: A substring whose every occurrence marks an event that may matter, unless the bytes at
#: that occurrence start with the second member (e.g. a `"usage":null` changes nothing).
Mark = tuple[bytes, bytes | None]

# Every key a `UsageMeter` handler reads for the usage, the end or the error: reading too
# many events is only slower, too few would be wrong. Keys spelled with JSON escapes
# (`"us\u0061ge"`) are not found, as the substring tests on `data` before did not find them.
_USAGE: Mark = (b"usage", b'usage":null')  # also Gemini's `usageMetadata`
_ERROR: Mark = (b"rror", None)  # an `error` key or type, an `event: error`, `response.failed`'s error
_DONE: Mark = (b"[DONE]", None)
#: OpenAI chat and completions: a `finish_reason` that is not a compact `null` ends a choice.
OPENAI_FINISH: Mark = (b'"finish_reason"', b'"finish_reason":null')

#: Per endpoint, the marks of the events the quick meter must read (OpenAI's finish reasons
#: are read only when no `[DONE]` was kept: `[DONE]` alone makes the stream terminal).
MARKS: dict[Endpoint, tuple[Mark, ...]] = {
    Endpoint.CHAT: (_USAGE, _ERROR, _DONE),
    Endpoint.COMPLETIONS: (_USAGE, _ERROR, _DONE),
    Endpoint.MESSAGES: (_USAGE, _ERROR, (b"message_stop", None)),
    Endpoint.GEMINI_STREAM: (_USAGE, _ERROR, (b"finishReason", None)),
    Endpoint.GEMINI_GENERATE: (_USAGE, _ERROR, (b"finishReason", None)),
}
#: The Responses API and other endpoints: usage, an error, an end (`*.completed`,
#: `response.incomplete`, `response.failed`), `[DONE]`.
OTHER_MARKS: tuple[Mark, ...] = (
    _USAGE,
    _ERROR,
    (b"completed", None),
    (b"incomplete", None),
    (b"failed", None),
    _DONE,
)
_OPENAI = frozenset((Endpoint.CHAT, Endpoint.COMPLETIONS))


def marked(raws: Sequence[bytes], marks: Sequence[Mark]) -> list[int]:
    """The positions in `raws` (whole SSE events) of the events some mark occurs in, in order."""
    joined = b"".join(raws)
    found: set[int] = set()
    starts: list[int] | None = None
    for needle, unless in marks:
        if unless is not None and joined.count(needle) == joined.count(unless):
            continue  # every occurrence is one that changes nothing
        at = joined.find(needle)
        while at >= 0:
            if unless is None or not joined.startswith(unless, at):
                if starts is None:
                    starts = list(accumulate(map(len, raws), initial=0))
                found.add(bisect_right(starts, at) - 1)
            at = joined.find(needle, at + 1)
    return sorted(found)


class StreamMeter:
    """Keeps a response's events and meters them when asked (see the module docstring)."""

    __slots__ = ("_endpoint", "_counter", "tape", "_quick", "_read", "_full", "_marks", "_openai")

    #: Events kept before they are handed to the full meter.
    KEEP = 4096

    def __init__(self, endpoint: Endpoint, counter: Callable[[str], int] | None = None) -> None:
        self._endpoint = endpoint
        self._counter = counter
        #: The kept events (raw bytes), which the relay appends to for billing's `EventFilter`.
        self.tape = EventTape(self.KEEP)
        self._quick = UsageMeter(endpoint)
        self._read = 0  # kept events the quick meter has looked at
        self._full: UsageMeter | None = None
        self._marks = MARKS.get(endpoint, OTHER_MARKS)
        self._openai = endpoint in _OPENAI

    def add(self, event: SSEEvent) -> None:
        """Keep one relayed event (metered later)."""
        self.tape.raws.append(event.raw)
        if self.tape.full:
            self._all()

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
        return self._ends().usage

    @property
    def terminal(self) -> bool:
        """Whether the response ended properly (a finish reason, `[DONE]`, a stop event)."""
        return self._ends().terminal

    @property
    def error(self) -> bool:
        """Whether an error event was relayed."""
        return self._ends().error

    def has_content(self) -> bool:
        """Whether any output text, tool-call argument or reasoning text was relayed."""
        return self._all().has_content

    def output_count(self) -> int:
        """Tokens of all countable relayed output (reads every event)."""
        return self._all().output_count()

    def _ends(self) -> UsageMeter:
        if self._full is not None:
            return self._all()
        quick, raws = self._quick, self.tape.raws
        if self._read < len(raws):
            batch = raws[self._read :]
            self._read = len(raws)
            marks = self._marks
            if self._openai and not quick.terminal and not _is_done(batch[-1]):
                marks = (*marks, OPENAI_FINISH)  # no `[DONE]` at the end: read the finish reasons
            picked = marked(batch, marks)
            if picked:
                for event in EventTape.events([batch[i] for i in picked]):
                    quick.feed_sse(event.data, _parse(event.data), event.event)
        return quick

    def _all(self) -> UsageMeter:
        full = self._full
        if full is None:
            full = self._full = UsageMeter(self._endpoint, self._counter)
        if self.tape.raws:
            for event in EventTape.events(self.tape.take()):
                full.feed_sse(event.data, _parse(event.data), event.event)
            self._read = 0
        return full


def _is_done(raw: bytes) -> bool:
    """Whether `raw` is OpenAI's `[DONE]` event (which makes a stream terminal)."""
    if b"[DONE]" not in raw:
        return False
    events = EventTape.events([raw])
    return len(events) == 1 and events[0].data.strip() == "[DONE]"


def _parse(data: str) -> Any:
    """An event's JSON payload, or None (`[DONE]`, not JSON)."""
    try:
        return orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return None
