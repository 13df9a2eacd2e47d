"""Smoke test of the benchmark: a tiny interleaved run of direct vs weir, real processes.

It proves the report works end to end (mocks, `weir serve`, the load generator worker, the
table) and that every subprocess is gone afterwards. The figures themselves are not judged:
a run this small on a shared machine says nothing about speed.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from bench.loadgen import percentile
from bench.report import FULL, QUICK, Measured, main, plugin_rows, render, run, settings_for, write_results
from bench.targets import known_targets

SMOKE = replace(
    FULL,
    label="smoke",
    rounds=2,
    latency_requests=20,
    ttfb_requests=10,
    throughput_clients=4,
    throughput_seconds=0.1,
    cpu_streams=3,
    stream_events=50,
    paced_streams=6,
    paced_events=5,
    paced_runs=1,
    pace=0.01,
    idle_seconds=0.1,
    slices=3,
)


def _live_children() -> list[int]:
    """Pids of this process's children that have not exited (zombies count as exited)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def test_tiny_report_measures_both_targets_and_cleans_up(tmp_path: Path) -> None:
    before = set(_live_children())
    targets = known_targets()
    measured = run([targets["direct"], targets["weir"]], SMOKE, tmp_path)
    assert set(_live_children()) <= before, "a benchmark subprocess outlived the run"

    by_name: dict[str, Measured] = {m.name: m for m in measured}
    for m in by_name.values():
        assert m.errors == []
        assert len(m.latencies) == SMOKE.rounds * SMOKE.latency_requests
        assert len(m.ttfbs) == SMOKE.rounds * SMOKE.ttfb_requests
        assert 0 < percentile(m.latencies, 50) < 1.0
        assert m.paced is not None
        # role chunk + content events + finish chunk + [DONE], for every stream. Stalls are
        # not asserted: a 200 ms gap is a property of the machine's load, not of the code.
        assert m.paced.ok == SMOKE.paced_streams
        assert m.paced.events == SMOKE.paced_streams * (SMOKE.paced_events + 3)
        assert m.paced.incomplete == 0
        assert 0 < m.paced.max_gap < 5.0
        assert m.short_events == SMOKE.paced_streams * 4  # cut to one content event
    weir = by_name["weir"]
    assert weir.events == SMOKE.rounds * SMOKE.cpu_streams * (SMOKE.stream_events + 3)
    assert weir.rss is not None and 10 * 2**20 < weir.rss < 1024 * 2**20

    text = render(measured, SMOKE, "smoke")
    table = [line for line in text.splitlines() if line.startswith("| ") and "| weir |" in line]
    assert len(table) == 10
    assert any(line.startswith("| added latency, non-stream, 1 client, p50 | ≤ 1.0 ms | weir |") for line in table)
    assert any(line.startswith("| idle RSS") and " MB |" in line for line in table)


def test_write_results_replaces_its_own_section_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nHand-written analysis.\n")
    write_results("first table", "2030-01-01 (quick, direct,weir)", path)
    write_results("other table", "2030-01-02 (quick, direct,weir)", path)
    write_results("second table", "2030-01-01 (quick, direct,weir)", path)
    text = path.read_text()
    assert "Hand-written analysis." in text
    assert "first table" not in text
    assert text.count("second table") == 1 and text.count("other table") == 1
    assert text.index("second table") < text.index("other table")


def _measured(name: str, p50_ms: float, rps: float) -> Measured:
    m = Measured(name)
    m.latencies = [p50_ms / 1000] * 5
    m.throughputs = [rps] * 3
    return m


def test_plugin_rows_judge_added_p50_and_throughput_kept_against_weir_without_plugins() -> None:
    base = _measured("weir", 0.600, 4000)
    good = render([_measured("direct", 0.2, 9000), base, _measured("weir+billing-sqlite", 1.05, 3100)], SMOKE, "x")
    bad = render([_measured("direct", 0.2, 9000), base, _measured("weir+billing-redis", 1.15, 2900)], SMOKE, "x")
    [p50, kept] = [line for line in good.splitlines() if line.startswith("| ") and "| weir+billing-sqlite |" in line][
        -2:
    ]
    assert p50.startswith("| added latency over no plugins, non-stream, 1 client, p50 | ≤ 0.5 ms |")
    assert "| 0.600 ms | 1.050 ms | +0.450 ms |" in p50 and p50.endswith("| yes |")
    assert "| 4000 req/s | 3100 req/s | -900 req/s | 0.78× (rounds 0.78–0.78) | yes |" in kept
    rows = [line for line in bad.splitlines() if "| weir+billing-redis |" in line][-2:]
    assert all(line.endswith("| **NO** |") for line in rows), rows
    assert "| weir |" in good.split("Plugins over Weir with no plugins")[1].splitlines()[2]  # the baseline column


def test_rounds_and_focus_come_from_the_command_line() -> None:
    s = settings_for(False, "requests", 24)
    assert (s.rounds, s.cpu_streams, s.paced_runs, s.label) == (24, 0, 0, "full, requests only")
    q = settings_for(True, "all", 2)
    assert (q.rounds, q.paced_runs, q.cpu_streams) == (2, QUICK.paced_runs, QUICK.cpu_streams)
    assert settings_for(False) == FULL
    with pytest.raises(SystemExit) as caught:
        main(["--rounds", "0"])
    assert caught.value.code == 2


def test_throughput_kept_shows_the_spread_of_paired_rounds() -> None:
    base = Measured("weir", latencies=[0.001] * 3, throughputs=[2000.0, 1800.0, 1900.0])
    billed = Measured("weir+billing-sqlite", latencies=[0.0013] * 3, throughputs=[1500.0, 1440.0, 1235.0])
    latency, kept = plugin_rows(base, billed, FULL)
    # 1440 / 1900 = 0.76 from the medians; round by round 0.75, 0.80 and 0.65.
    assert kept.ratio == "0.76× (rounds 0.65–0.80)" and kept.met == "yes"
    assert latency.diff == "+0.300 ms" and latency.met == "yes"
