"""The soak (issue 5, item 7; issue 14, item 8): a real `weir serve` with billing on SQLite,
driven for minutes at a fixed 25 requests/s with 5% injected faults beside a direct
baseline, must not leak, slow down, strand a hold or lose a unit of quota.

It runs in `make soak` (CI runs it after `make test`): `WEIR_SOAK_MINUTES` sets the measured
phase (`make soak` sets 5; unset or 0 here means skip, so `make test` stays short);
`WEIR_SEED` sets the request mix. The judge's own tests below run in `make test`.
The same run from the command line, longer: `python -m bench.soak --minutes 30`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from bench.soak import run_soak
from bench.soak_report import MIB, SoakReport, SoakSettings, expected_charge, growth_per_k, judge
from bench.soak_traffic import FAULTS, HEALTHY, Kind, Shot
from plugins.billing.store.base import LogDetails, LogRow


@pytest.mark.slow
@pytest.mark.soak
def test_soak_fixed_rate_with_faults_keeps_memory_latency_and_books(tmp_path: Path) -> None:
    """What it proves, in terms that hold on a busy 2-vCPU machine: at a fixed 25 requests/s
    (a few percent of a core for Weir) with 5% faults, after SQLite's page cache is filled,
    Weir's RSS grows less than 128 KiB per 1000 requests; its p99 in the last minute is no
    worse than in the first, absolutely or relative to direct requests to the same mock
    in the same minutes; every request ends as its kind should; no hold is left open and
    the books are exact to the unit."""
    minutes = float(os.environ.get("WEIR_SOAK_MINUTES", "0"))
    if minutes <= 0:
        pytest.skip("the soak runs in `make soak` (WEIR_SOAK_MINUTES=5)")
    seed = int(os.environ.get("WEIR_SEED", "1"))
    report = run_soak(SoakSettings(minutes=minutes, seed=seed), tmp_path)
    print(report.summary())
    # The criteria, one by one, so a failure names the broken property; `failures` also
    # covers the per-request checks (each kind ended as it should and was billed as it should).
    s = report.settings
    assert len(report.shots) >= s.rate * minutes * 60 * 0.95, report.summary()
    assert len(report.direct) >= s.rate * minutes * 60 * 0.95, report.summary()
    assert report.rss_per_k < s.rss_per_k_limit, report.summary()
    assert not any("p99" in f for f in report.failures), report.summary()
    assert report.open_holds == 0, report.summary()
    assert report.audit_ok, report.audit_text
    assert report.charged == report.balance_delta == report.key_delta, report.summary()
    assert report.charged > 0
    seen = {x.kind for x in report.shots}
    assert seen >= set(HEALTHY) | set(FAULTS), f"kinds never drawn: {set(HEALTHY) | set(FAULTS) - seen}"
    assert report.passed, report.summary()


# The judge itself, on synthetic runs: each criterion must be able to fail.

RATE, SECONDS = 25, 300


def _run(**changes: object) -> SoakReport:
    """A judged synthetic 5-minute run at 25 req/s that passes unless `changes` break it:
    flat RSS with 64 KiB of jitter, a filled page cache, 10 ms through Weir and 4 ms direct."""
    n = RATE * SECONDS
    usage = {"prompt_tokens": 4, "completion_tokens": 5}
    shots = [Shot(Kind.OK_JSON, i / RATE, 0.010, "ok", f"r{i}", usage) for i in range(n)]
    direct = [Shot(Kind.OK_JSON, (i + 0.5) / RATE, 0.004, "ok") for i in range(n)]
    jitter = random.Random(3)
    report = SoakReport(
        SoakSettings(),
        fill_requests=30_000,
        fill_seconds=60.0,
        fill_growth=21 * MIB,
        rate=RATE,
        duration=SECONDS,
        rss=[(float(t), 170 * MIB + jitter.randrange(64 * 1024)) for t in range(SECONDS)],
        db=[(float(t), t * 15_000) for t in range(SECONDS)],
        shots=shots,
        direct=direct,
        shed=0,
        open_holds=0,
        rows=[_row(f"r{i}", 7) for i in range(n)],
        audit_ok=True,
        balance_delta=7 * n,
        key_delta=7 * n,
    )
    for name, value in changes.items():
        setattr(report, name, value)
    judge(report)
    return report


def _row(request_id: str, charge: int) -> LogRow:
    details = LogDetails(end_reason="completed", usage_source="upstream")
    return LogRow(0, 0.0, request_id, "soak", "k", "wallet", charge, charge, 0, "pv", details)


def _slowed(shots: list[Shot], since: float, every: int, latency: float) -> list[Shot]:
    """`shots` with every `every`-th one started from `since` on taking `latency`."""
    for i, shot in enumerate(shots):
        if shot.started >= since and i % every == 0:
            shot.latency = latency
    return shots


def test_judge_passes_a_clean_run_and_prices_usage_independently() -> None:
    assert expected_charge({"prompt_tokens": 4, "completion_tokens": 5}) == 7  # (4 + 2·5) / 2
    assert expected_charge({"prompt_tokens": 1, "completion_tokens": 0}) == 1  # 0.5 rounds half up
    assert expected_charge({"prompt_tokens": 0, "completion_tokens": 0}) == 0
    report = _run()
    assert report.passed, report.failures
    assert abs(report.rss_per_k) < 4 * 1024  # 64 KiB of jitter over 6750 requests
    assert report.memory_warmup == 30.0


def test_judge_fails_a_leak_of_300_bytes_a_request_but_not_a_one_time_step() -> None:
    leak = [(float(t), 170 * MIB + 300 * RATE * t) for t in range(SECONDS)]  # ~2 MiB over the run
    report = _run(rss=leak)
    assert any("RSS grew" in f for f in report.failures), report.failures
    assert report.rss_per_k == pytest.approx(300_000, rel=0.01)
    # The same leak as the heap grows it, in steps of 128 KiB.
    stairs = [(float(t), 170 * MIB + (300 * RATE * t) // (128 * 1024) * 128 * 1024) for t in range(SECONDS)]
    assert any("RSS grew" in f for f in _run(rss=stairs).failures)
    # Growth that stops within the settle (the fill's buffers, the last pages of the cache) is not a leak.
    settle = [(float(t), 170 * MIB + min(t, 25) * 200_000) for t in range(SECONDS)]
    assert _run(rss=settle).passed
    # Nor is one step of 1 MiB later on (an allocator threshold, a buffer pool's high-water
    # mark), which a least-squares fit would count as 145 KiB per 1000 requests.
    step = [(float(t), 170 * MIB + (MIB if t >= 84 else 0)) for t in range(SECONDS)]
    assert _run(rss=step).passed


def test_growth_is_measured_per_request_started() -> None:
    # 2 MiB over 1000 requests started in the first half, none in the second: the growth
    # followed the requests, so it counts per request, not per minute.
    starts = [t / 10 for t in range(1000)]
    rss = [(float(t), 100 * MIB + min(t, 100) * 20_000) for t in range(200)]
    assert growth_per_k(rss, starts, 0.0) == pytest.approx(2_000_000, rel=0.05)


def test_memory_warmup_waits_for_the_page_cache_when_the_fill_stopped_short() -> None:
    # The fill grew the database by 11 MiB of the 20 MiB it needs; the measured phase grows
    # it by 15 kB/s, so the rest takes ~630 s: the fit starts at half the run, not before.
    assert _run(fill_growth=11 * MIB).memory_warmup == 150.0
    db = [(float(t), t * 100_000) for t in range(SECONDS)]  # 100 kB/s: the rest by ~95 s
    assert 90 < _run(fill_growth=11 * MIB, db=db).memory_warmup < 100


def test_judge_fails_weir_slowing_down_but_not_the_machine() -> None:
    # 3% of the last minute's requests take 0.5 s through Weir: p99 10 ms → 500 ms.
    weir_only = _run(shots=_slowed(_run().shots, 240.0, 33, 0.5))
    assert any("p99 latency degraded" in f for f in weir_only.failures), weir_only.failures
    # The whole machine slowed: direct requests took 0.3 s just as often; Weir's ratio held.
    machine = _run(shots=_slowed(_run().shots, 240.0, 33, 0.5), direct=_slowed(_run().direct, 240.0, 33, 0.3))
    assert machine.passed, machine.failures
    # A last-window p99 twice the first but within the absolute slack is machine jitter.
    assert SoakSettings().p99_limit(0.008) == pytest.approx(0.018)
    assert SoakSettings().p99_limit(0.100) == pytest.approx(0.150)


def test_judge_fails_an_open_hold_drift_a_wrong_charge_and_a_wrong_outcome() -> None:
    n = RATE * SECONDS
    assert any("still open" in f for f in _run(open_holds=1).failures)
    assert any("money drift" in f for f in _run(balance_delta=7 * n + 1).failures)
    assert any("charged other than its usage" in f for f in _run(rows=[_row(f"r{i}", 8) for i in range(n)]).failures)
    broken = _run().shots
    broken[0].outcome = "http_502"
    assert any("unexpected outcomes" in f for f in _run(shots=broken).failures)
    baseline = _run().direct
    baseline[0].outcome = "client_error"
    assert any("direct baseline" in f for f in _run(direct=baseline).failures)
    assert any("shed" in f for f in _run(shed=3).failures)
