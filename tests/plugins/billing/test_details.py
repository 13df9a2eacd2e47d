"""The log details the plugin hands the store: every field where it belongs.

`plugins.billing.request_state.log_details` builds `LogDetails` positionally (for speed); this checks each value
against the same details built by keyword, so a reordered field fails here.
"""

from __future__ import annotations

from decimal import Decimal

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from plugins.billing.estimate import Estimate
from plugins.billing.meter import UsageMeter
from plugins.billing.pricing import ModelPrice
from plugins.billing.request_state import Billing, log_details
from plugins.billing.store.base import ApiKey, FundingSource, Hold, HoldState, LogDetails, Preference, User
from plugins.billing.usage import Usage
from proxy.context import Dialect, Endpoint, RequestContext, UpstreamInfo


def test_details_put_every_value_in_its_field() -> None:
    ctx = RequestContext(
        "r1",
        Dialect.OPENAI,
        Endpoint.CHAT,
        "POST",
        "/v1/chat/completions",
        MultiDictProxy(MultiDict()),
        CIMultiDictProxy(CIMultiDict()),
        "127.0.0.1",
        b"{}",
        {},
        "gpt-4o-mini",
        True,
    )
    ctx.upstream = UpstreamInfo("openai", "gpt-4o-mini-2024", 1)
    ctx.started_at = float(int(ctx.started_at) - 3)  # whole seconds: the ttft below is exact
    ctx.first_byte_at = ctx.started_at + 0.25
    key = ApiKey("k1", "alice", "laptop", "active", None, None, 0, 0, 0, 0, (), (), "team", 0.0)
    user = User("alice", "default", Preference.WALLET_FIRST, 10, 0, 0, 0, 0.0)
    hold = Hold("r1", "alice", "k1", FundingSource.WALLET, None, 5, 0, "v", "i", 0.0, 1.0, HoldState.OPEN)
    st = Billing(
        key,
        user,
        hold,
        ModelPrice.tokens(Decimal(1), Decimal(2)),
        Decimal("0.8"),
        Estimate(1, 2, 3),
        UsageMeter(Endpoint.CHAT),
        False,
        1,
    )
    usage = Usage(1, 2, 3, 4, 5, 6, 7, 8)
    got = log_details(ctx, st, "completed", "upstream", 200, "x" * 600, usage)
    assert got == LogDetails(
        end_reason="completed",
        usage_source="upstream",
        model="gpt-4o-mini",
        upstream_model="gpt-4o-mini-2024",
        upstream="openai",
        key_name="laptop",
        group="team",
        multiplier="0.8",
        stream=True,
        input=1,
        cache_read=2,
        cache_write_5m=3,
        cache_write_1h=4,
        output=5,
        audio_in=6,
        audio_out=7,
        images=8,
        latency_ms=got.latency_ms,
        ttft_ms=250,
        status=200,
        error="x" * 500,
    )
    assert 3000 <= got.latency_ms < 60_000


def test_usage_counts_sit_in_the_details_in_their_own_order() -> None:
    # `log_details` spreads a `Usage` into the details' fields in place.
    assert LogDetails._fields[9:17] == Usage._fields
