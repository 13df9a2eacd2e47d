"""`/metrics` shows money: what billing charged and released, its store latency and open
holds, agreeing with the consume log; and `server.metrics_token` guards the page."""

from __future__ import annotations

from decimal import Decimal

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from plugins.billing.pricing import DEFAULT_QUOTA_PER_USD
from tests.e2e.conftest import BilledFactory

TOKEN = "metrics-token-0123456789"
MSG = [{"role": "user", "content": "hello there"}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(url: str, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics", headers=headers) as r:
        return r.status, await r.text()


async def test_charges_and_releases_match_the_log(billed: BilledFactory) -> None:
    """Three completions and one upstream failure: the charged quota per (model, group) is
    the consume log's sum, USD is that over quota_per_usd, one release by reason, a hold and
    a settlement latency per request, and no hold left open on this instance."""
    b = await billed(server={"metrics_token": TOKEN})
    client = b.openai()
    for _ in range(3):
        await client.chat.completions.create(model="mock-gpt", messages=MSG)  # type: ignore[arg-type]
    b.upstream.behaviour.fail_status = 500
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="mock-gpt", messages=MSG)  # type: ignore[arg-type]
    await b.proxy.settled()
    rows = await b.store.query_logs(user=b.user, limit=10)
    charged = sum(r.charge for r in rows)
    assert len(rows) == 4 and charged > 0

    status, text = await scrape(b.proxy.url, TOKEN)
    assert status == 200
    got = samples(text)
    labels = (("group", "default"), ("model", "mock-gpt"))
    assert got[("weir_billing_charged_quota_total", labels)] == charged
    assert got[("weir_billing_charges_total", labels)] == 3
    usd = Decimal(charged) / DEFAULT_QUOTA_PER_USD
    assert got[("weir_billing_charged_usd_total", labels)] == pytest.approx(float(usd))
    assert got[("weir_billing_releases_total", (("reason", "upstream_error"),))] == 1
    assert got[("weir_billing_hold_seconds_count", ())] == 4
    assert got[("weir_billing_settle_seconds_count", ())] == 4
    assert got[("weir_billing_open_holds", (("scope", "instance"),))] == 0


async def test_metrics_token_guards_the_page(billed: BilledFactory) -> None:
    """With `server.metrics_token`: no token or a wrong one is a 401 JSON error (and no
    metric leaks); the right one gets the exposition."""
    b = await billed(server={"metrics_token": TOKEN})
    for token in (None, "wrong-token-0123456789"):
        status, text = await scrape(b.proxy.url, token)
        assert status == 401
        assert "weir_" not in text and "metrics token" in text
    status, text = await scrape(b.proxy.url, TOKEN)
    assert status == 200 and "weir_billing_open_holds" in text
