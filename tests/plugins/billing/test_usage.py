"""Usage normalisation per dialect and the stream accumulator (spec §4, §6)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from plugins.billing.meter import UsageMeter
from plugins.billing.pricing import ModelPrice, charge_tokens
from plugins.billing.usage import (
    Usage,
    from_anthropic,
    from_gemini,
    from_openai,
    from_openai_images,
    from_openai_responses,
    normalise,
)
from proxy.context import Endpoint, SSEEvent

FIXTURES = Path(__file__).with_name("fixtures")


def read_sse(name: str) -> list[tuple[str | None, str]]:
    """(event, data) pairs of a recorded stream; accepts LF and CRLF line endings."""
    text = (FIXTURES / name).read_bytes().decode().replace("\r\n", "\n")
    events = []
    for block in text.split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            events.append((event, "\n".join(data)))
    return events


def replay(endpoint: Endpoint, name: str, stop: int | None = None) -> UsageMeter:
    meter = UsageMeter(endpoint)
    for event, data in read_sse(name)[:stop]:
        try:
            payload: Any = json.loads(data)
        except ValueError:
            payload = None
        meter.feed_sse(data, payload, event)
    return meter


# -- normalisers --------------------------------------------------------------------------


def test_openai_prompt_includes_cached_and_audio() -> None:
    usage = from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 80,
            "prompt_tokens_details": {"cached_tokens": 20, "audio_tokens": 30},
            "completion_tokens_details": {"reasoning_tokens": 25, "audio_tokens": 50},
        }
    )
    # Reasoning stays in output: 80 − 50 audio = 30 (of which 25 reasoning).
    assert usage == Usage(input=50, cache_read=20, output=30, audio_in=30, audio_out=50)


def test_openai_embeddings_and_deepseek_cache_fields() -> None:
    assert from_openai({"prompt_tokens": 8, "total_tokens": 8}) == Usage(input=8)
    deepseek = {
        "prompt_tokens": 90,
        "completion_tokens": 5,
        "prompt_cache_hit_tokens": 64,
        "prompt_cache_miss_tokens": 26,
    }
    assert from_openai(deepseek) == Usage(input=26, cache_read=64, output=5)


def test_openai_garbage_counts_are_zero_not_negative() -> None:
    usage = from_openai(
        {"prompt_tokens": 10, "completion_tokens": "lots", "prompt_tokens_details": {"cached_tokens": 50}}
    )
    assert usage == Usage(input=0, cache_read=50)
    assert from_openai({"prompt_tokens": -5, "completion_tokens": True, "prompt_tokens_details": None}).is_zero


def test_openai_responses_input_includes_cached() -> None:
    usage = from_openai_responses(
        {
            "input_tokens": 2048,
            "input_tokens_details": {"cached_tokens": 1024},
            "output_tokens": 384,
            "output_tokens_details": {"reasoning_tokens": 320},
        }
    )
    assert usage == Usage(input=1024, cache_read=1024, output=384)


def test_openai_images_usage() -> None:
    usage = from_openai_images(
        {"input_tokens": 50, "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}, "output_tokens": 4160}
    )
    assert usage == Usage(input=10, images=40, output=4160)


def test_anthropic_without_split_is_all_5m() -> None:
    usage = from_anthropic({"input_tokens": 5, "cache_creation_input_tokens": 700, "output_tokens": 9})
    assert usage == Usage(input=5, cache_write_5m=700, output=9)


def test_anthropic_split_and_unaccounted_remainder() -> None:
    split = {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 500}
    exact = from_anthropic({"cache_creation_input_tokens": 600, "cache_creation": split})
    assert (exact.cache_write_5m, exact.cache_write_1h) == (100, 500)
    # A total larger than the split: the rest is billed as 5m writes, never dropped.
    larger = from_anthropic({"cache_creation_input_tokens": 650, "cache_creation": split})
    assert (larger.cache_write_5m, larger.cache_write_1h) == (150, 500)


def test_gemini_prompt_includes_cached_and_thoughts_are_output() -> None:
    usage = from_gemini(
        {
            "promptTokenCount": 1200,
            "cachedContentTokenCount": 1000,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 200,
            "toolUsePromptTokenCount": 7,
            "totalTokenCount": 1427,
        }
    )
    assert usage == Usage(input=207, cache_read=1000, output=220)


def test_normalise_by_endpoint() -> None:
    assert normalise(Endpoint.MESSAGES, {"input_tokens": 3}) == Usage(input=3)
    assert normalise(Endpoint.GEMINI_STREAM, {"promptTokenCount": 3}) == Usage(input=3)
    assert normalise(Endpoint.MODELS, {"prompt_tokens": 3}) == Usage()


# -- recorded streams ---------------------------------------------------------------------


def test_openai_chat_stream_with_usage_chunk() -> None:
    meter = replay(Endpoint.CHAT, "openai_chat_stream.sse")
    assert meter.usage == Usage(input=800, cache_read=200, output=500)
    assert meter.terminal and meter.finish == "stop" and not meter.error
    assert meter.output_text() == "Hello world!"
    price = ModelPrice.tokens(Decimal("0.15"), Decimal("0.60"), cache_read=Decimal("0.075"))
    assert charge_tokens(price, meter.usage, Decimal(1), 500_000) == 218


def test_openai_chat_stream_finish_is_terminal_before_done() -> None:
    events = read_sse("openai_chat_stream.sse")
    before_usage = replay(Endpoint.CHAT, "openai_chat_stream.sse", stop=len(events) - 2)
    assert before_usage.terminal and before_usage.usage is None
    no_finish = replay(Endpoint.CHAT, "openai_chat_stream.sse", stop=3)
    assert not no_finish.terminal and no_finish.has_content


def test_openai_tool_call_arguments_are_counted_text() -> None:
    meter = replay(Endpoint.CHAT, "openai_chat_tools_stream.sse")
    assert meter.usage is None  # the client did not ask for usage: the fallback needs the text
    assert meter.output_text() == 'get_weather{"city":"Paris"}'
    assert meter.terminal and meter.finish == "tool_calls"


def test_responses_stream() -> None:
    meter = replay(Endpoint.RESPONSES, "openai_responses_stream.sse")
    assert meter.usage == Usage(input=1024, cache_read=1024, output=384)
    assert meter.terminal and meter.finish == "response.completed" and not meter.error
    assert meter.output_text() == "**Greeting the user**Hi there!"


def test_anthropic_stream_with_cache_split() -> None:
    meter = replay(Endpoint.MESSAGES, "anthropic_stream.sse")
    usage = meter.usage
    assert usage == Usage(input=2000, cache_read=10000, cache_write_5m=400, cache_write_1h=600, output=300)
    assert meter.terminal and meter.finish == "message_stop" and not meter.error
    assert meter.output_text() == (
        'The user wants the weather.Let me check that for you.get_weather{"location": "San Francisco, CA"}'
    )
    sonnet = ModelPrice.tokens(
        Decimal(3), Decimal(15), cache_read=Decimal("0.3"), cache_write=Decimal("3.75"), cache_write_1h=Decimal(6)
    )
    assert charge_tokens(sonnet, usage, Decimal(1), 500_000) == 9300  # spec §8 vector 3


def test_anthropic_stream_cut_before_message_delta_keeps_start_usage() -> None:
    meter = replay(Endpoint.MESSAGES, "anthropic_stream.sse", stop=5)
    assert not meter.terminal
    assert meter.usage == Usage(input=2000, cache_read=10000, cache_write_5m=400, cache_write_1h=600, output=1)


def test_gemini_stream_with_thoughts() -> None:
    meter = replay(Endpoint.GEMINI_STREAM, "gemini_stream.sse")
    assert meter.usage == Usage(input=200, cache_read=1000, output=220)
    assert meter.terminal and meter.finish == "STOP"
    assert meter.output_text().startswith("**Planning the answer**")
    assert meter.output_text().endswith("sea remembers rain.")


# -- last value wins ----------------------------------------------------------------------


def test_repeated_cumulative_anthropic_usage_is_not_summed() -> None:
    meter = UsageMeter(Endpoint.MESSAGES)
    meter.feed({"type": "message_start", "message": {"usage": {"input_tokens": 50, "output_tokens": 1}}})
    for cumulative in (10, 150, 300):
        meter.feed({"type": "message_delta", "delta": {}, "usage": {"output_tokens": cumulative}})
    meter.feed({"type": "message_delta", "usage": {"input_tokens": 50, "output_tokens": 300}})
    assert meter.usage == Usage(input=50, output=300)


def test_openai_usage_in_every_chunk_is_last_value_wins() -> None:
    meter = UsageMeter(Endpoint.CHAT)
    for n in range(1, 6):
        meter.feed(
            {
                "choices": [{"delta": {"content": "x"}, "finish_reason": None}],
                "usage": {"prompt_tokens": 40, "completion_tokens": n},
            }
        )
    assert meter.usage == Usage(input=40, output=5)


def test_gemini_usage_in_every_chunk_is_last_value_wins() -> None:
    meter = UsageMeter(Endpoint.GEMINI_STREAM)
    for n in (3, 9, 14):
        meter.feed(
            {
                "candidates": [{"content": {"parts": [{"text": "y"}]}}],
                "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": n},
            }
        )
    assert meter.usage == Usage(input=12, output=14)


def test_a_later_zero_does_not_erase_a_count() -> None:
    meter = UsageMeter(Endpoint.MESSAGES)
    meter.feed({"type": "message_start", "message": {"usage": {"input_tokens": 70, "output_tokens": 1}}})
    meter.feed({"type": "message_delta", "usage": {"input_tokens": 0, "output_tokens": 12}})
    assert meter.usage == Usage(input=70, output=12)


def test_all_zero_usage_is_reported_as_zero() -> None:
    meter = UsageMeter(Endpoint.CHAT)
    meter.feed({"choices": [{"delta": {"content": "hi"}, "finish_reason": "stop"}]})
    meter.feed({"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0}})
    assert meter.usage is not None and meter.usage.is_zero and meter.has_content


# -- errors and odd input -----------------------------------------------------------------


def test_anthropic_error_event() -> None:
    meter = replay(Endpoint.MESSAGES, "anthropic_stream.sse", stop=8)
    meter.feed_sse(
        '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        "error",
    )
    assert meter.error and not meter.terminal
    assert meter.usage is not None and meter.usage.input == 2000


def test_openai_error_chunk_mid_stream() -> None:
    meter = replay(Endpoint.CHAT, "openai_chat_stream.sse", stop=3)
    meter.feed({"error": {"message": "The server had an error", "type": "server_error"}})
    assert meter.error and not meter.terminal


def test_responses_failed_and_incomplete_carry_usage() -> None:
    usage = {"input_tokens": 10, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 0}}
    failed = UsageMeter(Endpoint.RESPONSES)
    failed.feed({"type": "response.failed", "response": {"status": "failed", "usage": usage}})
    assert failed.terminal and failed.error and failed.usage == Usage(input=10, output=4)
    incomplete = UsageMeter(Endpoint.RESPONSES)
    incomplete.feed({"type": "response.incomplete", "response": {"status": "incomplete", "usage": usage}})
    assert incomplete.terminal and not incomplete.error and incomplete.finish == "response.incomplete"


def test_gemini_error_chunk() -> None:
    meter = UsageMeter(Endpoint.GEMINI_STREAM)
    meter.feed({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
    assert meter.error and not meter.terminal and meter.usage is None


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_meter_ignores_junk(endpoint: Endpoint) -> None:
    meter = UsageMeter(endpoint)
    junk: Any
    for junk in (
        None,
        [],
        "text",
        3,
        {"choices": "x", "candidates": [1, None], "type": 5, "usage": []},
        {"choices": [{"delta": {"tool_calls": [None, {"function": "f"}]}}]},
        {"type": "content_block_delta", "delta": None},
        {"type": "message_start", "message": []},
    ):
        meter.feed(junk)
    meter.feed_sse("not json", None)
    assert meter.usage is None or meter.usage.is_zero
    assert not meter.has_content


# -- whole bodies -------------------------------------------------------------------------


def test_non_stream_bodies() -> None:
    chat = UsageMeter(Endpoint.CHAT)
    chat.feed_body(
        {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": "Hi",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3},
        }
    )
    assert chat.usage == Usage(input=9, output=3) and chat.terminal and chat.output_text() == "Hif{}"

    claude = UsageMeter(Endpoint.MESSAGES)
    claude.feed_body(
        {
            "type": "message",
            "content": [
                {"type": "thinking", "thinking": "hmm"},
                {"type": "text", "text": "ok"},
                {"type": "tool_use", "name": "t", "input": {"a": 1}},
            ],
            "usage": {"input_tokens": 4, "cache_read_input_tokens": 2, "output_tokens": 6},
        }
    )
    assert claude.usage == Usage(input=4, cache_read=2, output=6)
    assert claude.output_text() == 'hmmokt{"a":1}' and claude.terminal

    resp = UsageMeter(Endpoint.RESPONSES)
    resp.feed_body(
        {
            "status": "completed",
            "output": [
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "why"}]},
                {"type": "function_call", "name": "f", "arguments": '{"x":2}'},
                {"type": "message", "content": [{"type": "output_text", "text": "done"}]},
            ],
            "usage": {"input_tokens": 5, "output_tokens": 7},
        }
    )
    assert resp.usage == Usage(input=5, output=7) and resp.output_text() == 'why{"x":2}done'

    gem = UsageMeter(Endpoint.GEMINI_GENERATE)
    gem.feed_body(
        {
            "candidates": [
                {"content": {"parts": [{"functionCall": {"name": "g", "args": {"q": "r"}}}]}, "finishReason": "STOP"}
            ],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2},
        }
    )
    assert gem.usage == Usage(input=3, output=2) and gem.output_text() == 'g{"q":"r"}'

    emb = UsageMeter(Endpoint.EMBEDDINGS)
    emb.feed_body({"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}})
    assert emb.usage == Usage(input=8) and emb.terminal

    img = UsageMeter(Endpoint.IMAGES)
    img_usage = {"input_tokens": 20, "input_tokens_details": {"image_tokens": 0}, "output_tokens": 272}
    img.feed_body({"data": [{"b64_json": "..."}], "usage": img_usage})
    assert img.usage == Usage(input=20, output=272)


def test_error_body_is_not_terminal() -> None:
    meter = UsageMeter(Endpoint.CHAT)
    meter.feed_body({"error": {"message": "bad", "type": "invalid_request_error"}})
    assert meter.error and not meter.terminal


def test_feed_event_takes_relay_events() -> None:
    meter = UsageMeter(Endpoint.CHAT)
    for event, data in read_sse("openai_chat_stream.sse"):
        meter.feed_event(SSEEvent(data=data, event=event))
    assert meter.usage == Usage(input=800, cache_read=200, output=500) and meter.finish == "stop"
