"""The integer charge arithmetic gives exactly what the spec's Decimal formula gives (§1, §4).

`charge_tokens`, `charge_requests`, `charge_characters` and `charge_io` work on integer price coefficients computed once per
price; here they are compared, on random prices, usages, multipliers and quotas per USD and
on every bundled LiteLLM price, with the formula written out in `Decimal` at 60 digits:
`round_half_up(Σ tokens × price / 1M × quota_per_usd × multiplier)`, minimum 1 when
positive.
"""

from __future__ import annotations

import json
import random
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext

from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.billing.price_data import DEFAULT_PATH, LiteLLMPrices
from plugins.billing.pricing import ModelPrice, charge_characters, charge_io, charge_requests, charge_tokens
from plugins.billing.usage import Usage

_EXACT = Context(prec=60, rounding=ROUND_HALF_UP)
_FIELDS = (
    ("input", "input"),
    ("cache_read", "cache_read"),
    ("cache_write_5m", "cache_write"),
    ("cache_write_1h", "cache_write_1h"),
    ("output", "output"),
    ("audio_in", "audio_input"),
    ("audio_out", "audio_output"),
    ("images", "image_input"),
)


def _rounded(amount: Decimal) -> int:
    q = int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return 1 if q == 0 and amount > 0 else q


def reference_tokens(price: ModelPrice, usage: Usage, multiplier: Decimal, qpu: int) -> int:
    """The spec formula, in Decimal, as the plugin computed it before integer coefficients."""
    if usage.is_zero:
        return 0
    with localcontext(_EXACT):
        total = sum(getattr(usage, u) * getattr(price, p) for u, p in _FIELDS)
        return _rounded(total / Decimal(1_000_000) * qpu * multiplier)


def reference_requests(price: ModelPrice, n: int, multiplier: Decimal, qpu: int) -> int:
    assert price.per_request is not None
    if n <= 0:
        return 0
    with localcontext(_EXACT):
        return _rounded(price.per_request * n * qpu * multiplier)


def reference_characters(price: ModelPrice, chars: int, multiplier: Decimal, qpu: int) -> int:
    """Speech: characters × USD per 1M characters, the same formula as tokens."""
    assert price.characters is not None
    if chars <= 0:
        return 0
    with localcontext(_EXACT):
        return _rounded(chars * price.characters / Decimal(1_000_000) * qpu * multiplier)


# Prices as operators write them (0.15, 2.5, 0.0375) and as LiteLLM's floats scale (2.5e-06
# per token is 2.5 per 1M), with up to 12 decimal places; zero included.
prices = st.builds(lambda units, places: Decimal(units).scaleb(-places), st.integers(0, 10**9), st.integers(0, 12))
optional_prices = st.none() | prices
multipliers = st.builds(lambda units, places: Decimal(units).scaleb(-places), st.integers(0, 10**6), st.integers(0, 6))
counts = st.integers(0, 10**9) | st.integers(0, 50)
usages = st.builds(Usage, counts, counts, counts, counts, counts, counts, counts, counts)
quotas = st.sampled_from([1, 7, 1000, 500_000, 1_000_000, 123_457])


@settings(max_examples=3000, deadline=None)
@given(
    st.tuples(prices, prices),
    st.tuples(optional_prices, optional_prices, optional_prices, optional_prices, optional_prices, optional_prices),
    usages,
    multipliers,
    quotas,
)
def test_token_charges_equal_the_decimal_formula(
    io: tuple[Decimal, Decimal],
    extra: tuple[Decimal | None, ...],
    usage: Usage,
    multiplier: Decimal,
    qpu: int,
) -> None:
    names = ("cache_read", "cache_write", "cache_write_1h", "audio_input", "audio_output", "image_input")
    price = ModelPrice.tokens(io[0], io[1], **dict(zip(names, extra)))
    assert charge_tokens(price, usage, multiplier, qpu) == reference_tokens(price, usage, multiplier, qpu)


@settings(max_examples=1000, deadline=None)
@given(st.tuples(prices, prices), counts, counts, multipliers, quotas)
def test_estimate_charges_equal_the_decimal_formula(
    io: tuple[Decimal, Decimal], prompt: int, output: int, multiplier: Decimal, qpu: int
) -> None:
    price = ModelPrice.tokens(io[0], io[1])
    usage = Usage(input=prompt, output=output)
    assert charge_io(price, prompt, output, multiplier, qpu) == reference_tokens(price, usage, multiplier, qpu)


@settings(max_examples=1000, deadline=None)
@given(prices, st.integers(-2, 10**4), multipliers, quotas)
def test_request_charges_equal_the_decimal_formula(per_request: Decimal, n: int, multiplier: Decimal, qpu: int) -> None:
    price = ModelPrice.request(per_request)
    assert charge_requests(price, n, multiplier, qpu) == reference_requests(price, n, multiplier, qpu)


@settings(max_examples=1000, deadline=None)
@given(prices, st.integers(-2, 10**7), multipliers, quotas)
def test_character_charges_equal_the_decimal_formula(per_m: Decimal, chars: int, multiplier: Decimal, qpu: int) -> None:
    price = ModelPrice.per_character(per_m)
    assert charge_characters(price, chars, multiplier, qpu) == reference_characters(price, chars, multiplier, qpu)


def test_half_unit_boundaries_round_up_and_tiny_charges_cost_one() -> None:
    price = ModelPrice.tokens(Decimal(1), Decimal(3))  # 1 token of input = 0.5 units at qpu 500000
    one = Decimal(1)
    for tokens, expected in ((1, 1), (3, 2), (5, 3), (2, 1), (4, 2)):
        assert charge_tokens(price, Usage(input=tokens), one, 500_000) == expected
    assert charge_tokens(price, Usage(input=1), one, 1) == 1  # 1e-6 units: never free
    assert charge_tokens(price, Usage(input=1), Decimal(0), 500_000) == 0  # a free group is free
    assert charge_tokens(ModelPrice.tokens(Decimal(0), Decimal(0)), Usage(output=9), one, 500_000) == 0


def test_every_bundled_litellm_price_charges_as_the_decimal_formula() -> None:
    data = LiteLLMPrices()
    rng = random.Random(20240611)
    checked = 0
    for name in sorted(json.loads(DEFAULT_PATH.read_bytes())):
        found = data.lookup(name)
        if found is None:
            continue
        price = found[0]
        for multiplier in (Decimal(1), Decimal("0.8"), Decimal("1.25"), Decimal("0.333")):
            if price.per_request is not None:
                n = rng.randint(1, 10)
                assert charge_requests(price, n, multiplier, 500_000) == reference_requests(
                    price, n, multiplier, 500_000
                ), name
                continue
            if price.characters is not None:
                chars = rng.randint(1, 5000)
                assert charge_characters(price, chars, multiplier, 500_000) == reference_characters(
                    price, chars, multiplier, 500_000
                ), name
                continue
            usage = Usage(*(rng.choice((0, 1, rng.randint(0, 10**6))) for _ in range(8)))
            assert charge_tokens(price, usage, multiplier, 500_000) == reference_tokens(
                price, usage, multiplier, 500_000
            ), name
        checked += 1
    assert checked > 500
