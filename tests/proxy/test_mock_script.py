"""Scripted replies of the mock upstream (`fake_upstream.script`, the `x-mock-script` header)
and the harness helpers that read them back (`ProxyHandle.chat`, `Answer`, `reply_text`).

Every test drives a real mock on loopback, most of them through a real Weir, and asserts
what a client reads: the pieces, usage, error bodies and headers the script asked for.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from proxy.mock.behaviour import Script, ScriptError
from proxy.testing import MockUpstream, ProxyHandle, Usage

Factory = Any  # the make_proxy fixture


def contents(events: Any) -> list[str]:
    """The `delta.content` of each OpenAI chunk that has one."""
    out = []
    for e in events:
        payload = e.json
        if isinstance(payload, dict) and payload.get("choices"):
            content = payload["choices"][0].get("delta", {}).get("content")
            if content:
                out.append(content)
    return out


async def test_scripted_pieces_stream_one_event_each_and_count_as_output(
    make_proxy: Factory, fake_upstream: MockUpstream
) -> None:
    fake_upstream.script(reply=["Write to bob@exa", "mple.com today"])
    proxy: ProxyHandle = await make_proxy()
    answer = await proxy.chat("ignored", stream=True)
    assert answer.status == 200
    assert contents(answer.events) == ["Write to bob@exa", "mple.com today"]
    assert answer.text == "Write to bob@example.com today"
    usage = [e.json["usage"] for e in answer.events if e.json and e.json.get("usage")]
    assert usage[-1]["completion_tokens"] == 2
    assert answer.events[-1].data == "[DONE]"
    # The script was for one request: the next one gets the counted answer again.
    assert (await proxy.chat("hello there")).text.startswith("Mock answer hello there")


async def test_a_text_reply_is_split_into_words_in_every_dialect(
    make_proxy: Factory, fake_upstream: MockUpstream
) -> None:
    fake_upstream.script(reply="one two three", times=3)
    proxy: ProxyHandle = await make_proxy()
    plain = await proxy.chat("x", max_tokens=1)  # a scripted reply is never cut
    assert plain.text == "one two three" and plain.json["usage"]["completion_tokens"] == 3
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="k", max_retries=0)
    async with client.messages.stream(
        model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "x"}]
    ) as s:
        pieces = [text async for text in s.text_stream]
    await client.close()
    assert pieces == ["one", " two", " three"]
    gemini = await proxy.post("/v1beta/models/gemini-x:generateContent", {"contents": [{"parts": [{"text": "x"}]}]})
    assert gemini.text == "one two three"
    assert fake_upstream.pending_scripts == 0


async def test_scripted_usage_replaces_the_counts(make_proxy: Factory, fake_upstream: MockUpstream) -> None:
    fake_upstream.script(usage=Usage(input=1000, output=7, cached=400, reasoning=3))
    fake_upstream.script(usage="omit")
    proxy: ProxyHandle = await make_proxy()
    usage = (await proxy.chat("hi")).json["usage"]
    assert usage["prompt_tokens"] == 1000
    assert usage["completion_tokens"] == 7 + 3
    assert usage["prompt_tokens_details"]["cached_tokens"] == 400
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 3
    assert "usage" not in (await proxy.chat("hi")).json


async def test_a_scripted_error_has_the_dialect_shape_and_headers(
    make_proxy: Factory, fake_upstream: MockUpstream
) -> None:
    fake_upstream.script(status=429, message="slow down", headers={"retry-after": "7"}, times=2)
    proxy: ProxyHandle = await make_proxy(routing={"max_attempts": 1})
    first = await proxy.chat("hi")
    assert first.status == 429
    assert first.error is not None and first.error["message"] == "slow down"
    anthropic_shape = await proxy.post(
        "/v1/messages", {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    )
    assert anthropic_shape.status == 429
    assert anthropic_shape.json["error"] == {"type": "rate_limit_error", "message": "slow down"}
    third = await proxy.chat("hi")
    assert third.status == 200 and third.error is None
    assert len(fake_upstream.requests) == 3


async def test_a_scripted_error_leaves_the_standing_failure_count_alone(fake_upstream: MockUpstream) -> None:
    fake_upstream.behaviour.fail_status, fake_upstream.behaviour.fail_times = 503, 1
    fake_upstream.script(status=400)
    async with aiohttp.ClientSession() as s:
        statuses = []
        for _ in range(3):
            async with s.post(fake_upstream.url + "/v1/chat/completions", json={"model": "m", "messages": []}) as r:
                statuses.append(r.status)
    assert statuses == [400, 503, 200]


async def test_scripted_raw_events_are_relayed_as_they_are(make_proxy: Factory, fake_upstream: MockUpstream) -> None:
    fake_upstream.script(
        events=[
            {"choices": [{"index": 0, "delta": {"content": "a"}}]},
            b'event: note\ndata: {"x": 1}\n\n',
            "[DONE]",
        ]
    )
    proxy: ProxyHandle = await make_proxy()
    answer = await proxy.chat("hi", stream=True)
    assert [(e.event, e.data) for e in answer.events] == [
        (None, '{"choices":[{"index":0,"delta":{"content":"a"}}]}'),
        ("note", '{"x": 1}'),
        (None, "[DONE]"),
    ]
    assert answer.text == "a"


async def test_scripted_faults_cut_the_stream(make_proxy: Factory, fake_upstream: MockUpstream) -> None:
    fake_upstream.script(reply="a b c d", error_event_after=3)
    fake_upstream.script(reply="a b c d", truncate_after=2)
    proxy: ProxyHandle = await make_proxy()
    errored = await proxy.chat("hi", stream=True)
    assert contents(errored.events) == ["a", " b"]  # the role chunk, two pieces, then the error
    assert orjson.loads(errored.events[-1].data)["error"]["type"] == "server_error"
    truncated = await proxy.chat("hi", stream=True)
    assert contents(truncated.events) == ["a"]
    assert all(e.data != "[DONE]" for e in truncated.events)


async def test_a_scripted_delay_holds_back_that_request_only(fake_upstream: MockUpstream) -> None:
    fake_upstream.script(stall_before_headers=0.3)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession() as s:
        started = time.monotonic()
        async with s.post(fake_upstream.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
        # A sleep never ends early, so this lower bound holds on any machine.
        assert time.monotonic() - started >= 0.3
    assert fake_upstream.pending_scripts == 0


async def test_the_script_header_scripts_its_own_request_through_weir(
    make_proxy: Factory, fake_upstream: MockUpstream
) -> None:
    proxy: ProxyHandle = await make_proxy()
    script = {"reply": ["x", "y"], "usage": {"input": 42}, "headers": {"x-extra": "1"}}
    answer = await proxy.chat("hi", headers={"x-mock-script": orjson.dumps(script).decode()})
    assert answer.text == "xy"
    assert answer.json["usage"]["prompt_tokens"] == 42
    assert answer.headers["x-extra"] == "1"
    bad = await proxy.chat("hi", headers={"x-mock-script": '{"reply": "a", "colour": 1}'})
    assert bad.status == 400
    assert "unknown script field 'colour'" in bad.error["message"]  # type: ignore[index]


def test_a_wrong_script_is_refused_with_its_field() -> None:
    with pytest.raises(ScriptError, match="unknown script field 'repl'"):
        Script.of(repl="x")
    with pytest.raises(ScriptError, match="usage must be"):
        Script.of(usage="none")
    with pytest.raises(ScriptError, match="times must be at least 1"):
        Script.of(times=0)
    with pytest.raises(ScriptError, match="not JSON"):
        Script.from_json("{")
    with pytest.raises(ScriptError, match="'times' has no meaning"):
        Script.from_json('{"times": 2}')
    assert Script.of(reply=["a"], usage={"output": 1}) == Script(reply=("a",), usage=Usage(output=1))
