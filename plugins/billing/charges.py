"""The charge arithmetic (docs/billing-rules.md §1, §4): quota units from usage and prices.

Exact: a `ModelPrice` carries its prices as integers over one common denominator
(`_rates` over `_scale`, computed once), and a multiplier is a ratio of integers, so each
charge is one fraction, rounded once, half up (`_round_ratio`), exactly as the Decimal
formula of the spec would (tests/plugins/billing/test_charge_exact.py proves it on every bundled
price). A non-zero charge of a priced, non-empty request is at least 1 unit.
"""

from __future__ import annotations

from decimal import Decimal
from operator import mul
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plugins.billing.pricing import ModelPrice
    from plugins.billing.usage import Usage

__all__ = ["UNIT_MULTIPLIER", "charge_characters", "charge_io", "charge_requests", "charge_tokens"]

#: The multiplier of list prices (a group that is not listed): the one object pricing hands
#: out for it, so the charges below can skip `Decimal.as_integer_ratio` (~1.6k instructions)
#: by identity. Any other `Decimal` equal to 1 takes the general path, to the same result.
UNIT_MULTIPLIER = Decimal(1)


def charge_tokens(price: ModelPrice, usage: Usage, multiplier: Decimal, quota_per_usd: int) -> int:
    """Quota units for token usage: Σ tokens × price / 1M × quota_per_usd × multiplier,
    rounded half-up once. Zero usage costs 0; any other non-zero amount costs at least 1.

    Exact: the prices are integers over `price._scale` and the multiplier a ratio of
    integers, so the sum is one fraction, rounded once (`_round_ratio`).
    """
    if price.per_request is not None or price.characters is not None:
        raise ValueError("charge_tokens called with a per-request or per-character price")
    if not any(usage):  # `usage.is_zero`, without the property call
        return 0
    # `Usage` is a named tuple whose counts are in `_RATE_FIELDS` order: one count per rate.
    per_million = sum(map(mul, usage, price._rates))
    m, d = (1, 1) if multiplier is UNIT_MULTIPLIER else multiplier.as_integer_ratio()
    return _round_ratio(per_million * quota_per_usd * m, price._scale * 1_000_000 * d)


def charge_io(price: ModelPrice, input: int, output: int, multiplier: Decimal, quota_per_usd: int) -> int:
    """`charge_tokens` of a usage with only uncached `input` and `output` tokens (a hold
    estimate), without building the `Usage`: the same arithmetic, term for term."""
    if price.per_request is not None or price.characters is not None:
        raise ValueError("charge_tokens called with a per-request or per-character price")
    if not (input or output):
        return 0
    r = price._rates
    m, d = (1, 1) if multiplier is UNIT_MULTIPLIER else multiplier.as_integer_ratio()
    return _round_ratio((input * r[0] + output * r[4]) * quota_per_usd * m, price._scale * 1_000_000 * d)


def charge_requests(price: ModelPrice, n: int, multiplier: Decimal, quota_per_usd: int) -> int:
    """Quota units for `n` requests of a per-request model, rounded half-up once."""
    if price.per_request is None:
        raise ValueError("charge_requests called with a token price")
    if n <= 0:
        return 0
    m, d = multiplier.as_integer_ratio()
    return _round_ratio(price._rates[-1] * n * quota_per_usd * m, price._scale * d)


def charge_characters(price: ModelPrice, characters: int, multiplier: Decimal, quota_per_usd: int) -> int:
    """Quota units for `characters` input characters of a per-character model:
    characters × price / 1M × quota_per_usd × multiplier, rounded half-up once."""
    if price.characters is None:
        raise ValueError("charge_characters called without a per-character price")
    if characters <= 0:
        return 0
    m, d = multiplier.as_integer_ratio()
    return _round_ratio(price._rates[-1] * characters * quota_per_usd * m, price._scale * 1_000_000 * d)


def _round_ratio(num: int, den: int) -> int:
    """`num / den` (den > 0) rounded half away from zero, as Decimal's ROUND_HALF_UP does."""
    if num >= 0:
        q = (2 * num + den) // (2 * den)
        # A priced, non-empty request is never free: 0.075 units still costs 1 (spec §1).
        return 1 if q == 0 and num > 0 else q
    return -((-2 * num + den) // (2 * den))
