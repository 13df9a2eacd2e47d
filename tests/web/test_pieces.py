"""Billing's page pieces on their own: money shown to people, CSV cells, the chart's bars,
one-time confirmation tokens, the spend summary over a month."""

from __future__ import annotations

import pytest

from plugins.billing.cli.accounts import Money
from plugins.billing.web.common import BadInput, BillingWeb, OnceTokens
from plugins.billing.web.console_records import csv_cell
from plugins.billing.web.stats import DAYS, day_bars

WEB = BillingWeb(lambda: None, Money(500_000))  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(
    ("quota", "shown"),
    [
        (0, "$0.00"),
        (4, "$0.000008"),
        (250_000, "$0.50"),
        (500_000, "$1.00"),
        (617_283_950, "$1,234.57"),
        (-250_000, "-$0.50"),
        (-750_000_000, "-$1,500.00"),
        (12_345, "$0.02469"),
    ],
)
def test_money_is_shown_to_the_cent_from_a_dollar_and_exactly_below(quota: int, shown: str) -> None:
    assert WEB.show_usd(quota) == shown


def test_usd_inputs_convert_exactly() -> None:
    assert WEB.quota_of_usd("0.1", "usd") == 50_000 and WEB.quota_of_usd("$2", "usd") == 1_000_000
    assert WEB.quota_of_usd(0.3, "usd") == 150_000  # a JSON number goes through its text, not float maths
    for bad in ("ten", "NaN", "Infinity", True, None, [1]):
        with pytest.raises(BadInput):
            WEB.quota_of_usd(bad, "usd")


def test_csv_cells_never_start_a_formula() -> None:
    assert [csv_cell(v) for v in ("=1+1", "+cmd", "-x", "@sum", "alice", -5, "-1.5", None)] == [
        "'=1+1",
        "'+cmd",
        "'-x",
        "'@sum",
        "alice",
        "-5",
        "-1.5",
        "",
    ]


def test_the_chart_has_a_bar_per_day_scaled_to_the_busiest() -> None:
    days = [(f"2030-01-{i + 1:02d}", 0) for i in range(DAYS)]
    days[-1] = (days[-1][0], 1000)
    days[0] = (days[0][0], 500)
    bars = day_bars(days, WEB.show_usd, width=720, height=160)
    assert len(bars) == DAYS and bars[-1].height == 156 and bars[0].height == 78
    assert bars[1].zero and bars[1].height == 1.5  # a hairline, not nothing
    assert [b.label for b in bars if b.label] == ["01-02", "01-09", "01-16", "01-23", "01-30"]
    assert all(24 <= b.label_x <= 696 for b in bars)


def test_a_confirmation_token_works_once() -> None:
    once = OnceTokens(size=2)
    first, second, third = once.new(), once.new(), once.new()
    assert once.use(third) and not once.use(third)
    assert not once.use(first)  # pushed out by the bound
    assert once.use(second) and not once.use("made-up")
