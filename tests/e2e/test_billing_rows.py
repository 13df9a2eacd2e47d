"""Spec §6, one test per row: the exact quota captured, end_reason, usage_source, clean audit."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.e2e.conftest import Billed, BilledFactory

MSG = [{"role": "user", "content": "count for me"}]


def gpt_charge(prompt_uncached: int, output: int, cached: int = 0) -> int:
    """Expected quota for mock-gpt prices (0.15 / 0.60 / cache 0.075 per 1M), ROUND_HALF_UP, min 1."""
    from decimal import ROUND_HALF_UP, Decimal

    usd_per_m = Decimal(prompt_uncached) * Decimal("0.15") + Decimal(output) * Decimal("0.60") + Decimal(cached) * Decimal("0.075")
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
