"""Spec §6, one test per row: the exact quota captured, end_reason, usage_source, clean audit."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest

from proxy import keys
from proxy.config import UpstreamConfig
from proxy.upstream import Upstream
from tests.e2e.conftest import Billed, BilledFactory

MSG = [{"role": "user", "content": "count for me"}]


def gpt_charge(prompt_uncached: int, output: int, cached: int = 0) -> int:
    """Expected quota for mock-gpt prices (0.15 / 0.60 / cache 0.075 per 1M), ROUND_HALF_UP, min 1."""
    from decimal import ROUND_HALF_UP, Decimal

    usd_per_m = (
        Decimal(prompt_uncached) * Decimal("0.15")
        + Decimal(output) * Decimal("0.60")
        + Decimal(cached) * Decimal("0.075")
    )
    q = (usd_per_m / 1_000_000 * 500_000).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return max(int(q), 1 if usd_per_m else 0)


async def test_completed_with_usage(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    resp = await b.openai().chat.completions.create(model="mock-gpt", messages=MSG)  # type: ignore[arg-type]
    assert resp.usage is not None
    expected = gpt_charge(resp.usage.prompt_tokens, resp.usage.completion_tokens)
    row = await b.last_log()
    assert (row.charge, row.details.end_reason, row.details.usage_source) == (expected, "completed", "upstream")
    assert await b.balance() == before - expected


async def test_stream_usage_hidden_when_not_requested(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    stream = await b.openai().chat.completions.create(model="mock-gpt", messages=MSG, stream=True)  # type: ignore[arg-type]
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert b.upstream.requests[-1].json["stream_options"] == {"include_usage": True}
    row = await b.last_log()
    assert row.details.usage_source == "upstream" and row.details.output > 0
    assert row.charge == gpt_charge(row.details.input, row.details.output)
    assert await b.balance() == before - row.charge


async def stream_text(b: Billed, **kw: Any) -> str:
    stream = await b.openai().chat.completions.create(model="mock-gpt", messages=MSG, stream=True, **kw)  # type: ignore[arg-type]
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def count(text: str, model: str = "mock-gpt") -> int:
    from plugins.billing.tokenizer import Tokenizer

    return Tokenizer().count(text, model)


async def test_usage_missing_is_estimated(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.omit_usage = True
    before = await b.balance()
    text = await stream_text(b)
    row = await b.last_log()
    assert (row.details.end_reason, row.details.usage_source) == ("completed", "estimated")
    assert row.details.output == count(text) > 0
    assert row.details.input > 0
    assert row.charge == gpt_charge(row.details.input, row.details.output)
    assert await b.balance() == before - row.charge


async def test_all_zero_usage_with_content_counts_as_missing(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.zero_usage = True
    text = await stream_text(b)
    row = await b.last_log()
    assert row.details.usage_source == "estimated" and row.details.output == count(text)
    assert row.charge == gpt_charge(row.details.input, row.details.output) > 0


async def test_all_zero_usage_nothing_relayed_charges_zero(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.zero_usage = True
    before = await b.balance()
    resp = await b.openai().embeddings.create(model="mock-embed", input="hello")
    assert resp.usage.total_tokens == 0
    row = await b.last_log()
    assert row.charge == 0 and await b.balance() == before
    assert (await b.store.get_user(b.user)).reserved == 0  # type: ignore[union-attr]


async def test_upstream_500_before_first_byte_releases_exactly(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.fail_status = 500
    before = await b.balance()
    with pytest.raises(openai.InternalServerError):
        await b.openai().chat.completions.create(model="mock-gpt", messages=MSG, stream=True)  # type: ignore[arg-type]
    row = await b.last_log()
    assert (row.charge, row.details.end_reason, row.details.status) == (0, "upstream_error", 500)
    user = await b.store.get_user(b.user)
    assert user is not None and user.balance == before and user.reserved == 0


async def test_failover_then_success_billed_once(billed: BilledFactory, fake_upstream: Any) -> None:
    from proxy.mock.upstream import MockUpstream

    bad = MockUpstream()
    bad.behaviour.fail_status = 502
    await bad.start()
    try:
        b = await billed()
        # Re-point: a failing upstream first, the good one second.
        pool = b.proxy.app[keys.UPSTREAMS]
        pool.upstreams.insert(
            0, Upstream(UpstreamConfig(name="bad", type="mock", base_url=bad.url, priority=-1), bad.url)
        )
        before = await b.balance()
        resp = await b.openai().chat.completions.create(model="mock-gpt", messages=MSG)  # type: ignore[arg-type]
        assert len(bad.requests) == 1
        await b.proxy.settled()
        rows = await b.store.query_logs(user=b.user)
        assert len(rows) == 1 and rows[0].details.upstream == "fake"
        assert resp.usage is not None
        assert rows[0].charge == gpt_charge(resp.usage.prompt_tokens, resp.usage.completion_tokens)
        assert await b.balance() == before - rows[0].charge
    finally:
        await bad.stop()


async def test_reset_mid_stream_is_partial(billed: BilledFactory) -> None:
    b = await billed()
    b.upstream.behaviour.reset_after = 6
    received = ""
    with pytest.raises(openai.APIError):
        stream = await b.openai().chat.completions.create(model="mock-gpt", messages=MSG, stream=True)  # type: ignore[arg-type]
        async for c in stream:
            received += c.choices[0].delta.content or "" if c.choices else ""
    row = await b.last_log()
    assert (row.details.end_reason, row.details.usage_source) == ("upstream_truncated", "partial")
    assert row.details.output == count(received) > 0
    assert row.charge == gpt_charge(row.details.input, row.details.output)


@pytest.mark.parametrize("policy", ["drain", "partial"])
async def test_client_disconnect(billed: BilledFactory, policy: str) -> None:
    b = await billed(on_client_disconnect=policy)
    b.upstream.behaviour.pace = 0.02
    b.upstream.behaviour.words = 30
    before = await b.balance()
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            b.proxy.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {b.key}"},
            json={"model": "mock-gpt", "messages": MSG, "stream": True},
        )
        assert resp.status == 200, await resp.text()
        seen = 0
        while seen < 3:
            line = await resp.content.readline()
            assert line, f"the stream ended after {seen} events"
            seen += line.startswith(b"data:")
        resp.close()
    row = None
    for _ in range(100):
        await b.proxy.settled()
        rows = await b.store.query_logs(user=b.user)
        if rows:
            row = rows[0]
            break
        await asyncio.sleep(0.05)
    assert row is not None and row.details.end_reason == "client_disconnected"
    if policy == "drain":
        # Drained to the end: the upstream's own usage for the whole answer.
        assert row.details.usage_source == "upstream" and row.details.output == 30
    else:
        assert row.details.usage_source == "partial" and 0 < row.details.output < 30
    assert row.charge == gpt_charge(row.details.input, row.details.output)
    assert await b.balance() == before - row.charge


async def test_responses_incomplete_bills_its_usage(billed: BilledFactory) -> None:
    b = await billed()
    stream = await b.openai().responses.create(model="mock-incomplete", input="tell me", stream=True)
    events = [e async for e in stream]
    final = events[-1]
    assert final.type == "response.incomplete"
    usage = final.response.usage
    assert usage is not None
    row = await b.last_log()
    assert row.details.usage_source == "upstream" and row.details.output == usage.output_tokens
    cached = usage.input_tokens_details.cached_tokens
    assert row.charge == gpt_charge(usage.input_tokens - cached, usage.output_tokens, cached)


async def test_anthropic_stream_with_cache_split(billed: BilledFactory) -> None:
    from decimal import ROUND_HALF_UP, Decimal

    b = await billed()
    before = await b.balance()
    async with b.anthropic().messages.stream(model="mock-claude-cache", max_tokens=64, messages=MSG) as s:  # type: ignore[arg-type]
        final = await s.get_final_message()
    u = final.usage
    assert u.cache_creation is not None and u.cache_creation.ephemeral_1h_input_tokens > 0
    per_m = (
        Decimal(u.input_tokens) * 3
        + Decimal(u.cache_read_input_tokens or 0) * Decimal("0.30")
        + Decimal(u.cache_creation.ephemeral_5m_input_tokens) * Decimal("3.75")
        + Decimal(u.cache_creation.ephemeral_1h_input_tokens) * 6
        + Decimal(u.output_tokens) * 15
    )
    expected = int((per_m / 2).quantize(Decimal(1), rounding=ROUND_HALF_UP))  # ×500000/1e6
    row = await b.last_log()
    assert row.charge == expected and row.details.cache_write_1h == u.cache_creation.ephemeral_1h_input_tokens
    assert await b.balance() == before - expected
