"""A stream's meter that reads its events only when an answer needs them.

Billing needs little from a streamed response: the usage the upstream reports, whether the
stream ended properly, whether it carried an error, and, only when no usage came, the
relayed text to count. Parsing every content event for that cost as much as relaying it.
So `StreamMeter.add` only keeps the event (a list append), and the questions are answered
when asked, by two `UsageMeter`s fed in the stream's order:

* the *quick* meter is fed only the events that can carry usage, an end or an error
  (`may_matter`: a few substring tests on the raw `data`, per endpoint, made once per
  event when asked);
  it answers `usage` and `terminal`;
* the *full* meter is fed every event; it answers `has_content` and `output_count`, and
  once it exists it answers everything.

Both give what one meter fed every event would: the quick meter sees, in order, every
event that changes usage, the end or the error (those fields depend on nothing else), and
the full meter sees them all. A stream longer than `KEEP` events is handed to the full
meter in batches of `KEEP`, so memory stays bounded and a long stream costs what it did
before. Checkpoints ask mid-stream; each meter reads only the events added since.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from plugins.billing.meter import UsageMeter
from plugins.billing.usage import Usage
from proxy.plugin import Endpoint, SSEEvent

__all__ = ["StreamMeter", "may_matter"]


def _openai(data: str, name: str | None) -> bool:
    """Chat and completions chunks: usage, an error, `[DONE]`, or a `finish_reason` that is
    not `null`. Every chunk names `finish_reason`, almost always as a compact `null`; any
    other spelling (a spaced `null`, a second choice) is read, which is only slower."""
    if "usage" in data or "rror" in data or "[DONE]" in data or name == "error":
        return True
    at = data.find('"finish_reason"')
    if at < 0:
        return False
    return not data.startswith('"finish_reason":null', at) or data.find('"finish_reason"', at + 15) >= 0


def _anthropic(data: str, name: str | None) -> bool:
    """Messages events: usage (`message_start`, `message_delta`), an error, `message_stop`."""
    return "usage" in data or "rror" in data or "message_stop" in data or name == "error"


def _gemini(data: str, name: str | None) -> bool:
    """Gemini chunks: `usageMetadata`, an error, a `finishReason`."""
    return "usage" in data or "rror" in data or "finishReason" in data or name == "error"


def _other(data: str, name: str | None) -> bool:
    """The Responses API and other endpoints: usage, an error, an end
    (`*.completed`, `response.incomplete`, `response.failed`)."""
    return (
        "usage" in data
        or "rror" in data
        or "completed" in data
        or "incomplete" in data
        or "failed" in data
        or "[DONE]" in data
        or name == "error"
    )


#: Per endpoint: whether an event may change the usage, the end or the error a meter
#: records (substring tests on its raw `data`). Reading too many is only slower; too few
#: would be wrong, so each names every key its `UsageMeter` handler reads for those.
_MAY_MATTER: dict[Endpoint, Callable[[str, str | None], bool]] = {
    Endpoint.CHAT: _openai,
    Endpoint.COMPLETIONS: _openai,
    Endpoint.MESSAGES: _anthropic,
    Endpoint.GEMINI_STREAM: _gemini,
    Endpoint.GEMINI_GENERATE: _gemini,
}


def may_matter(endpoint: Endpoint) -> Callable[[str, str | None], bool]:
    """The test of whether an event of `endpoint`'s stream may change the usage, the end or
    the error (everything else only carries content)."""
    return _MAY_MATTER.get(endpoint, _other)


class StreamMeter:
    """Keeps a response's events and meters them when asked (see the module docstring)."""

    __slots__ = ("_endpoint", "_counter", "_events", "_errors", "_quick", "_read", "_full", "_matters")

    #: Events kept before they are handed to the full meter.
    KEEP = 4096

    def __init__(self, endpoint: Endpoint, counter: Callable[[str], int] | None = None) -> None:
        self._endpoint = endpoint
        self._counter = counter
        # The events' `data` strings only: strings are not tracked by the garbage collector,
        # event objects are, and keeping a stream's worth of them made every collection slower.
        self._events: list[str] = []
        self._errors: set[int] = set()  # positions of events named `error` (Anthropic's)
        self._quick = UsageMeter(endpoint)
        self._read = 0  # events the quick meter has looked at
        self._full: UsageMeter | None = None
        self._matters = may_matter(endpoint)

    def add(self, event: SSEEvent) -> None:
        """Keep one relayed event (metered later)."""
        events = self._events
        events.append(event.data)
        if event.event == "error":
            self._errors.add(len(events) - 1)
        if len(events) >= self.KEEP:
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
        quick, events, matters, errors = self._quick, self._events, self._matters, self._errors
        for i in range(self._read, len(events)):
            data = events[i]
            name = "error" if i in errors else None
            if matters(data, name):
                quick.feed_sse(data, _parse(data), name)
        self._read = len(events)
        return quick

    def _all(self) -> UsageMeter:
        full = self._full
        if full is None:
            full = self._full = UsageMeter(self._endpoint, self._counter)
        events, errors = self._events, self._errors
        if events:
            for i, data in enumerate(events):
                full.feed_sse(data, _parse(data), "error" if i in errors else None)
            events.clear()
            errors.clear()
            self._read = 0
        return full


def _parse(data: str) -> Any:
    """An event's JSON payload, or None (`[DONE]`, not JSON)."""
    try:
        return orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return None
