"""Upstream faults through a real Weir with billing: what the client gets, and the exact
charge per spec §6, with a clean audit and no open hold after each.

Faults come from the mock's knobs and from `RawUpstream`, which writes exact bytes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from proxy.config import UpstreamConfig
from proxy.context import Endpoint
from proxy.mock.upstream import MockUpstream
from tests.e2e.conftest import PRICES, Billed, BilledFactory, billed  # noqa: F401  (fixture)
from tests.reliability.rawserver import (
    RawUpstream,
    Script,
    chat_text,
    chunk,
    chunked,
    events,
    fetch,
    gzip_bytes,
    log_rows,
    money_moved,
    prompt_estimate,
    quota,
    script_of,
    sse_head,
    tokens,
    usage_chunk,
    use_upstreams,
)

GPT = PRICES["mock-gpt*"]
CLAUDE = PRICES["mock-claude*"]
GEMINI = PRICES["mock-gemini*"]
MSG = [{"role": "user", "content": "tell me about weirs"}]
CHAT = {"model": "mock-gpt", "messages": MSG, "stream": True}


@pytest.fixture
def backend() -> str:
    """Upstream faults do not depend on the store: SQLite only (Redis runs in the
    client-fault and access tests)."""
    return "sqlite"


def auth(b: Billed) -> dict[str, str]:
    return {"Authorization": f"Bearer {b.key}"}


def raw_upstream_config(url: str, **kw: Any) -> UpstreamConfig:
    return UpstreamConfig(name="raw", type="openai", base_url=url + "/v1", **kw)


@pytest.fixture
async def raws() -> AsyncIterator[list[RawUpstream]]:
    """Raw upstreams started by a test, stopped however it ends."""
    started: list[RawUpstream] = []
    yield started
    for raw in started:
        await raw.stop()


async def with_raw(b: Billed, raws: list[RawUpstream], script: Script, **kw: Any) -> RawUpstream:
    raw = RawUpstream(script)
    raws.append(raw)
    await raw.start()
    use_upstreams(b, raw_upstream_config(raw.url, **kw))
    return raw


# ---- refused before the first byte -----------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_refusal_before_first_byte_releases(billed: BilledFactory, status: int) -> None:
    b = await billed()
    b.upstream.behaviour.fail_status = status
    before = await b.balance()
    got = await fetch(b.proxy.url + "/v1/chat/completions", CHAT, auth(b))
    # The upstream's own error is relayed, in its (OpenAI) shape.
    assert got.status == status and "error" in orjson.loads(got.body)
    (row,) = await log_rows(b)
    assert (row.charge, row.details.end_reason, row.details.status) == (0, "upstream_error", status)
    await money_moved(b, before, 0)


@pytest.mark.parametrize("status", [429, 500])
async def test_refusal_then_failover_bills_once(billed: BilledFactory, status: int) -> None:
    bad = MockUpstream()
    bad.behaviour.fail_status = status
    await bad.start()
    try:
        b = await billed()
        use_upstreams(
            b,
            UpstreamConfig(name="bad", type="mock", base_url=bad.url, priority=0),
            UpstreamConfig(name="good", type="mock", base_url=b.upstream.url, priority=1),
        )
        before = await b.balance()
        body = {**CHAT, "stream_options": {"include_usage": True}}
        got = await fetch(b.proxy.url + "/v1/chat/completions", body, auth(b))
        assert got.status == 200 and events(got.body)[-1].data == "[DONE]"
        usage = [e.json["usage"] for e in events(got.body) if isinstance(e.json, dict) and e.json.get("usage")][-1]
        assert len(bad.requests) == 1 and len(b.upstream.requests) == 1
        (row,) = await log_rows(b)
        expected = quota(GPT, usage["prompt_tokens"], usage["completion_tokens"])
        assert (row.charge, row.details.upstream, row.details.usage_source) == (expected, "good", "upstream")
        await money_moved(b, before, expected)
    finally:
        await bad.stop()


#: Well below the client's own 30 s timeout (`fetch`) and the stalls' ends, and 25 times the
#: read timeouts below: under this, Weir's read timeout ended the request, on a loaded machine too.
WEIR_CUT_IT = 25.0


async def test_stall_before_headers_past_read_timeout(billed: BilledFactory) -> None:
    b = await billed()
    use_upstreams(b, UpstreamConfig(name="slow", type="mock", base_url=b.upstream.url, read_timeout=0.5))
    b.upstream.behaviour.stall_before_headers = 60
    before = await b.balance()
    t0 = time.monotonic()
    got = await fetch(b.proxy.url + "/v1/chat/completions", CHAT, auth(b))
    assert time.monotonic() - t0 < WEIR_CUT_IT
    err = orjson.loads(got.body)["error"]
    assert (got.status, err["code"]) == (504, "upstream_timeout")
    (row,) = await log_rows(b)
    assert (row.charge, row.details.end_reason) == (0, "upstream_error")
    await money_moved(b, before, 0)


async def test_stall_after_headers_past_read_timeout(billed: BilledFactory) -> None:
    """Headers came, then nothing: the client's stream is cut, nothing was delivered, 0."""
    b = await billed()
    use_upstreams(b, UpstreamConfig(name="slow", type="mock", base_url=b.upstream.url, read_timeout=0.5))
    b.upstream.behaviour.stall_first_byte = 60
    before = await b.balance()
    t0 = time.monotonic()
    got = await fetch(b.proxy.url + "/v1/chat/completions", CHAT, auth(b))
    assert time.monotonic() - t0 < WEIR_CUT_IT
    assert got.status == 200 and got.body == b"" and got.broken
    (row,) = await log_rows(b)
    assert (row.charge, row.details.end_reason) == (0, "upstream_truncated")
    await money_moved(b, before, 0)


# ---- broken mid-stream -----------------------------------------------------------------


async def test_eof_without_done_is_partial(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.truncate_after = 5  # role chunk + 4 content chunks, then a clean EOF
    before = await b.balance()
    got = await fetch(b.proxy.url + "/v1/chat/completions", CHAT, auth(b))
    assert got.status == 200 and len(events(got.body)) == 5
    assert all(e.data != "[DONE]" for e in events(got.body))
    text = chat_text(got.body)
    (row,) = await log_rows(b)
    prompt = prompt_estimate(b, Endpoint.CHAT, CHAT, "mock-gpt")
    assert (row.details.end_reason, row.details.usage_source) == ("upstream_truncated", "partial")
    assert (row.details.input, row.details.output) == (prompt, tokens(text, "mock-gpt"))
    assert row.charge == quota(GPT, prompt, tokens(text, "mock-gpt")) > 0
    await money_moved(b, before, row.charge)


async def test_error_event_mid_stream_openai(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.error_event_after = 4
    before = await b.balance()
    got = await fetch(b.proxy.url + "/v1/chat/completions", CHAT, auth(b))
    evs = events(got.body)
    assert got.status == 200 and len(evs) == 5 and "error" in evs[-1].json
    text = chat_text(got.body)
    (row,) = await log_rows(b)
    prompt = prompt_estimate(b, Endpoint.CHAT, CHAT, "mock-gpt")
    assert (row.details.end_reason, row.details.usage_source) == ("upstream_error", "partial")
    assert row.charge == quota(GPT, prompt, tokens(text, "mock-gpt")) > 0
    await money_moved(b, before, row.charge)


async def test_error_event_mid_stream_anthropic(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.error_event_after = 6  # message_start, block start, ping, 3 deltas
    before = await b.balance()
    body = {"model": "mock-claude", "max_tokens": 64, "messages": MSG, "stream": True}
    got = await fetch(b.proxy.url + "/v1/messages", body, {"x-api-key": b.key})
    evs = events(got.body)
    assert got.status == 200 and evs[-1].event == "error" and len(evs) == 7
    start = evs[0].json["message"]["usage"]
    text = "".join(e.json["delta"]["text"] for e in evs if e.event == "content_block_delta")
    (row,) = await log_rows(b)
    # message_start's usage arrived: the upstream's input, output raised to what was relayed.
    out = max(start["output_tokens"], tokens(text, "mock-claude"))
    assert (row.details.end_reason, row.details.usage_source) == ("upstream_error", "upstream")
    assert (row.details.input, row.details.output) == (start["input_tokens"], out)
    assert row.charge == quota(CLAUDE, start["input_tokens"], out)
    await money_moved(b, before, row.charge)


async def test_error_event_mid_stream_gemini(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.error_event_after = 3
    before = await b.balance()
    body = {"contents": [{"role": "user", "parts": [{"text": "tell me about weirs"}]}]}
    got = await fetch(
        b.proxy.url + "/v1beta/models/mock-gemini:streamGenerateContent?alt=sse", body, {"x-goog-api-key": b.key}
    )
    evs = events(got.body)
    assert got.status == 200 and len(evs) == 4 and "error" in evs[-1].json
    text = "".join(e.json["candidates"][0]["content"]["parts"][0]["text"] for e in evs[:3])
    (row,) = await log_rows(b)
    prompt = prompt_estimate(b, Endpoint.GEMINI_STREAM, body, "mock-gemini")
    assert (row.details.end_reason, row.details.usage_source) == ("upstream_error", "partial")
    assert row.charge == quota(GEMINI, prompt, tokens(text, "mock-gemini")) > 0
    await money_moved(b, before, row.charge)


async def test_error_event_mid_stream_responses(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.error_event_after = 7  # created, in_progress, item, part, 3 deltas
    before = await b.balance()
    body = {"model": "mock-gpt", "input": "tell me about weirs", "stream": True}
    got = await fetch(b.proxy.url + "/v1/responses", body, auth(b))
    evs = events(got.body)
    assert got.status == 200 and evs[-1].event == "error" and len(evs) == 8
    text = "".join(e.json["delta"] for e in evs if e.event == "response.output_text.delta")
    (row,) = await log_rows(b)
    prompt = prompt_estimate(b, Endpoint.RESPONSES, body, "mock-gpt")
    assert (row.details.end_reason, row.details.usage_source) == ("upstream_error", "partial")
    assert row.charge == quota(GPT, prompt, tokens(text, "mock-gpt")) > 0
    await money_moved(b, before, row.charge)


# ---- byte-level misbehaviour (raw upstream) ---------------------------------------------


WITH_USAGE = {**CHAT, "stream_options": {"include_usage": True}}


async def test_malformed_sse_is_relayed_verbatim_and_billed_from_usage(
    billed: BilledFactory, raws: list[RawUpstream]
) -> None:
    b = await billed()
    stream = (
        chunk("Hello")
        + b": a comment\n\n"
        + b"this line is garbage\n\n"
        + b"data\n\n"  # a field with no colon: empty data, no event
        + b"event: weird\ndata: {not json\n\n"
        + b"data: "
        + b"x" * 300_000
        + b"\n\n"  # a giant line (within the event limit)
        + chunk(" world")
        + usage_chunk(40, 7)
        + b"data: [DONE]\n\n"
    )
    await with_raw(b, raws, script_of(stream[:7], stream[7:1000], stream[1000:]))
    before = await b.balance()
    got = await fetch(b.proxy.url + "/v1/chat/completions", WITH_USAGE, auth(b))
    assert got.status == 200 and got.body == stream
    (row,) = await log_rows(b)
    assert (row.details.end_reason, row.details.usage_source) == ("completed", "upstream")
    assert row.charge == quota(GPT, 40, 7)
    await money_moved(b, before, row.charge)


async def test_event_over_the_size_limit_is_a_broken_stream(billed: BilledFactory, raws: list[RawUpstream]) -> None:
    """One event larger than the parser's limit cannot be relayed whole: the client's
    stream is cut after what was relayed, billed as partial, and the hold is resolved."""
    b = await billed()
    giant = b"data: " + b"y" * (5 * 1024 * 1024) + b"\n\n"
    await with_raw(b, raws, script_of(chunk("Hello"), chunk(" there"), giant, b"data: [DONE]\n\n"))
    before = await b.balance()
    got = await fetch(b.proxy.url + "/v1/chat/completions", CHAT, auth(b))
    assert got.status == 200 and got.broken
    assert got.body == chunk("Hello") + chunk(" there")
    (row,) = await log_rows(b)
    prompt = prompt_estimate(b, Endpoint.CHAT, CHAT, "mock-gpt")
    assert (row.details.end_reason, row.details.usage_source) == ("upstream_truncated", "partial")
    assert row.charge == quota(GPT, prompt, tokens("Hello there", "mock-gpt"))
    await money_moved(b, before, row.charge)


async def test_usage_repeated_in_every_chunk_is_billed_once_last_value(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.repeat_usage = True
    before = await b.balance()
    got = await fetch(b.proxy.url + "/v1/chat/completions", WITH_USAGE, auth(b))
    usages = [e.json["usage"] for e in events(got.body) if isinstance(e.json, dict) and e.json.get("usage")]
    assert len(usages) > 3  # cumulative usage in many chunks
    final = usages[-1]
    (row,) = await log_rows(b)
    assert row.details.output == final["completion_tokens"]
    assert row.charge == quota(GPT, final["prompt_tokens"], final["completion_tokens"])
    await money_moved(b, before, row.charge)


async def test_gemini_repeated_usage_is_last_value(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.repeat_usage = True
    before = await b.balance()
    body = {"contents": [{"role": "user", "parts": [{"text": "tell me about weirs"}]}]}
    got = await fetch(
        b.proxy.url + "/v1beta/models/mock-gemini:streamGenerateContent?alt=sse", body, {"x-goog-api-key": b.key}
    )
    metas = [e.json["usageMetadata"] for e in events(got.body) if "usageMetadata" in (e.json or {})]
    assert len(metas) > 3
    final = metas[-1]
    (row,) = await log_rows(b)
    assert row.charge == quota(GEMINI, final["promptTokenCount"], final["candidatesTokenCount"])
    await money_moved(b, before, row.charge)


async def test_zero_usage_in_a_stream_is_estimated(billed: BilledFactory, raws: list[RawUpstream]) -> None:
    b = await billed()
    await with_raw(b, raws, script_of(chunk("Hello"), chunk(" world"), usage_chunk(0, 0), b"data: [DONE]\n\n"))
    before = await b.balance()
    got = await fetch(b.proxy.url + "/v1/chat/completions", WITH_USAGE, auth(b))
    assert got.status == 200 and chat_text(got.body) == "Hello world"
    (row,) = await log_rows(b)
    prompt = prompt_estimate(b, Endpoint.CHAT, CHAT, "mock-gpt")
    assert (row.details.end_reason, row.details.usage_source) == ("completed", "estimated")
    assert row.charge == quota(GPT, prompt, tokens("Hello world", "mock-gpt"))
    await money_moved(b, before, row.charge)


async def test_gzip_body_non_stream(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.gzip = True
    before = await b.balance()
    got = await fetch(b.proxy.url + "/v1/chat/completions", {**CHAT, "stream": False}, auth(b))
    assert got.status == 200 and "content-encoding" not in got.headers
    usage = orjson.loads(got.body)["usage"]
    (row,) = await log_rows(b)
    assert row.charge == quota(GPT, usage["prompt_tokens"], usage["completion_tokens"])
    await money_moved(b, before, row.charge)


async def test_gzip_body_stream(billed: BilledFactory, raws: list[RawUpstream]) -> None:
    b = await billed()
    plain = chunk("Hello") + chunk(" world") + usage_chunk(30, 2) + b"data: [DONE]\n\n"
    packed = gzip_bytes(plain)
    await with_raw(b, raws, script_of(packed[:20], packed[20:], head=sse_head("Content-Encoding: gzip\r\n")))
    before = await b.balance()
    got = await fetch(b.proxy.url + "/v1/chat/completions", WITH_USAGE, auth(b))
    assert got.status == 200 and got.body == plain and "content-encoding" not in got.headers
    (row,) = await log_rows(b)
    assert (row.details.end_reason, row.charge) == ("completed", quota(GPT, 30, 2))
    await money_moved(b, before, row.charge)


async def test_200_with_empty_json_body_releases(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.empty_body = True
    before = await b.balance()
    got = await fetch(b.proxy.url + "/v1/chat/completions", {**CHAT, "stream": False}, auth(b))
    assert (got.status, orjson.loads(got.body)["error"]["code"]) == (502, "upstream_empty_response")
    (row,) = await log_rows(b)
    assert row.charge == 0
    await money_moved(b, before, 0)


async def test_200_with_empty_event_stream_charges_nothing(billed: BilledFactory, raws: list[RawUpstream]) -> None:
    b = await billed()
    await with_raw(b, raws, script_of())
    before = await b.balance()
    got = await fetch(b.proxy.url + "/v1/chat/completions", CHAT, auth(b))
    assert got.status == 200 and got.body == b""
    (row,) = await log_rows(b)
    assert (row.charge, row.details.end_reason) == (0, "upstream_truncated")
    await money_moved(b, before, 0)


async def test_stream_that_never_closes_is_bounded_by_read_timeout(billed: BilledFactory) -> None:
    b = await billed()
    use_upstreams(b, UpstreamConfig(name="hang", type="mock", base_url=b.upstream.url, read_timeout=0.7))
    b.upstream.behaviour.never_close = True
    before = await b.balance()
    t0 = time.monotonic()
    got = await fetch(b.proxy.url + "/v1/chat/completions", CHAT, auth(b))
    assert time.monotonic() - t0 < WEIR_CUT_IT
    text = chat_text(got.body)
    assert got.status == 200 and got.broken and text.startswith("Mock answer")
    (row,) = await log_rows(b)
    prompt = prompt_estimate(b, Endpoint.CHAT, CHAT, "mock-gpt")
    assert (row.details.end_reason, row.details.usage_source) == ("upstream_truncated", "partial")
    assert row.charge == quota(GPT, prompt, tokens(text, "mock-gpt"))
    await money_moved(b, before, row.charge)


async def test_body_that_never_ends_is_bounded_and_released(billed: BilledFactory) -> None:
    b = await billed()
    use_upstreams(b, UpstreamConfig(name="hang", type="mock", base_url=b.upstream.url, read_timeout=0.7))
    b.upstream.behaviour.never_close = True
    before = await b.balance()
    t0 = time.monotonic()
    got = await fetch(b.proxy.url + "/v1/chat/completions", {**CHAT, "stream": False}, auth(b))
    assert time.monotonic() - t0 < WEIR_CUT_IT
    assert (got.status, orjson.loads(got.body)["error"]["code"]) == (502, "upstream_error")
    (row,) = await log_rows(b)
    assert row.charge == 0
    await money_moved(b, before, 0)


async def test_bad_chunk_in_chunked_stream_is_partial(billed: BilledFactory, raws: list[RawUpstream]) -> None:
    b = await billed()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    good = chunked(chunk("Hello"), chunk(" there"))[:-5]  # without the terminating zero chunk
    # aiohttp drops its sock_read timer on a framing error and never fails the body
    # reader: only Weir's own per-read bound (the upstream's read_timeout) ends this.
    await with_raw(b, raws, script_of(good, b"zz-not-hex\r\nboom\r\n", head=head), read_timeout=1.0)
    before = await b.balance()
    t0 = time.monotonic()
    got = await fetch(b.proxy.url + "/v1/chat/completions", CHAT, auth(b))
    assert got.status == 200 and got.broken and got.body == chunk("Hello") + chunk(" there")
    assert time.monotonic() - t0 < WEIR_CUT_IT
    (row,) = await log_rows(b)
    prompt = prompt_estimate(b, Endpoint.CHAT, CHAT, "mock-gpt")
    assert (row.details.end_reason, row.details.usage_source) == ("upstream_truncated", "partial")
    assert row.charge == quota(GPT, prompt, tokens("Hello there", "mock-gpt"))
    await money_moved(b, before, row.charge)
