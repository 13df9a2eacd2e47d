"""The soak's verdict: settings, the figures a run collected, the pass criteria, and its
section of bench/RESULTS.md. Pure apart from `write_results` (no processes, no network)."""

from __future__ import annotations

import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from bench.loadgen import percentile
from bench.soak_traffic import HEALTHY, Kind, Shot, expected_outcomes
from proxy.store.base import LogRow

__all__ = ["SoakReport", "SoakSettings", "expected_charge", "judge", "linear_slope", "write_results"]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MIB = 1024 * 1024
#: The soak's price for every `soak-*` model, in USD per 1M tokens, and quota per USD.
PRICE_IN, PRICE_OUT, QUOTA_PER_USD = Decimal(1), Decimal(2), Decimal(500_000)


@dataclass(frozen=True, slots=True)
class SoakSettings:
    """How long, how hard and how hostile; and the pass thresholds."""

    minutes: float = 5.0
    seed: int = 1
    rate: float | None = None  # offer this many requests/s instead of half the measured maximum
    fault_rate: float = 0.05
    ramp: float = 30.0
    warmup: float = 60.0
    window: float = 60.0
    page_cache_mib: float = 16.0  # the SQLite page cache of Weir's store connection (sqlite_conn.py)
    max_inflight: int = 512
    rss_growth_mib_per_min: float = 1.0
    p99_ratio: float = 1.5
    # A p99 of a few ms moves by several ms with the scheduling of a shared 2-core machine;
    # degradation (a queue or a leak) shows as tens of ms and more. Slack below this is noise.
    p99_slack: float = 0.010

    def p99_limit(self, first: float) -> float:
        """The largest last-window p99 that still counts as holding: 1.5× the first, or the
        first plus the slack, whichever is larger."""
        return max(self.p99_ratio * first, first + self.p99_slack)


@dataclass(slots=True)
class SoakReport:
    """Everything one run measured, and after `judge` its failures (empty: it passed)."""

    settings: SoakSettings
    max_throughput: float = 0.0
    rate: float = 0.0
    duration: float = 0.0
    rss: list[tuple[float, int]] = field(default_factory=list)
    db: list[tuple[float, int]] = field(default_factory=list)  # size of weir.db over time
    shots: list[Shot] = field(default_factory=list)
    shed: int = 0
    open_holds: int = -1
    rows: list[LogRow] = field(default_factory=list)
    audit_ok: bool = False
    audit_text: str = ""
    balance_delta: int = 0
    key_delta: int = 0
    charged: int = 0
    rss_slope: float = 0.0  # MiB per minute after the memory warm-up
    memory_warmup: float = 0.0
    p99_first: float = 0.0
    p99_last: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every criterion held (call `judge` first)."""
        return not self.failures

    def windows(self) -> tuple[float, tuple[float, float], tuple[float, float]]:
        """(warm-up end, first window, last window) in seconds since the soak began.
        Short smoke runs shrink them proportionally, so they still have two windows."""
        d = self.duration
        warm = min(self.settings.warmup, d / 3)
        w = min(self.settings.window, (d - warm) / 2)
        return warm, (warm, warm + w), (d - w, d)

    def memory_warmup_end(self) -> float:
        """When the RSS fit starts: after the warm-up minute, and not before the database has
        grown by 1.25x SQLite's page cache, which fills with the pages a busy store writes
        (a bounded ~16 MiB, not a leak; at low rates it takes longer than a minute). Capped at
        half the run, so the fit always has samples and a slow plateau still fails."""
        warm = self.windows()[0]
        fill = 1.25 * self.settings.page_cache_mib * MIB
        base = self.db[0][1] if self.db else 0
        filled = next((t for t, size in self.db if size - base >= fill), self.duration)
        return min(max(warm, filled), self.duration / 2)

    def summary(self) -> str:
        """A plain-text account of the run and its verdict."""
        rss = [r for _, r in self.rss]
        lines = [
            f"soak: {self.duration:.0f} s at {self.rate:.1f} req/s (half of max {self.max_throughput:.1f} req/s), "
            f"{len(self.shots)} requests, seed {self.settings.seed}, shed {self.shed}",
            f"RSS: start {rss[0] / MIB:.1f} MiB, end {rss[-1] / MIB:.1f} MiB, max {max(rss) / MIB:.1f} MiB, "
            f"slope after {self.memory_warmup:.0f} s {self.rss_slope:+.3f} MiB/min" if rss else "RSS: no samples",
            f"p99 healthy latency: first window {self.p99_first * 1000:.1f} ms, last window {self.p99_last * 1000:.1f} ms",
            f"open holds after settling: {self.open_holds}; audit {'clean' if self.audit_ok else 'FAILED'}",
            f"charged (consume log) {self.charged}, wallet change {self.balance_delta}, key change {self.key_delta}, "
            f"{len(self.rows)} log rows",
            "outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
            "verdict: PASS" if self.passed else "verdict: FAIL\n  " + "\n  ".join(self.failures),
        ]
        return "\n".join(lines)


def linear_slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of y over x (units of y per unit of x); 0 for fewer than 2 points."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def expected_charge(usage: dict[str, Any]) -> int:
    """What OpenAI-shaped `usage` costs at the soak's price, worked out independently of the
    billing plugin. Cached and audio prices default to the input/output prices, so every
    prompt token costs the input price and every completion token the output price;
    rounded half up once, at least 1 unit when non-zero."""
    tokens_in = int(usage.get("prompt_tokens") or 0)
    tokens_out = int(usage.get("completion_tokens") or 0)
    usd = (tokens_in * PRICE_IN + tokens_out * PRICE_OUT) / Decimal(1_000_000)
    quota = int((usd * QUOTA_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return max(quota, 1) if usd > 0 else 0


def _p99(shots: list[Shot], lo: float, hi: float) -> float:
    return percentile([s.latency for s in shots if s.kind in HEALTHY and s.outcome == "ok" and lo <= s.started < hi], 99)


def _check_outcomes(r: SoakReport) -> None:
    bad = Counter(f"{s.kind.value}:{s.outcome}" for s in r.shots if s.outcome not in expected_outcomes(s.kind))
    if bad:
        example = next(s for s in r.shots if s.outcome not in expected_outcomes(s.kind))
        r.failures.append(f"unexpected outcomes {dict(bad)} (e.g. {example.kind.value}: {example.outcome} {example.detail})")
    if r.shed:
        r.failures.append(f"the driver shed {r.shed} requests: more than {r.settings.max_inflight} were open at once")


def _check_charges(r: SoakReport) -> None:
    by_id = {row.request_id: row for row in r.rows}
    wrong: Counter[str] = Counter()
    for s in r.shots:
        row = by_id.get(s.request_id)
        if s.kind in HEALTHY and s.outcome == "ok":
            if row is None or row.details.end_reason != "completed":
                wrong["healthy request without a completed log row"] += 1
            elif s.usage is not None and row.charge != expected_charge(s.usage):
                wrong["healthy request charged other than its usage"] += 1
        elif s.kind in (Kind.E500, Kind.HOSTILE, Kind.UNKNOWN_KEY) and row is not None and row.charge != 0:
            wrong[f"{s.kind.value} charged {row.charge}"] += 1
        elif s.kind is Kind.DISCONNECT and (row is None or row.charge <= 0):
            wrong["drained hang-up not charged"] += 1
    if wrong:
        r.failures.append(f"per-request billing: {dict(wrong)}")
    if not r.charged == r.balance_delta == r.key_delta:
        r.failures.append(
            f"money drift: consume log charged {r.charged}, wallet moved {r.balance_delta}, key moved {r.key_delta}"
        )


def judge(r: SoakReport) -> None:
    """Compute the figures and list every failed criterion in `r.failures`."""
    s = r.settings
    _, first, last = r.windows()
    r.outcomes = dict(Counter(f"{x.kind.value}:{x.outcome}" for x in r.shots))
    r.charged = sum(row.charge for row in r.rows)
    r.memory_warmup = r.memory_warmup_end()
    r.rss_slope = linear_slope([(t, b) for t, b in r.rss if t >= r.memory_warmup]) * 60 / MIB
    r.p99_first, r.p99_last = _p99(r.shots, *first), _p99(r.shots, *last)
    r.failures = []
    if r.rss_slope >= s.rss_growth_mib_per_min:
        r.failures.append(
            f"RSS grew {r.rss_slope:.3f} MiB/min after {r.memory_warmup:.0f} s (limit {s.rss_growth_mib_per_min})"
        )
    if not r.p99_last <= s.p99_limit(r.p99_first):
        r.failures.append(
            f"p99 latency degraded: last window {r.p99_last * 1000:.1f} ms > {s.p99_ratio} x first"
            f" {r.p99_first * 1000:.1f} ms and > first + {s.p99_slack * 1000:g} ms"
        )
    if r.open_holds != 0:
        r.failures.append(f"{r.open_holds} hold(s) still open after settling")
    if not r.audit_ok:
        r.failures.append(f"weir audit failed: {r.audit_text[:500]}")
    _check_outcomes(r)
    _check_charges(r)


def markdown(r: SoakReport, command: str) -> str:
    """The run's figures as a RESULTS.md section body."""
    _, first, last = r.windows()
    rss = [b for _, b in r.rss]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [
        ("duration (after a ramp of %.0f s)" % r.settings.ramp, f"{r.duration:.0f} s, {len(r.shots)} requests, seed {r.settings.seed}"),
        ("max throughput (healthy mix, closed loop)", f"{r.max_throughput:.1f} req/s"),
        ("offered rate (half of max, open loop)", f"{r.rate:.1f} req/s, {r.settings.fault_rate:.0%} faults, shed {r.shed}"),
        ("RSS of weir serve", f"{rss[0] / MIB:.1f} → {rss[-1] / MIB:.1f} MiB (max {max(rss) / MIB:.1f})" if rss else "—"),
        (
            f"RSS slope, least squares from {r.memory_warmup:.0f} s (< {r.settings.rss_growth_mib_per_min} MiB/min)",
            f"{r.rss_slope:+.3f} MiB/min",
        ),
        (f"p99 healthy latency, {first[0]:.0f}–{first[1]:.0f} s", f"{r.p99_first * 1000:.1f} ms"),
        (f"p99 healthy latency, {last[0]:.0f}–{last[1]:.0f} s (≤ {r.settings.p99_ratio}× first or first + {r.settings.p99_slack * 1000:g} ms)", f"{r.p99_last * 1000:.1f} ms"),
        ("open holds after settling", str(r.open_holds)),
        ("weir audit", "clean" if r.audit_ok else "FAILED"),
        ("consume-log charges / wallet change / key change", f"{r.charged} / {r.balance_delta} / {r.key_delta} quota"),
        ("outcomes (kind:outcome=count)", ", ".join(f"{k}={v}" for k, v in sorted(r.outcomes.items()))),
        ("verdict", "PASS" if r.passed else "FAIL: " + "; ".join(r.failures)),
    ]
    head = [
        f"Command: `{command}`.  ",
        f"Machine: {os.cpu_count()} CPUs (shared), load average {load} at the end, Python {platform.python_version()}, "
        f"Linux {platform.release()}.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    return "\n".join(head + [f"| {k} | {v} |" for k, v in rows]) + "\n"


def write_results(r: SoakReport, command: str, path: Path = RESULTS) -> None:
    """Append (or replace, for the same heading) this run's `## Soak` section; other text is kept."""
    heading = f"Soak {time.strftime('%Y-%m-%d')} ({r.settings.minutes:g} min, seed {r.settings.seed})"
    begin, end = f"<!-- soak:begin {heading} -->", f"<!-- soak:end {heading} -->"
    block = f"{begin}\n## {heading}\n\n{markdown(r, command).rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Weir benchmark results\n\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
