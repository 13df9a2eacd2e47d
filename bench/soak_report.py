"""The soak's verdict: settings, the figures a run collected, the pass criteria, and its
section of bench/RESULTS.md. Pure apart from `write_results` (no processes, no network)."""

from __future__ import annotations

import bisect
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
from plugins.billing.store.base import LogRow

__all__ = [
    "SoakReport",
    "SoakSettings",
    "expected_charge",
    "growth_per_k",
    "judge",
    "theil_sen",
    "write_results",
]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MIB = 1024 * 1024
#: The soak's price for every `soak-*` model, in USD per 1M tokens, and quota per USD.
PRICE_IN, PRICE_OUT, QUOTA_PER_USD = Decimal(1), Decimal(2), Decimal(500_000)


@dataclass(frozen=True, slots=True)
class SoakSettings:
    """How long, how hard and how hostile; and the pass thresholds."""

    minutes: float = 5.0
    seed: int = 1
    # Proxied requests per second, fixed: a small fraction of one core for Weir, so a busy
    # shared machine still serves it, and every run offers the same load. The direct
    # baseline sends as many again, interleaved, straight to the mock upstream.
    rate: float = 25.0
    fault_rate: float = 0.05
    page_cache_mib: float = 16.0  # the SQLite page cache of Weir's store connection (sqlite_conn.py)
    fill_clients: int = 32
    fill_cap: float = 240.0  # seconds the page-cache fill may take at most
    settle: float = 30.0  # seconds of the measured phase left out of the memory fit and the first window
    window: float = 60.0
    max_inflight: int = 512
    # RSS growth per 1000 proxied requests after the warm-up. A leak of 300 bytes a request
    # is 300 KiB per 1000, about 2 MiB over a 5-minute run; steady memory fits within
    # tens of KiB either way (bench/RESULTS.md, "Soak").
    rss_per_k_limit: int = 128 * 1024
    p99_ratio: float = 1.5
    # A p99 of a few ms moves by several ms with the scheduling of a shared 2-core machine;
    # degradation (a queue or a leak) shows as tens of ms and more. Slack below this is noise.
    p99_slack: float = 0.010

    @property
    def fill_bytes(self) -> int:
        """How much the database grows during the fill: 1.25x the page cache."""
        return int(1.25 * self.page_cache_mib * MIB)

    def p99_limit(self, first: float) -> float:
        """The largest last-window p99 that still counts as holding in absolute terms:
        1.5x the first, or the first plus the slack, whichever is larger."""
        return max(self.p99_ratio * first, first + self.p99_slack)


@dataclass(slots=True)
class SoakReport:
    """Everything one run measured, and after `judge` its failures (empty: it passed)."""

    settings: SoakSettings
    fill_requests: int = 0
    fill_seconds: float = 0.0
    fill_growth: int = 0  # bytes the database grew during the fill
    rss_before_fill: int = 0
    rate: float = 0.0
    duration: float = 0.0
    rss: list[tuple[float, int]] = field(default_factory=list)
    db: list[tuple[float, int]] = field(default_factory=list)  # size of weir.db over time
    shots: list[Shot] = field(default_factory=list)
    direct: list[Shot] = field(default_factory=list)  # the baseline, straight to the mock
    shed: int = 0
    open_holds: int = -1
    rows: list[LogRow] = field(default_factory=list)
    audit_ok: bool = False
    audit_text: str = ""
    balance_delta: int = 0
    key_delta: int = 0
    charged: int = 0
    rss_per_k: float = 0.0  # bytes of RSS per 1000 proxied requests after the memory warm-up
    memory_warmup: float = 0.0
    p99_first: float = 0.0
    p99_last: float = 0.0
    direct_first: float = 0.0
    direct_last: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every criterion held (call `judge` first)."""
        return not self.failures

    def windows(self) -> tuple[float, tuple[float, float], tuple[float, float]]:
        """(settle end, first window, last window) in seconds since the measured phase began.
        Short smoke runs shrink them proportionally, so they still have two windows."""
        d = self.duration
        warm = min(self.settings.settle, d / 3)
        w = min(self.settings.window, (d - warm) / 2)
        return warm, (warm, warm + w), (d - w, d)

    def memory_warmup_end(self) -> float:
        """When the RSS fit starts: after the settle, and not before the database has grown
        by 1.25x SQLite's page cache since the fill began (a fill cut short by its time cap
        leaves the rest to the measured phase). Capped at half the run, so the fit always
        has samples and a slow plateau still fails."""
        warm = self.windows()[0]
        need = self.settings.fill_bytes - self.fill_growth
        base = self.db[0][1] if self.db else 0
        filled = next((t for t, size in self.db if size - base >= need), self.duration)
        return min(max(warm, filled), self.duration / 2)

    def summary(self) -> str:
        """A plain-text account of the run and its verdict."""
        rss = [r for _, r in self.rss]
        lines = [
            f"fill: {self.fill_requests} requests in {self.fill_seconds:.0f} s "
            f"({self.fill_requests / max(self.fill_seconds, 1e-9):.0f} req/s), database +{self.fill_growth / MIB:.1f} MiB, "
            f"RSS before {self.rss_before_fill / MIB:.1f} MiB",
            f"soak: {self.duration:.0f} s at {self.rate:g} req/s, {len(self.shots)} requests "
            f"(+{len(self.direct)} direct), seed {self.settings.seed}, shed {self.shed}",
            f"RSS: start {rss[0] / MIB:.1f} MiB, end {rss[-1] / MIB:.1f} MiB, max {max(rss) / MIB:.1f} MiB, "
            f"growth after {self.memory_warmup:.0f} s {self.rss_per_k / 1024:+.1f} KiB per 1000 requests"
            if rss
            else "RSS: no samples",
            f"p99 healthy latency, Weir (direct): first window {self.p99_first * 1000:.1f} ms "
            f"({self.direct_first * 1000:.1f}), last window {self.p99_last * 1000:.1f} ms ({self.direct_last * 1000:.1f})",
            f"open holds after settling: {self.open_holds}; audit {'clean' if self.audit_ok else 'FAILED'}",
            f"charged (consume log) {self.charged}, wallet change {self.balance_delta}, key change {self.key_delta}, "
            f"{len(self.rows)} log rows",
            "outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
            "verdict: PASS" if self.passed else "verdict: FAIL\n  " + "\n  ".join(self.failures),
        ]
        return "\n".join(lines)


def theil_sen(points: list[tuple[float, float]], most: int = 400) -> float:
    """The median of the slopes between every two points (of at most `most`, evenly
    spaced): a line's slope, which a one-time step in a quarter of the data or less does
    not move, unlike a least-squares fit. 0 for fewer than 2 points."""
    if len(points) > most:
        points = [points[i * len(points) // most] for i in range(most)]
    slopes = sorted(
        (y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1 :] if x2 != x1
    )
    if not slopes:
        return 0.0
    mid = len(slopes) // 2
    return slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2


def growth_per_k(rss: list[tuple[float, int]], starts: list[float], since: float) -> float:
    """RSS growth (bytes) per 1000 requests over the samples taken from `since` on, by
    `theil_sen`; a sample at time t is placed at the number of `starts` before t. A leak
    grows RSS with every request; a buffer or an allocator threshold set once is a step."""
    ordered = sorted(starts)
    return theil_sen([(bisect.bisect_right(ordered, t), b) for t, b in rss if t >= since]) * 1000


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
    return percentile(
        [s.latency for s in shots if s.kind in HEALTHY and s.outcome == "ok" and lo <= s.started < hi], 99
    )


def _latency_held(r: SoakReport) -> bool:
    """Weir's last-window p99 is no worse than its first, in absolute terms (within 1.5x or
    the slack) or relative to the direct baseline of the same windows (its ratio to the
    direct p99 within 1.5x of the first window's): a busy machine slows both paths."""
    s = r.settings
    if r.p99_last <= s.p99_limit(r.p99_first):
        return True
    if r.direct_first <= 0 or r.direct_last <= 0:
        return False
    return r.p99_last / r.direct_last <= s.p99_ratio * r.p99_first / r.direct_first


def _check_outcomes(r: SoakReport) -> None:
    bad = Counter(f"{s.kind.value}:{s.outcome}" for s in r.shots if s.outcome not in expected_outcomes(s.kind))
    if bad:
        example = next(s for s in r.shots if s.outcome not in expected_outcomes(s.kind))
        r.failures.append(
            f"unexpected outcomes {dict(bad)} (e.g. {example.kind.value}: {example.outcome} {example.detail})"
        )
    direct = Counter(s.outcome for s in r.direct if s.outcome != "ok")
    if direct:
        r.failures.append(f"direct baseline requests failed: {dict(direct)}")
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
    r.rss_per_k = growth_per_k(r.rss, [x.started for x in r.shots], r.memory_warmup)
    r.p99_first, r.p99_last = _p99(r.shots, *first), _p99(r.shots, *last)
    r.direct_first, r.direct_last = _p99(r.direct, *first), _p99(r.direct, *last)
    r.failures = []
    if r.rss_per_k >= s.rss_per_k_limit:
        r.failures.append(
            f"RSS grew {r.rss_per_k / 1024:.1f} KiB per 1000 requests after {r.memory_warmup:.0f} s"
            f" (limit {s.rss_per_k_limit / 1024:g})"
        )
    if not _latency_held(r):
        r.failures.append(
            f"p99 latency degraded: last window {r.p99_last * 1000:.1f} ms (direct {r.direct_last * 1000:.1f} ms)"
            f" > {s.p99_ratio} x first {r.p99_first * 1000:.1f} ms (direct {r.direct_first * 1000:.1f} ms),"
            f" > first + {s.p99_slack * 1000:g} ms, and > {s.p99_ratio} x first relative to direct"
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
        (
            f"fill ({r.settings.fill_clients} clients, closed loop, the same mix)",
            f"{r.fill_requests} requests in {r.fill_seconds:.0f} s, database +{r.fill_growth / MIB:.1f} MiB, "
            f"RSS of weir serve before it {r.rss_before_fill / MIB:.1f} MiB",
        ),
        (
            "measured phase",
            f"{r.duration:.0f} s, {len(r.shots)} requests (+{len(r.direct)} direct), seed {r.settings.seed}",
        ),
        ("offered rate (fixed, open loop)", f"{r.rate:g} req/s, {r.settings.fault_rate:.0%} faults, shed {r.shed}"),
        (
            "RSS of weir serve",
            f"{rss[0] / MIB:.1f} → {rss[-1] / MIB:.1f} MiB (max {max(rss) / MIB:.1f})" if rss else "—",
        ),
        (
            f"RSS growth per 1000 requests (median of pairwise slopes) from {r.memory_warmup:.0f} s (< {r.settings.rss_per_k_limit / 1024:g} KiB)",
            f"{r.rss_per_k / 1024:+.1f} KiB",
        ),
        (
            f"p99 healthy latency, Weir (direct), {first[0]:.0f}–{first[1]:.0f} s",
            f"{r.p99_first * 1000:.1f} ms ({r.direct_first * 1000:.1f} ms)",
        ),
        (
            f"p99 healthy latency, Weir (direct), {last[0]:.0f}–{last[1]:.0f} s (≤ {r.settings.p99_ratio}× first, "
            f"or first + {r.settings.p99_slack * 1000:g} ms, or {r.settings.p99_ratio}× first relative to direct)",
            f"{r.p99_last * 1000:.1f} ms ({r.direct_last * 1000:.1f} ms)",
        ),
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


def write_results(r: SoakReport, command: str, path: Path = RESULTS, label: str = "") -> None:
    """Append (or replace, for the same heading) this run's `## Soak` section; other text is
    kept. `label` tells runs of one day apart in the heading (e.g. "CPU hog")."""
    extra = f", {label}" if label else ""
    heading = f"Soak {time.strftime('%Y-%m-%d')} ({r.settings.minutes:g} min, {r.rate:g} req/s, seed {r.settings.seed}{extra})"
    begin, end = f"<!-- soak:begin {heading} -->", f"<!-- soak:end {heading} -->"
    block = f"{begin}\n## {heading}\n\n{markdown(r, command).rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Weir benchmark results\n\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
