"""`StreamMeter` answers what a `UsageMeter` fed every event answers: the same usage, end,
content and output count, on recorded streams of every dialect, on streams cut at every
point, and on generated OpenAI streams with the spellings a substring test could miss."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.billing.meter import UsageMeter
from plugins.billing.stream_meter import StreamMeter
from proxy.context import Endpoint, SSEEvent
from tests.plugins.billing.test_usage import read_sse

RECORDED = [
    (Endpoint.CHAT, "openai_chat_stream.sse"),
    (Endpoint.CHAT, "openai_chat_tools_stream.sse"),
    (Endpoint.RESPONSES, "openai_responses_stream.sse"),
    (Endpoint.MESSAGES, "anthropic_stream.sse"),
    (Endpoint.GEMINI_STREAM, "gemini_stream.sse"),
]


def count(text: str) -> int:
    """A stand-in tokenizer: one token per 3 characters, so text order and length matter."""
    return (len(text) + 2) // 3


def both(endpoint: Endpoint, events: list[tuple[str | None, str]]) -> tuple[Any, Any]:
    """(what a UsageMeter fed every event says, what a StreamMeter says)."""
    full = UsageMeter(endpoint, count)
    lazy = StreamMeter(endpoint, count)
    for name, data in events:
        try:
            payload: Any = json.loads(data)
        except ValueError:
            payload = None
        full.feed_sse(data, payload, name)
        lazy.see(SSEEvent(data, event=name))
    quick = (lazy.usage, lazy.terminal)  # asked first, as settlement does, before any content
    answers = (full.usage, full.terminal, full.has_content, full.output_count())
    return answers, (*quick, lazy.has_content(), lazy.output_count())


def test_recorded_streams_agree_cut_anywhere() -> None:
    for endpoint, name in RECORDED:
        events = read_sse(name)
        for stop in range(len(events) + 1):
            expected, got = both(endpoint, events[:stop])
            assert got == expected, (name, stop)


def test_an_anthropic_error_event_is_seen() -> None:
    events = [
        ("message_start", '{"type":"message_start","message":{"usage":{"input_tokens":5}}}'),
        ("content_block_delta", '{"type":"content_block_delta","delta":{"text":"hi"}}'),
        ("error", '{"type":"overloaded"}'),
    ]
    lazy = StreamMeter(Endpoint.MESSAGES)
    for name, data in events:
        lazy.see(SSEEvent(data, event=name))
    assert lazy.error and not lazy.terminal


def test_a_long_stream_is_read_in_batches() -> None:
    """Past KEEP events the full meter takes over; the answers do not change."""
    chunk = '{"choices":[{"index":0,"delta":{"content":"ab"},"finish_reason":null}]}'
    events: list[tuple[str | None, str]] = [(None, chunk)] * (StreamMeter.KEEP * 2 + 5)
    events += [(None, '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}'), (None, "[DONE]")]
    expected, got = both(Endpoint.CHAT, events)
    assert got == expected and got[0] is not None and got[0].output == 9


_FINISH = st.sampled_from(
    [
        '"finish_reason":null',
        '"finish_reason": null',
        '"finish_reason":"stop"',
        '"finish_reason": "length"',
        '"finish_reason":"tool_calls"',
    ]
)
_TEXT = st.sampled_from(["hi", "usage", "an error", "", "finish_reason", "[DONE]", "é"])


@st.composite
def openai_chunk(draw: st.DrawFn) -> str:
    choices = [
        '{"index":%d,"delta":{"content":%s},%s}' % (i, json.dumps(draw(_TEXT)), draw(_FINISH))
        for i in range(draw(st.integers(0, 2)))
    ]
    usage = draw(
        st.sampled_from(
            ["", ',"usage":null', ',"usage":{"prompt_tokens":4,"completion_tokens":%d}' % draw(st.integers(0, 9))]
        )
    )
    return '{"choices":[%s]%s}' % (",".join(choices), usage)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(openai_chunk(), st.just("[DONE]")), max_size=12))
def test_generated_openai_streams_agree(chunks: list[str]) -> None:
    expected, got = both(Endpoint.CHAT, [(None, c) for c in chunks])
    assert got == expected
