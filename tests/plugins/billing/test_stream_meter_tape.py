"""`StreamMeter` fed as the relay feeds it for billing's `EventFilter`: the events land on
its tape as raw bytes (any SSE framing), `on_event` sees only a few, and the answers are
those of a `UsageMeter` fed every event, asked at the end or mid-stream (checkpoints)."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.billing.meter import UsageMeter
from plugins.billing.stream_meter import StreamMeter
from proxy.context import Endpoint, SSEEvent
from tests.plugins.billing.test_stream_meter import RECORDED, count, openai_chunk
from tests.plugins.billing.test_usage import read_sse

#: What billing's `on_event` sees when it hides a usage chunk (plugins.billing.plugin).
USAGE_CHUNK = re.compile(rb'usage"\s*:\s*\{')


def framed(name: str | None, data: str, style: int) -> bytes:
    """One event's raw bytes in one of the framings an upstream may use."""
    newline = ("\n", "\r\n", "\r")[style % 3]
    lines = ([f"event: {name}"] if name else []) + [f"data:{' ' if style % 2 else ''}{d}" for d in data.split("\n")]
    return (newline.join(lines) + newline + newline).encode()


def relayed(endpoint: Endpoint, events: list[tuple[str | None, str]], style: int, ask_every: int) -> tuple[Any, Any]:
    """(a UsageMeter fed every event, the StreamMeter fed as the relay feeds it), asking the
    StreamMeter for its usage every `ask_every` events as checkpoints do."""
    full = UsageMeter(endpoint, count)
    lazy = StreamMeter(endpoint, count)
    for i, (name, data) in enumerate(events):
        try:
            payload: Any = json.loads(data)
        except ValueError:
            payload = None
        full.feed_sse(data, payload, name)
        raw = framed(name, data, style + i)
        lazy.tape.raws.append(raw)  # the relay keeps it
        if USAGE_CHUNK.search(raw):  # the filter lets it through to on_event
            lazy.see(SSEEvent(data, event=name, raw=raw))
        if ask_every and i % ask_every == 0:
            lazy.usage  # noqa: B018 - a checkpoint reads it mid-stream
    quick = (lazy.usage, lazy.terminal, lazy.error)
    answers = (full.usage, full.terminal, full.error, full.has_content, full.output_count())
    return answers, (*quick, lazy.has_content(), lazy.output_count())


def test_recorded_streams_agree_in_every_framing() -> None:
    for endpoint, name in RECORDED:
        events = read_sse(name)
        for style in range(3):
            for ask_every in (0, 1, 4):
                expected, got = relayed(endpoint, events, style, ask_every)
                assert got == expected, (name, style, ask_every)


def test_usage_spread_over_events_merges_in_order() -> None:
    """Anthropic's usage comes in `message_start` and `message_delta`; the last value wins."""
    events: list[tuple[str | None, str]] = [
        ("message_start", '{"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}'),
        ("content_block_delta", '{"type":"content_block_delta","delta":{"text":"an error, usage"}}'),
        ("message_delta", '{"type":"message_delta","usage":{"output_tokens":7}}'),
        ("message_stop", '{"type":"message_stop"}'),
    ]
    expected, got = relayed(Endpoint.MESSAGES, events, 0, 2)
    assert got == expected and got[0] is not None and got[0].output == 7 and got[1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(openai_chunk(), st.just("[DONE]")), max_size=12), st.integers(0, 5), st.integers(0, 3))
def test_generated_openai_streams_agree(chunks: list[str], style: int, ask_every: int) -> None:
    expected, got = relayed(Endpoint.CHAT, [(None, c) for c in chunks], style, ask_every)
    assert got == expected


def test_usage_null_in_every_chunk_and_usage_in_the_text() -> None:
    """OpenAI sends `"usage":null` in every chunk once usage is asked for: many marks to pass
    over before the real one, some in the text."""
    chunk = '{"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}],"usage":null}'
    events: list[tuple[str | None, str]] = [(None, chunk % ("usage" if i % 3 else "x")) for i in range(30)]
    events += [
        (None, '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'),
        (None, '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}'),
        (None, "[DONE]"),
    ]
    for ask_every in (0, 7):
        expected, got = relayed(Endpoint.CHAT, events, 0, ask_every)
        assert got == expected and got[0] is not None and got[0].output == 9
