"""A user's spend over the last 30 days, per day and per model, read from the consume log,
and the geometry of its chart (server-rendered SVG: no script, nothing to download)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from plugins.billing.store.base import LogRow, Store

DAYS = 30
#: The consume log is read in pages of this many rows, up to `MAX_ROWS` for one summary.
PAGE = 1000
MAX_ROWS = 20_000


@dataclass(slots=True)
class Spend:
    """Spend per UTC day (oldest first, `DAYS` of them) and per model, in quota units."""

    days: list[tuple[str, int]]
    models: list[tuple[str, int, int]]  # (model, charge, requests), largest charge first
    total: int = 0
    requests: int = 0
    truncated: bool = False  # more than MAX_ROWS rows: the oldest were not counted
    rows: list[LogRow] = field(default_factory=list)


async def spend(store: Store, user: str, now: float, key_id: str | None = None) -> Spend:
    """The user's (or one key's) spend over the `DAYS` UTC days ending today."""
    today = datetime.fromtimestamp(now, UTC).date()
    start = datetime.combine(today - timedelta(days=DAYS - 1), datetime.min.time(), UTC)
    per_day = {(start.date() + timedelta(days=i)).isoformat(): 0 for i in range(DAYS)}
    per_model: dict[str, list[int]] = {}
    result = Spend([], [])
    before: int | None = None
    while len(result.rows) < MAX_ROWS:
        page = await store.query_logs(user, start.timestamp(), None, PAGE, before, key_id=key_id)
        for row in page:
            result.rows.append(row)
            day = datetime.fromtimestamp(row.ts, UTC).date().isoformat()
            if day in per_day:
                per_day[day] += row.charge
            totals = per_model.setdefault(row.details.model or "(none)", [0, 0])
            totals[0] += row.charge
            totals[1] += 1
        if len(page) < PAGE:
            break
        before = page[-1].id
    else:
        result.truncated = True
    result.days = list(per_day.items())
    result.models = sorted(((m, c, n) for m, (c, n) in per_model.items()), key=lambda t: (-t[1], t[0]))
    result.total = sum(per_day.values())
    result.requests = len(result.rows)
    return result


@dataclass(frozen=True, slots=True)
class Bar:
    """One day's bar: its place in the SVG, its label and its value for the tooltip."""

    x: float
    y: float
    width: float
    height: float
    day: str
    label: str
    label_x: float  # kept inside the plot, so the last label is not cut at the edge
    value: str
    zero: bool


def day_bars(
    days: list[tuple[str, int]], show: Callable[[int], str], width: float = 720, height: float = 160
) -> list[Bar]:
    """Bars for `days` in a `width` x `height` plot (a zero day keeps a hairline), labelled
    every 7 days."""
    top = max((v for _, v in days), default=0) or 1
    step = width / max(len(days), 1)
    bars = []
    for i, (day, value) in enumerate(days):
        h = max(value / top * (height - 4), 1.5)
        label = day[5:] if (len(days) - 1 - i) % 7 == 0 else ""
        centre = min(max(i * step + step / 2, 24), width - 24)
        bars.append(
            Bar(
                round(i * step + 1, 2),
                round(height - h, 2),
                round(step - 2, 2),
                round(h, 2),
                day,
                label,
                round(centre, 2),
                show(value),
                value == 0,
            )
        )
    return bars
