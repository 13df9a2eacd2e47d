"""The mock upstream, driven by the official SDKs and raw HTTP, and each of its fault knobs."""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from proxy.mock.text import PROMPT_OVERHEAD, THINK_TOKENS
from proxy.mock.upstream import MockBehaviour, MockUpstream

CHAT = "/v1/chat/completions"
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief"},
    {"role": "user", "content": "Say hello there"},
]
PROMPT_TOKENS = 5 + PROMPT_OVERHEAD  # "Be brief" + "Say hello there"


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    upstream = MockUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def oai(mock: MockUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=mock.url + "/v1", api_key="sk-test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def ant(mock: MockUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=mock.url, api_key="sk-ant-test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, bytes]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    async with http.post(url, data=orjson.dumps(body), headers=sent, **kw) as r:
        return r.status, await r.read()


def frames(raw: bytes, sep: bytes = b"\n\n") -> list[bytes]:
    return [f for f in raw.split(sep) if f]


def data_of(frame: bytes) -> Any:
    line = next(x for x in frame.splitlines() if x.startswith(b"data: "))
    return None if line == b"data: [DONE]" else orjson.loads(line[6:])


def chat_body(**extra: Any) -> dict[str, Any]:
    """A raw chat request body with the shared prompt."""
    return {"model": "mock-gpt", "messages": PROMPT, **extra}


# ---- OpenAI ------------------------------------------------------------------------------


async def test_chat_non_stream_is_deterministic(mock: MockUpstream, oai: openai.AsyncOpenAI) -> None:
    first = await oai.chat.completions.create(model="mock-gpt", messages=PROMPT)
    second = await oai.chat.completions.create(model="mock-gpt", messages=PROMPT)
    assert first.choices[0].message.content == "Mock answer Say hello there 1 2 3 4 5 6 7"
    assert first.choices[0].finish_reason == "stop"
    assert first.id == second.id and first.created == second.created
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (PROMPT_TOKENS, 12)
    assert first.usage.prompt_tokens_details and first.usage.prompt_tokens_details.cached_tokens == 0
    assert first.usage.completion_tokens_details and first.usage.completion_tokens_details.reasoning_tokens == 0
    assert mock.requests[0].key == "sk-test" and mock.requests[0].json["messages"] == PROMPT


async def test_chat_stream_with_include_usage(mock: MockUpstream, oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="mock-gpt", messages=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "Mock answer Say hello there 1 2 3 4 5 6 7"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(pieces) == 12
    assert all(c.usage is None for c in chunks[:-1])
    assert mock.requests[0].json["stream_options"] == {"include_usage": True}


async def test_chat_stream_without_include_usage_has_no_usage(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    status, raw = await post(http, mock.url + CHAT, chat_body(stream=True))
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    assert b"usage" not in raw
    status, again = await post(http, mock.url + CHAT, chat_body(stream=True))
    assert again == raw  # same request, same bytes
    _, forced = await post(http, mock.url + CHAT, chat_body(stream=True, stream_options={"include_usage": True}))
    assert data_of(frames(forced)[0])["id"] == data_of(frames(raw)[0])["id"]  # a forced option keeps the id


async def test_chat_caps_output_and_honours_n(oai: openai.AsyncOpenAI) -> None:
    done = await oai.chat.completions.create(model="mock-gpt", messages=PROMPT, n=2, max_tokens=3)
    assert [c.message.content for c in done.choices] == ["Mock answer Say"] * 2
    assert {c.finish_reason for c in done.choices} == {"length"}
    assert done.usage is not None and done.usage.completion_tokens == 6
    stream = await oai.chat.completions.create(
        model="mock-gpt",
        messages=PROMPT,
        n=2,
        max_completion_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    by_choice: dict[int, str] = {}
    for c in chunks:
        for ch in c.choices:
            by_choice[ch.index] = by_choice.get(ch.index, "") + (ch.delta.content or "")
    assert by_choice == {0: "Mock answer", 1: "Mock answer"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_cache_and_think_models_report_details(oai: openai.AsyncOpenAI) -> None:
    done = await oai.chat.completions.create(model="mock-gpt-cache-think", messages=PROMPT)
    usage = done.usage
    assert usage is not None and usage.prompt_tokens_details and usage.completion_tokens_details
    assert usage.prompt_tokens_details.cached_tokens == PROMPT_TOKENS // 2
    assert usage.completion_tokens_details.reasoning_tokens == THINK_TOKENS
    assert usage.completion_tokens == 12 + THINK_TOKENS


async def test_legacy_completions(oai: openai.AsyncOpenAI) -> None:
    done = await oai.completions.create(model="mock-gpt", prompt="one two three", max_tokens=4)
    assert done.choices[0].text == "Mock answer one two" and done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.prompt_tokens == 3 + PROMPT_OVERHEAD
    stream = await oai.completions.create(
        model="mock-gpt", prompt="one", stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Mock answer one 1 2 3 4 5 6 7 8 9"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


async def test_responses_non_stream_and_stream(oai: openai.AsyncOpenAI) -> None:
    done = await oai.responses.create(model="mock-gpt-cache", input="hi there", instructions="be nice")
    assert done.status == "completed" and done.output_text == "Mock answer hi there 1 2 3 4 5 6 7 8"
    assert done.usage is not None and done.usage.input_tokens == 4 + PROMPT_OVERHEAD
    assert done.usage.input_tokens_details.cached_tokens == (4 + PROMPT_OVERHEAD) // 2
    assert done.usage.output_tokens == 12 and done.usage.output_tokens_details.reasoning_tokens == 0
    stream = await oai.responses.create(model="mock-gpt", input="hi", stream=True, max_output_tokens=50)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[4:16] == ["response.output_text.delta"] * 12
    assert kinds[16:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = events[-1]
    assert last.type == "response.completed" and last.response.usage is not None
    assert last.response.usage.output_tokens == 12


async def test_responses_incomplete_model_carries_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(model="mock-incomplete-1", input="hi", stream=True)
    events = [e async for e in stream]
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.usage is not None
    assert last.response.usage.output_tokens == 12
    assert last.response.incomplete_details is not None


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
async def test_embeddings_models_images_audio(mock: MockUpstream, oai: openai.AsyncOpenAI) -> None:
    emb = await oai.embeddings.create(model="mock-embed", input=["a b", "c"])  # SDK asks for base64
    floats = await oai.embeddings.create(model="mock-embed", input=["a b", "c"], encoding_format="float")
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert emb.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert emb.data[0].embedding != emb.data[1].embedding
    assert emb.usage.prompt_tokens == 3 + PROMPT_OVERHEAD
    models = await oai.models.list()
    ids = [m.id for m in models.data]
    assert ids == [
        "mock-gpt",
        "mock-gpt-mini",
        "mock-claude",
        "mock-gemini",
        "mock-embed",
        "mock-image",
        "mock-whisper",
    ]
    assert {m.owned_by for m in models.data} == {"weir-mock"}
    images = await oai.images.generate(model="mock-image", prompt="a cat", n=2, response_format="b64_json")
    assert images.data is not None and len(images.data) == 2
    assert base64.b64decode(images.data[0].b64_json or "").startswith(b"\x89PNG\r\n\x1a\n")
    urls = await oai.images.generate(model="mock-image", prompt="a cat")
    assert urls.data is not None and (urls.data[0].url or "").endswith(".png")
    text = await oai.audio.transcriptions.create(model="mock-whisper", file=("a.wav", b"x" * 1234))
    assert "1234 bytes" in text.text
    assert mock.requests[-1].path == "/v1/audio/transcriptions" and len(mock.requests[-1].body) > 1234
    translated = await oai.audio.translations.create(model="mock-whisper", file=("a.wav", b"y" * 77))
    assert "77 bytes" in translated.text
    speech = await oai.audio.speech.create(model="mock-tts", voice="alloy", input="hello world")
    audio = speech.read()
    assert audio[:2] == b"\xff\xf3" and len(audio) > 100


# ---- Anthropic ---------------------------------------------------------------------------

ANT_MSGS: list[MessageParam] = [{"role": "user", "content": "Hello Claude friend"}]


async def test_anthropic_non_stream_with_cache_split(mock: MockUpstream, ant: anthropic.AsyncAnthropic) -> None:
    msg = await ant.messages.create(
        model="mock-claude-cache", max_tokens=100, system="one two three four five", messages=ANT_MSGS
    )
    total = 8 + PROMPT_OVERHEAD
    u = msg.usage
    assert msg.content[0].type == "text" and msg.content[0].text.startswith("Mock answer Hello Claude friend")
    assert msg.stop_reason == "end_turn" and u.output_tokens == 12
    assert u.cache_read_input_tokens == total // 2 and u.cache_creation_input_tokens == total // 4
    assert u.cache_creation is not None
    assert u.cache_creation.ephemeral_5m_input_tokens + u.cache_creation.ephemeral_1h_input_tokens == total // 4
    assert u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens == total
    assert mock.requests[0].key == "sk-ant-test"
    count = await ant.messages.count_tokens(model="mock-claude", messages=ANT_MSGS)
    assert count.input_tokens == 3 + PROMPT_OVERHEAD


async def test_anthropic_stream_sequence(
    mock: MockUpstream, ant: anthropic.AsyncAnthropic, http: aiohttp.ClientSession
) -> None:
    body = {"model": "mock-claude", "max_tokens": 5, "stream": True, "messages": ANT_MSGS}
    status, raw = await post(http, mock.url + "/v1/messages", body)
    events = frames(raw)
    kinds = [f.split(b"\n")[0].removeprefix(b"event: ").decode() for f in events]
    assert kinds == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 5 + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data_of(f)["type"] == k for f, k in zip(events, kinds))
    start = data_of(events[0])["message"]["usage"]
    assert start["input_tokens"] == 3 + PROMPT_OVERHEAD and start["cache_creation"]["ephemeral_1h_input_tokens"] == 0
    delta = data_of(events[-2])
    assert delta["usage"]["output_tokens"] == 5 and delta["delta"]["stop_reason"] == "max_tokens"
    async with ant.messages.stream(model="mock-claude", max_tokens=50, messages=ANT_MSGS) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "text" and len(final.content[0].text.split()) == final.usage.output_tokens == 12


async def test_anthropic_requires_max_tokens(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    status, raw = await post(http, mock.url + "/v1/messages", {"model": "mock-claude", "messages": ANT_MSGS})
    assert status == 400
    assert orjson.loads(raw)["error"]["type"] == "invalid_request_error"


# ---- Gemini ------------------------------------------------------------------------------

GEMINI_BODY = {
    "contents": [{"role": "user", "parts": [{"text": "tell me"}]}],
    "systemInstruction": {"parts": [{"text": "be short"}]},
}


async def test_gemini_generate_and_stream(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    base = mock.url + "/v1beta/models/mock-gemini-think-cache"
    status, raw = await post(http, base + ":generateContent?key=gk-1", GEMINI_BODY)
    body = orjson.loads(raw)
    meta = body["usageMetadata"]
    assert status == 200 and body["candidates"][0]["content"]["parts"][0]["text"].startswith("Mock answer tell me")
    assert meta["promptTokenCount"] == 4 + PROMPT_OVERHEAD and meta["candidatesTokenCount"] == 12
    assert meta["thoughtsTokenCount"] == THINK_TOKENS and meta["cachedContentTokenCount"] == (4 + PROMPT_OVERHEAD) // 2
    assert meta["totalTokenCount"] == 4 + PROMPT_OVERHEAD + 12 + THINK_TOKENS
    assert mock.requests[-1].key == "gk-1"
    async with http.post(
        base + ":streamGenerateContent?alt=sse", json=GEMINI_BODY, headers={"x-goog-api-key": "gk-2"}
    ) as r:
        raw = await r.read()
    chunks = [data_of(f) for f in frames(raw, b"\r\n\r\n")]
    assert len(chunks) == 13 and all("usageMetadata" not in c for c in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 12
    assert mock.requests[-1].key == "gk-2"
    status, raw = await post(http, base + ":streamGenerateContent", GEMINI_BODY)
    assert len(orjson.loads(raw)) == 13  # without alt=sse: one JSON array


async def test_gemini_plain_model_omits_zero_fields(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    config = {**GEMINI_BODY, "generationConfig": {"maxOutputTokens": 2}}
    status, raw = await post(http, mock.url + "/v1beta/models/mock-gemini:generateContent", config)
    body = orjson.loads(raw)
    assert body["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert set(body["usageMetadata"]) == {
        "promptTokenCount",
        "candidatesTokenCount",
        "totalTokenCount",
        "promptTokensDetails",
    }


# ---- faults ------------------------------------------------------------------------------


async def test_fail_status_for_n_requests_in_each_dialect(
    mock: MockUpstream, oai: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    mock.behaviour.fail_status, mock.behaviour.fail_times = 429, 2
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as info:
            await oai.chat.completions.create(model="mock-gpt", messages=PROMPT)
        assert isinstance(info.value.body, dict) and info.value.body["type"] == "requests"
    ok = await oai.chat.completions.create(model="mock-gpt", messages=PROMPT)
    assert ok.choices[0].message.content and mock.behaviour.fail_status is None
    mock.behaviour.fail_status = 529  # fail_times 0: every request
    for _ in range(2):
        status, raw = await post(http, mock.url + "/v1/messages", {"model": "c", "max_tokens": 1, "messages": []})
        assert status == 529 and orjson.loads(raw)["error"]["type"] == "overloaded_error"
    mock.behaviour.fail_status = 503
    status, raw = await post(http, mock.url + "/v1beta/models/g:generateContent", GEMINI_BODY)
    assert status == 503 and orjson.loads(raw)["error"] == {
        "code": 503,
        "message": "Mock upstream failure (503).",
        "status": "UNAVAILABLE",
    }


async def test_require_key(mock: MockUpstream, ant: anthropic.AsyncAnthropic, http: aiohttp.ClientSession) -> None:
    mock.behaviour.require_key = "sk-ant-test"
    msg = await ant.messages.create(model="mock-claude", max_tokens=3, messages=ANT_MSGS)
    assert msg.usage.output_tokens == 3
    mock.behaviour.require_key = "other"
    with pytest.raises(anthropic.AuthenticationError):
        await ant.messages.create(model="mock-claude", max_tokens=3, messages=ANT_MSGS)
    status, _ = await post(http, mock.url + CHAT, chat_body(), headers={"Authorization": "Bearer other"})
    assert status == 200


async def test_truncate_closes_cleanly_without_done(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    mock.behaviour.truncate_after = 4
    status, raw = await post(http, mock.url + CHAT, chat_body(stream=True))
    assert status == 200 and len(frames(raw)) == 4 and b"[DONE]" not in raw


async def test_reset_aborts_the_connection(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    mock.behaviour.reset_after, mock.behaviour.pace = 3, 0.01
    got = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(mock.url + CHAT, json=chat_body(stream=True)) as r:
            async for piece in r.content.iter_any():
                got += piece
    assert len(frames(got)) == 3


async def test_error_event_mid_stream(
    mock: MockUpstream, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic, http: aiohttp.ClientSession
) -> None:
    mock.behaviour.error_event_after = 3
    seen = []
    with pytest.raises(openai.APIError, match="server had an error"):
        async for chunk in await oai.chat.completions.create(model="mock-gpt", messages=PROMPT, stream=True):
            seen.append(chunk)
    assert len(seen) == 3
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with ant.messages.stream(model="mock-claude", max_tokens=9, messages=ANT_MSGS) as stream:
            await stream.get_final_message()
    _, raw = await post(http, mock.url + "/v1beta/models/g:streamGenerateContent?alt=sse", GEMINI_BODY)
    parsed = [data_of(f) for f in frames(raw, b"\r\n\r\n")]
    assert len(parsed) == 4 and parsed[-1]["error"]["status"] == "INTERNAL"


async def test_stalls_and_pace(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    mock.behaviour.stall_before_headers = 0.3
    with pytest.raises(asyncio.TimeoutError):
        await post(http, mock.url + CHAT, chat_body(), timeout=aiohttp.ClientTimeout(total=0.1))
    mock.behaviour.stall_before_headers, mock.behaviour.stall_first_byte = 0.0, 0.3
    start = time.monotonic()
    async with http.post(mock.url + CHAT, json=chat_body()) as r:
        headers_at = time.monotonic() - start
        await r.read()
        body_at = time.monotonic() - start
    assert headers_at < 0.25 <= body_at
    mock.behaviour.stall_first_byte, mock.behaviour.pace, mock.behaviour.words = 0.0, 0.05, 4
    start = time.monotonic()
    status, raw = await post(http, mock.url + CHAT, chat_body(stream=True))
    assert time.monotonic() - start >= 0.05 * (len(frames(raw)) - 1) * 0.9 and len(frames(raw)) == 7


async def test_usage_knobs(mock: MockUpstream, oai: openai.AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    mock.behaviour.omit_usage = True
    done = await oai.chat.completions.create(model="mock-gpt", messages=PROMPT)
    assert done.usage is None and done.choices[0].message.content
    _, raw = await post(http, mock.url + CHAT, chat_body(stream=True, stream_options={"include_usage": True}))
    assert b"usage" not in raw and raw.endswith(b"data: [DONE]\n\n")
    _, raw = await post(
        http, mock.url + "/v1/messages", {"model": "c", "max_tokens": 4, "messages": ANT_MSGS, "stream": True}
    )
    assert b"usage" not in raw and b"text_delta" in raw
    mock.behaviour.omit_usage, mock.behaviour.zero_usage = False, True
    done = await oai.chat.completions.create(model="mock-gpt-cache", messages=PROMPT)
    assert done.usage is not None and done.usage.total_tokens == 0 and done.choices[0].message.content
    assert done.usage.prompt_tokens_details and done.usage.prompt_tokens_details.cached_tokens == 0
    mock.behaviour.zero_usage, mock.behaviour.repeat_usage = False, True
    _, raw = await post(http, mock.url + CHAT, chat_body(stream=True))
    counts = [d["usage"]["completion_tokens"] for d in map(data_of, frames(raw)) if d]
    assert counts == [0] + list(range(1, 13)) + [12]


async def test_gzip_and_empty_body(mock: MockUpstream, oai: openai.AsyncOpenAI) -> None:
    mock.behaviour.gzip = True
    async with aiohttp.ClientSession(auto_decompress=False) as raw_http:
        async with raw_http.post(mock.url + CHAT, json=chat_body()) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            body = orjson.loads(gzip.decompress(await r.read()))
    assert body["usage"]["completion_tokens"] == 12
    done = await oai.chat.completions.create(model="mock-gpt", messages=PROMPT)
    assert done.id == body["id"]
    mock.behaviour.gzip, mock.behaviour.empty_body = False, True
    async with aiohttp.ClientSession() as http:
        status, raw = await post(http, mock.url + CHAT, chat_body())
    assert (status, raw) == (200, b"")


async def test_never_close_times_out_and_stop_is_prompt(http: aiohttp.ClientSession) -> None:
    mock = MockUpstream(MockBehaviour(never_close=True, words=3))
    await mock.start()
    got = b""
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            mock.url + CHAT,
            json=chat_body(stream=True, stream_options={"include_usage": True}),
            timeout=aiohttp.ClientTimeout(sock_read=0.3),
        ) as r:
            async for piece in r.content.iter_any():
                got += piece
    assert len(frames(got)) == 4 and b'finish_reason":"stop' not in got  # role + 3 words, no end
    hanging = await http.post(mock.url + CHAT, json=chat_body(stream=True))
    await hanging.content.readany()
    start = time.monotonic()
    await mock.stop()
    hanging.close()
    # The runner waits 0.2 s for open connections; aiohttp's default would be 60 s. The
    # bound tells the two apart with room for a busy machine.
    assert time.monotonic() - start < 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_cli_entry_serves(http: aiohttp.ClientSession) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.mock.upstream", "--port", str(port), "--pace", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert f"127.0.0.1:{port}" in line
        async with http.get(f"http://127.0.0.1:{port}/v1/models") as r:
            assert (await r.json())["data"][0]["id"] == "mock-gpt"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_recorded_requests_are_capped(http: aiohttp.ClientSession) -> None:
    mock = MockUpstream(keep_requests=3)
    await mock.start()
    try:
        for i in range(5):
            await post(http, mock.url + CHAT, chat_body(user=f"u{i}"))
    finally:
        await mock.stop()
    assert [r.json["user"] for r in mock.requests] == ["u2", "u3", "u4"]
