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

from bench.litellm_target import litellm_config, litellm_target
from bench.loadgen import percentile
from bench.report import FULL, QUICK, Measured, main, plugin_rows, render, run, settings_for, write_results
from bench.targets import known_targets
from bench.upstreams import Upstreams
from bench.versus import Case, Tally, Versus, VersusSettings, cases, run_versus
from bench.versus_render import goals, render_versus

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


TINY_VERSUS = VersusSettings(label="smoke", rounds=1, seconds=0.1, chunks=10, clients=(1, 3), idle_seconds=0.1)


def test_versus_without_the_litellm_venv_skips_litellm_and_still_measures_weir(tmp_path: Path) -> None:
    before = set(_live_children())
    absent = litellm_target(tmp_path / "no-venv")
    v = run_versus([known_targets()["direct"], absent, known_targets()["weir"]], TINY_VERSUS, tmp_path)
    assert set(_live_children()) <= before, "a benchmark subprocess outlived the run"
    assert "make bench-litellm-venv" in v.skipped["litellm"]
    assert v.errors == {}
    weir = v.tally("weir", Case(stream=True, clients=3))
    assert weir is not None and weir.median_rps() > 0 and weir.requests > 0 and weir.cpu_per_request() > 0

    text = render_versus(v, "smoke")
    assert "**skipped (litellm):** no LiteLLM virtualenv at" in text
    rps_row, cpu_row = [line for line in text.splitlines() if line.startswith("| stream, 10 chunks | 3 |")]
    # direct, LiteLLM, Weir, ratio; then LiteLLM, Weir, ratio: no LiteLLM, so no ratio.
    assert rps_row.split(" | ")[3:] == ["skipped", rps_row.split(" | ")[4], "— |"]
    assert cpu_row.split(" | ")[2] == "skipped" and cpu_row.endswith("| — |")
    assert "| not measured | — |" in text  # the goals against LiteLLM get no verdict
    assert "nan" not in text


def _tally(rps: float, cpu_ms: float, p50_ms: float) -> Tally:
    return Tally(rps=[rps, rps], cpu=cpu_ms / 1000 * 100, requests=100, latencies=[p50_ms / 1000] * 3)


def test_versus_goals_compare_litellm_with_weir_billing_on_sqlite() -> None:
    s = VersusSettings()
    figures = {  # (rps, CPU ms per request, p50 ms), the same in every case
        "direct": (5000.0, 0.0, 0.25),
        "litellm": (40.0, 20.0, 9.0),
        "weir+billing-sqlite": (1000.0, 0.4, 0.95),
    }
    v = Versus(s, list(figures))
    for name, (rps, cpu, p50) in figures.items():
        v.tallies[name] = {c: _tally(rps, cpu, p50) for c in cases(s)}
    verdicts = {g.text.split(":")[0]: (g.shown(), g.verdict()) for g in goals(v)}
    # LiteLLM 20 ms / 0.4 ms = 50×: above 40× (non-stream), below 60× (streams).
    assert verdicts["CPU per request, non-stream, 1 client"] == ("50.0×", "yes")
    assert verdicts["CPU per request, stream, 100 chunks, 32 clients"] == ("50.0×", "**NO**")
    assert verdicts["throughput, non-stream, 32 clients"] == ("25.0×", "**NO**")
    assert verdicts["p50 added over direct, non-stream, 1 client, Weir + billing (SQLite) ≤ 0.8 ms"] == (
        "+0.700 ms",
        "yes",
    )
    text = render_versus(v, "x")
    assert "| non-stream | 32 | 5000.0 | 40.0 | 1000.0 | 25.0× |" in text
    assert "| stream, 100 chunks | 1 | 20.00 ms | 0.40 ms | 50.0× |" in text


def test_litellm_config_points_both_bench_models_at_their_mocks() -> None:
    up = Upstreams("http://127.0.0.1:1", "http://127.0.0.1:2", 0, 0, 64, 0.02)
    config = litellm_config(up, "sk-test")
    assert config["general_settings"] == {"master_key": "sk-test"}
    params = {m["model_name"]: m["litellm_params"] for m in config["model_list"]}
    assert params["instant-bench"]["model"] == "openai/instant-bench"
    assert params["instant-bench"]["api_base"] == "http://127.0.0.1:1/v1"
    assert params["paced-bench"]["api_base"] == "http://127.0.0.1:2/v1"
