"""What billing keeps for one request, and what it derives from it: the meter's reading
(`metered`), the consume-log details (`log_details`), the answer to a refused hold
(`refusal`) and the usage a stream must report (`ask_for_usage`). Pure functions: the
plugin's hooks call them (plugins.billing.plugin).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from plugins.billing.charge_table import Metered
from plugins.billing.charges import UNIT_MULTIPLIER
from plugins.billing.estimate import Estimate
from plugins.billing.pricing import ModelPrice, format_usd
from plugins.billing.store.base import ApiKey, Hold, HoldRefusal, LogDetails, Refusal, User
from plugins.billing.stream_meter import StreamMeter
from plugins.billing.tuples import new_tuple
from plugins.billing.usage import Usage
from proxy.plugin import Endpoint, Reject, RequestContext, StateKey

#: Endpoints whose streams get `stream_options.include_usage` forced on.
USAGE_OPT_IN = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS})
_NO_USAGE = Usage()


@dataclass(slots=True)
class Billing:
    """One request's billing state."""

    key: ApiKey
    user: User
    hold: Hold
    price: ModelPrice
    multiplier: Decimal
    estimate: Estimate
    meter: StreamMeter
    hide_usage: bool
    requests: int


BILLING = StateKey[Billing]("billing")


def metered(st: Billing) -> Metered:
    """What the meter saw, for the §6 table (content and output read only if a row needs them)."""
    meter = st.meter
    # Every field, in order (`plugins.billing.tuples`).
    return new_tuple(
        Metered,
        (
            meter.usage,
            meter.has_content,  # has_content: looked at only if a row needs it
            meter.terminal,
            meter.output_count,  # output_count: counted only if a row needs it
            st.estimate.prompt_tokens,  # prompt_estimate
            st.requests,
        ),
    )


def log_details(
    ctx: RequestContext, st: Billing, end: str, source: str, status: int, error: str, u: Usage = _NO_USAGE
) -> LogDetails:
    """The consume-log row's details of a request that ends with `end` (usage `u`)."""
    # `ctx.elapsed_ms` and `ctx.ttft_ms`, without two property calls.
    started = ctx.started_at
    first_byte = ctx.first_byte_at
    multiplier = st.multiplier
    upstream = ctx.upstream
    # Built as a plain tuple in field order, the usage's eight counts spread in place (`Usage`
    # lists them in `LogDetails`'s order): the named tuple's generated `__new__` takes its 22
    # arguments through a Python frame. tests/plugins/billing/test_details.py keeps this
    # order honest.
    return new_tuple(
        LogDetails,
        (
            end,  # end_reason
            source,  # usage_source
            ctx.model or "",  # model
            (upstream.model or "") if upstream else "",  # upstream_model
            upstream.name if upstream else "",  # upstream
            st.key.name,  # key_name
            st.key.group or st.user.group,  # group
            "1" if multiplier is UNIT_MULTIPLIER else str(multiplier),  # multiplier
            ctx.stream,  # stream
            *u,  # input, cache_read, cache_write_5m, cache_write_1h, output, audio_in, audio_out, images
            int((time.monotonic() - started) * 1000.0),  # latency_ms
            None if first_byte is None else int((first_byte - started) * 1000.0),  # ttft_ms
            status,
            error[:500],  # error
            0,  # seconds (async tasks only)
        ),
    )


def refusal(refused: HoldRefusal, amount: int, qpu: int) -> Reject:
    """The client's answer to a hold the store refused (`amount` was asked)."""
    reason = refused.reason
    if reason is Refusal.KEY_EXPIRED:
        return Reject(403, "key_expired", "the API key has expired")
    if reason in (Refusal.KEY_DISABLED, Refusal.UNKNOWN_KEY):
        return Reject(403, "key_disabled", "the API key is disabled")
    what = {Refusal.INSUFFICIENT_KEY_QUOTA: "key quota", Refusal.INSUFFICIENT_SUBSCRIPTION: "subscription balance"}
    source = what.get(reason, "balance")
    return Reject(
        402,
        "insufficient_quota",
        f"insufficient {source}: available {format_usd(refused.available, qpu)}, "
        f"this request is estimated at up to {format_usd(amount, qpu)}",
    )


def ask_for_usage(ctx: RequestContext) -> bool:
    """Make a chat or completions stream report its usage (`stream_options.include_usage`);
    True when the client had not asked for it (its usage chunk is then hidden from it)."""
    if not (ctx.stream and ctx.endpoint in USAGE_OPT_IN and ctx.json is not None):
        return False
    options = ctx.json.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    merged = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    # In place: what `ctx.json` holds after `on_request` is what is sent upstream.
    ctx.json["stream_options"] = merged
    return True
