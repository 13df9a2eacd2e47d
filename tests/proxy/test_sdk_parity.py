"""The official SDKs get the same answer through Weir as directly from the same upstream."""

from __future__ import annotations

from typing import Any

import aiohttp
import anthropic
import openai
import orjson

MESSAGES = [{"role": "user", "content": "tell me about weirs"}]


def oai(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-client", max_retries=0)


def claude(base: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base, api_key="sk-client", max_retries=0)


async def both(make_proxy: Any, fake_upstream: Any) -> tuple[str, str]:
    proxy = await make_proxy()
    return fake_upstream.url, proxy.url


async def test_openai_chat_non_stream(make_proxy: Any, fake_upstream: Any) -> None:
    direct, weir = await both(make_proxy, fake_upstream)
    a = await oai(direct).chat.completions.create(model="mock-gpt", messages=MESSAGES)  # type: ignore[arg-type]
    b = await oai(weir).chat.completions.create(model="mock-gpt", messages=MESSAGES)  # type: ignore[arg-type]
    assert a.model_dump() == b.model_dump()
    assert b.choices[0].message.content and b.usage and b.usage.completion_tokens > 0


async def test_openai_chat_stream_with_usage(make_proxy: Any, fake_upstream: Any) -> None:
    direct, weir = await both(make_proxy, fake_upstream)

    async def collect(base: str) -> list[dict[str, Any]]:
        stream = await oai(base).chat.completions.create(
            model="mock-gpt",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        return [chunk.model_dump() async for chunk in stream]

    a, b = await collect(direct), await collect(weir)
    assert a == b and len(b) > 3
    assert b[-1]["usage"]["completion_tokens"] > 0


async def test_openai_completions_embeddings_models(make_proxy: Any, fake_upstream: Any) -> None:
    direct, weir = await both(make_proxy, fake_upstream)
    for base_pair in [(direct, weir)]:
        ca = await oai(base_pair[0]).completions.create(model="mock-gpt", prompt="say hi")
        cb = await oai(base_pair[1]).completions.create(model="mock-gpt", prompt="say hi")
        assert ca.model_dump() == cb.model_dump()
        ea = await oai(base_pair[0]).embeddings.create(model="mock-embed", input=["a b", "c"])
        eb = await oai(base_pair[1]).embeddings.create(model="mock-embed", input=["a b", "c"])
        assert ea.model_dump() == eb.model_dump() and len(eb.data) == 2
    models = await oai(weir).models.list()
    ids = {m.id for m in models.data}
    assert {"mock-gpt", "mock-claude", "mock-gemini"} <= ids


async def test_openai_responses_stream(make_proxy: Any, fake_upstream: Any) -> None:
    direct, weir = await both(make_proxy, fake_upstream)

    async def collect(base: str) -> list[dict[str, Any]]:
        stream = await oai(base).responses.create(model="mock-gpt", input="hello there", stream=True)
        return [event.model_dump() async for event in stream]

    a, b = await collect(direct), await collect(weir)
    assert a == b
    assert b[-1]["type"] == "response.completed" and b[-1]["response"]["usage"]["output_tokens"] > 0


async def test_anthropic_messages(make_proxy: Any, fake_upstream: Any) -> None:
    direct, weir = await both(make_proxy, fake_upstream)
    a = await claude(direct).messages.create(model="mock-claude", max_tokens=50, messages=MESSAGES)  # type: ignore[arg-type]
    b = await claude(weir).messages.create(model="mock-claude", max_tokens=50, messages=MESSAGES)  # type: ignore[arg-type]
    assert a.model_dump() == b.model_dump()


async def test_anthropic_stream(make_proxy: Any, fake_upstream: Any) -> None:
    direct, weir = await both(make_proxy, fake_upstream)

    async def collect(base: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with claude(base).messages.stream(model="mock-claude", max_tokens=50, messages=MESSAGES) as s:  # type: ignore[arg-type]
            events = [e.model_dump() async for e in s]
            final = (await s.get_final_message()).model_dump()
        return events, final

    a, b = await collect(direct), await collect(weir)
    assert a == b
    assert b[1]["usage"]["output_tokens"] > 0


async def test_anthropic_count_tokens(make_proxy: Any, fake_upstream: Any) -> None:
    direct, weir = await both(make_proxy, fake_upstream)
    a = await claude(direct).messages.count_tokens(model="mock-claude", messages=MESSAGES)  # type: ignore[arg-type]
    b = await claude(weir).messages.count_tokens(model="mock-claude", messages=MESSAGES)  # type: ignore[arg-type]
    assert a.model_dump() == b.model_dump() and b.input_tokens > 0


async def test_gemini_over_http(make_proxy: Any, fake_upstream: Any) -> None:
    direct, weir = await both(make_proxy, fake_upstream)
    body = {"contents": [{"role": "user", "parts": [{"text": "hello gemini"}]}]}
    async with aiohttp.ClientSession() as s:
        results = []
        for base in (direct, weir):
            async with s.post(
                f"{base}/v1beta/models/mock-gemini:generateContent", json=body, headers={"x-goog-api-key": "client"}
            ) as r:
                results.append((r.status, orjson.loads(await r.read())))
            async with s.post(
                f"{base}/v1beta/models/mock-gemini:streamGenerateContent?alt=sse", json=body, params={"key": "client"}
            ) as r:
                results.append((r.status, await r.read()))
    assert results[0] == results[2] and results[1] == results[3]
    assert results[0][1]["usageMetadata"]["candidatesTokenCount"] > 0
    assert b"usageMetadata" in results[3][1]
