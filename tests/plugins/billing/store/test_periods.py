"""Period boundaries in `ledger_rules` are exact: whole days added to the start, never rounded."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from plugins.billing.store.rules import DAY, add_months, period_start

# 2001 .. 2096 (across 2^31 s, in 2038, where float sums start to round), with arbitrary fractions of a second (a `time.time()` is rarely a whole µs).
starts = st.floats(min_value=1_000_000_000.0, max_value=4_000_000_000.0, allow_nan=False)
spans = st.floats(min_value=0.0, max_value=5 * 365 * DAY, allow_nan=False)


@given(starts)
def test_zero_months_is_the_start_itself(start: float) -> None:
    assert add_months(start, 0) == start
    assert period_start(start, "month", start) == start
    assert period_start(start, "month", start + 3600) == start


@given(starts, st.integers(min_value=0, max_value=60))
def test_month_boundaries_are_whole_days_after_the_start(start: float, months: int) -> None:
    moved = add_months(start, months)
    days = round((moved - start) / DAY)
    assert moved == start + days * DAY  # the float sum itself: nothing else rounds it
    day0 = datetime.fromtimestamp(start // DAY * DAY, UTC)
    day1 = datetime.fromtimestamp(moved // DAY * DAY, UTC)
    assert (day1.year - day0.year) * 12 + day1.month - day0.month == months
    assert day1.day == min(day0.day, calendar.monthrange(day1.year, day1.month)[1])


@given(starts, spans, st.sampled_from(["day", "week", "month"]))
def test_the_period_contains_now_and_is_stable(start: float, span: float, period: str) -> None:
    now = start + span
    begun = period_start(start, period, now)
    assert start <= begun <= now
    assert period_start(start, period, begun) == begun  # recomputing at the boundary agrees
    if period == "month":
        nxt = next(add_months(start, m) for m in range(200) if add_months(start, m) > begun)
        assert now < nxt


def test_a_start_just_before_midnight_keeps_its_date() -> None:
    start = 1_709_164_799.9999997  # 2024-02-28T23:59:59.9999998Z; datetime rounds it to the 29th
    assert add_months(start, 1) == start + 29 * DAY  # 2024-03-28, same time of day
    assert add_months(start, 12) == start + 366 * DAY  # 2025-02-28, past 2024-02-29
