"""`python -m bench.report [--quick] [--write] [--targets direct,weir] [--focus all|requests|versus]`: the benchmark report.

One interleaved run: every measure is taken in rounds that alternate the targets (direct,
weir, ... then the reverse order in the next round), so machine noise lands on all of them.
The mocks, each target and the load generator are separate processes on 127.0.0.1; all of
them are stopped when the run ends, also on an error or Ctrl-C.

`--focus versus` runs the comparison with LiteLLM instead (bench/versus.py).

The markdown table goes to stdout; `--write` also replaces (or appends) this run's dated
section in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from bench.loadgen import Job, LoadgenWorker, Result, percentile
from bench.targets import (
    INSTANT_MODEL,
    PACED_MODEL,
    Running,
    Target,
    cpu_seconds,
    idle_cpu_rate,
    known_targets,
    launch_all,
    rss_bytes,
)
from bench.upstreams import start_upstreams
from bench.versus import VERSUS_TARGETS, VersusSettings, run_versus
from bench.versus_render import render_versus

__all__ = [
    "FULL",
    "QUICK",
    "Measured",
    "Row",
    "Settings",
    "main",
    "plugin_rows",
    "render",
    "run",
    "settings_for",
    "write_results",
]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass(frozen=True, slots=True)
class Settings:
    """How much to measure. Counts are per target and per round unless said otherwise."""

    label: str = "full"
    rounds: int = 8
    latency_requests: int = 400
    ttfb_requests: int = 300
    throughput_clients: int = 32
    throughput_seconds: float = 2.0
    cpu_streams: int = 40
    cpu_clients: int = 4
    stream_events: int = 2000
    short_tokens: int = 16
    paced_streams: int = 256
    paced_runs: int = 3
    paced_events: int = 64
    pace: float = 0.02
    stall_after: float = 0.2
    idle_seconds: float = 2.0
    slices: int = 8


FULL = Settings()
QUICK = replace(
    FULL,
    label="quick",
    rounds=3,
    latency_requests=200,
    ttfb_requests=150,
    throughput_seconds=1.0,
    cpu_streams=20,
    paced_runs=1,
    slices=4,
)


@dataclass(slots=True)
class Measured:
    """Everything measured for one target over the whole run."""

    name: str
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)
    request_cpu: float = 0.0
    requests: int = 0
    stream_cpu: float = 0.0
    events: int = 0
    paced: Result | None = None
    paced_cpu: float = 0.0
    short_cpu: float = 0.0
    short_events: int = 0
    rss: int | None = None
    idle_cpu_rate: float = 0.0
    errors: list[str] = field(default_factory=list)
    skipped: str = ""

    def add(self, result: Result) -> Result:
        """Keep a job's error summary (errors never pass silently into the figures)."""
        if result.errors:
            self.errors.append(f"{result.errors} failed: {result.first_error}")
        return result


class _Runner:
    """Runs jobs on the shared load generator, charging the target's process CPU to each."""

    def __init__(self, worker: LoadgenWorker, s: Settings, paced_mock_pid: int) -> None:
        self.worker = worker
        self.s = s
        # For the direct target the paced mock's own CPU is the reference: a bare aiohttp
        # server writing one event per write, half of what a proxy does per event.
        self.paced_mock_pid = paced_mock_pid

    def job(self, t: Running, paced: bool = False, **kw: Any) -> Job:
        """A job against `t` with its headers; `kw` sets the other `Job` fields."""
        base = Job(url=t.endpoint(paced), model=PACED_MODEL if paced else INSTANT_MODEL, headers=t.headers)
        return replace(base, **kw)

    def timed(self, pid: int | None, job: Job) -> tuple[Result, float, float]:
        """Run `job`; return its result, the CPU seconds process `pid` used and the wall time."""
        cpu0 = cpu_seconds(pid) if pid else 0.0
        w0 = time.perf_counter()
        result = self.worker.run(job)
        wall = time.perf_counter() - w0
        cpu1 = cpu_seconds(pid) if pid else 0.0
        return result, cpu1 - cpu0, wall

    def latency(self, t: Running, m: Measured, n: int) -> None:
        """`n` non-stream requests, one client: latency samples and CPU per request."""
        job = self.job(t, clients=1, requests=n, max_tokens=self.s.short_tokens)
        r, cpu, wall = self.timed(t.pid, job)
        m.add(r)
        m.latencies += r.latencies
        m.request_cpu += max(0.0, cpu - m.idle_cpu_rate * wall)
        m.requests += r.ok + job.warmup

    def ttfb(self, t: Running, m: Measured, n: int) -> None:
        """`n` short streams, one client: time to first body byte."""
        job = self.job(t, stream=True, clients=1, requests=n, max_tokens=self.s.short_tokens)
        m.ttfbs += m.add(self.worker.run(job)).ttfbs

    def throughput(self, t: Running, m: Measured) -> None:
        """Non-stream requests from many clients for a fixed time."""
        s = self.s
        job = self.job(t, clients=s.throughput_clients, duration=s.throughput_seconds, max_tokens=s.short_tokens)
        m.throughputs.append(m.add(self.worker.run(job)).throughput)

    def cpu(self, t: Running, m: Measured) -> None:
        """Long instant streams: the target's CPU per relayed event (idle CPU subtracted)."""
        if not t.pid:
            return
        job = self.job(t, stream=True, clients=self.s.cpu_clients, requests=self.s.cpu_streams, warmup=0)
        r, cpu, wall = self.timed(t.pid, job)
        m.add(r)
        m.stream_cpu += max(0.0, cpu - m.idle_cpu_rate * wall)
        m.events += r.events

    def paced(self, t: Running, m: Measured) -> None:
        """Many concurrent paced streams at once: stalls, gaps, completeness, CPU per event."""
        s = self.s
        job = self.job(
            t,
            paced=True,
            stream=True,
            clients=s.paced_streams,
            requests=s.paced_streams,
            warmup=0,
            stall_after=s.stall_after,
            timeout=s.paced_events * s.pace * 4 + 30,
        )
        pid = t.pid or self.paced_mock_pid
        r, cpu, wall = self.timed(pid, job)
        m.add(r)
        m.paced_cpu += max(0.0, cpu - m.idle_cpu_rate * wall)
        m.paced = r if m.paced is None else m.paced.merged(r)
        # The same streams cut to one content event: what a stream costs besides its events,
        # so the difference gives the marginal CPU of one more relayed event.
        short, cpu, wall = self.timed(pid, replace(job, max_tokens=1))
        m.add(short)
        m.short_cpu += max(0.0, cpu - m.idle_cpu_rate * wall)
        m.short_events += short.events


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the report table (cells already formatted)."""

    measure: str
    goal: str
    target: str
    direct: str
    value: str
    diff: str = "—"
    ratio: str = "—"
    met: str = "—"


def _met(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def _latency_row(measure: str, goal_ms: float, name: str, direct: float, value: float) -> Row:
    """A row comparing two times; the goal bounds the time added over direct."""
    added = (value - direct) * 1000
    return Row(
        measure,
        f"≤ {goal_ms} ms",
        name,
        f"{direct * 1000:.3f} ms",
        f"{value * 1000:.3f} ms",
        f"{added:+.3f} ms",
        f"{value / direct:.2f}×" if direct > 0 else "—",
        _met(added <= goal_ms),
    )


def _cpu_row(measure: str, name: str, cpu: float, events: int) -> Row:
    """CPU seconds over events, in µs; no verdict when the CPU clock (10 ms ticks) is too coarse."""
    per_event = cpu / events * 1e6 if events else float("nan")
    enough = cpu >= 0.2
    met = _met(per_event <= 20) if enough else "— (too little CPU to time)"
    return Row(measure, "≤ 20 µs", name, "—", f"{per_event:.1f} µs ({cpu:.2f} s / {events} events)", met=met)


def _marginal(m: Measured) -> tuple[float, float, int]:
    """(CPU seconds, events) of the long paced runs minus the one-event runs, and streams run."""
    long_events = m.paced.events if m.paced else 0
    streams = m.paced.ok if m.paced else 0
    return m.paced_cpu - m.short_cpu, float(long_events - m.short_events), streams


def _marginal_row(d: Measured, m: Measured) -> Row:
    cpu, events, streams = _marginal(m)
    row = _cpu_row(
        "proxy CPU per relayed SSE event, paced, marginal (long minus one-event streams)", m.name, cpu, int(events)
    )
    fixed = m.short_cpu / streams * 1e6 if streams else float("nan")
    row = replace(row, value=row.value + f"; fixed cost per stream {fixed:.0f} µs")
    dcpu, devents, _ = _marginal(d)
    return replace(row, direct=f"paced mock itself: {dcpu / devents * 1e6:.1f} µs") if devents > 0 else row


def _paced_cell(r: Result | None, streams: int) -> str:
    if r is None:
        return "not run"
    per = r.events / r.ok if r.ok else 0
    return (
        f"{r.ok}/{streams} complete ({per:.0f} events each), max gap {r.max_gap * 1000:.0f} ms, "
        f"{r.stalls} stalled, {r.incomplete + r.errors} broken"
    )


def _paced_row(d: Measured, m: Measured, s: Settings) -> Row:
    r, want = m.paced, s.paced_streams * min(s.paced_runs, s.rounds)
    clean = r is not None and r.ok == want and r.stalls == 0 and r.incomplete == 0 and r.errors == 0
    met = _met(clean) if s.paced_streams >= 256 else f"— (only {s.paced_streams} streams)"
    measure = (
        f"{s.paced_streams} concurrent paced streams ({s.paced_events} content events {s.pace * 1000:g} ms apart; "
        f"stall = gap > {s.stall_after * 1000:g} ms), {min(s.paced_runs, s.rounds)} run(s)"
    )
    return Row(measure, "≥ 256, no stalled frame", m.name, _paced_cell(d.paced, want), _paced_cell(r, want), met=met)


def rows_for(d: Measured, m: Measured, s: Settings) -> list[Row]:
    """The table rows comparing target `m` with the direct baseline `d`."""
    rows = [
        _latency_row(
            f"added latency, non-stream, 1 client, p{q}",
            goal,
            m.name,
            percentile(d.latencies, q),
            percentile(m.latencies, q),
        )
        for q, goal in ((50, 1.0), (99, 2.5))
    ]
    rows.append(
        _latency_row(
            "added time to first byte, stream, 1 client, p50",
            1.2,
            m.name,
            percentile(d.ttfbs, 50),
            percentile(m.ttfbs, 50),
        )
    )
    if s.cpu_streams:
        rows.append(
            _cpu_row(
                f"proxy CPU per relayed SSE event, bulk ({s.stream_events}-event streams)",
                m.name,
                m.stream_cpu,
                m.events,
            )
        )
    if s.paced_runs:
        rows.append(
            _cpu_row(
                f"proxy CPU per relayed SSE event, paced ({s.paced_events + 3}-event streams, one event per read)",
                m.name,
                m.paced_cpu,
                m.paced.events if m.paced else 0,
            )
        )
        if d.paced and d.paced.events:
            mock = f"paced mock itself: {d.paced_cpu / d.paced.events * 1e6:.1f} µs"
            rows[-1] = replace(rows[-1], direct=mock)
        rows.append(_marginal_row(d, m))
    per_req = m.request_cpu / m.requests * 1e6 if m.requests else float("nan")
    rows.append(Row("proxy CPU per non-stream request (1 client)", "(info)", m.name, "—", f"{per_req:.0f} µs"))
    if s.paced_runs:
        rows.append(_paced_row(d, m, s))
    rss = (m.rss or 0) / 2**20
    rows.append(
        Row(
            "idle RSS (after start-up and one request)",
            "≤ 60 MB",
            m.name,
            f"mock process: {(d.rss or 0) / 2**20:.1f} MB",
            f"{rss:.1f} MB",
            met=_met(rss <= 60),
        )
    )
    a, b = percentile(d.throughputs, 50), percentile(m.throughputs, 50)
    rows.append(
        Row(
            f"throughput, non-stream, {s.throughput_clients} clients (median of rounds)",
            "(info)",
            m.name,
            f"{a:.0f} req/s",
            f"{b:.0f} req/s",
            f"{b - a:+.0f} req/s",
            f"{b / a:.2f}×" if a else "—",
        )
    )
    return rows


def plugin_rows(base: Measured, m: Measured, s: Settings) -> list[Row]:
    """What a target's plugins cost over `base` (Weir with no plugins) in the same run:
    added 1-client p50 (goal ≤ 0.5 ms) and the share of throughput kept (goal ≥ 0.75×)."""
    b50, m50 = percentile(base.latencies, 50), percentile(m.latencies, 50)
    added = (m50 - b50) * 1000
    a, b = percentile(base.throughputs, 50), percentile(m.throughputs, 50)
    kept = b / a if a else float("nan")
    # Each round measured both targets back to back: the spread of those paired ratios
    # says how far one run's verdict can be trusted on a noisy machine.
    paired = [y / x for x, y in zip(base.throughputs, m.throughputs) if x > 0]
    spread = f" (rounds {min(paired):.2f}–{max(paired):.2f})" if len(paired) > 1 else ""
    return [
        Row(
            "added latency over no plugins, non-stream, 1 client, p50",
            "≤ 0.5 ms",
            m.name,
            f"{b50 * 1000:.3f} ms",
            f"{m50 * 1000:.3f} ms",
            f"{added:+.3f} ms",
            f"{m50 / b50:.2f}×" if b50 > 0 else "—",
            _met(added <= 0.5),
        ),
        Row(
            f"throughput kept, non-stream, {s.throughput_clients} clients (median of rounds)",
            "≥ 0.75×",
            m.name,
            f"{a:.0f} req/s",
            f"{b:.0f} req/s",
            f"{b - a:+.0f} req/s",
            f"{kept:.2f}×{spread}",
            _met(kept >= 0.75),
        ),
    ]


def render_rows(rows: Sequence[Row], baseline: str = "direct") -> str:
    """The rows as a markdown table; `baseline` names the reference column."""
    head = (
        f"| measure | goal | target | {baseline} | target value | target − {baseline} | "
        f"target / {baseline} | goal met |"
    )
    out = [head, "|" + "---|" * 8]
    for r in rows:
        out.append(f"| {r.measure} | {r.goal} | {r.target} | {r.direct} | {r.value} | {r.diff} | {r.ratio} | {r.met} |")
    return "\n".join(out)


def _interleaved(runner: _Runner, running: list[Running], measured: list[Measured], rounds: int) -> None:
    """Each measure, target after target; the order flips every round."""
    s = runner.s
    pairs = list(zip(running, measured))
    for i in range(rounds):
        # 1-client samples come in small slices, alternating targets, so a burst of noise
        # from elsewhere on the machine hits every target rather than one block of samples.
        for j in range(s.slices):
            for t, m in pairs if (i + j) % 2 == 0 else pairs[::-1]:
                runner.latency(t, m, _share(s.latency_requests, s.slices, j))
                runner.ttfb(t, m, _share(s.ttfb_requests, s.slices, j))
        steps = (
            [runner.throughput] + ([runner.cpu] if s.cpu_streams else []) + ([runner.paced] if i < s.paced_runs else [])
        )
        for step in steps:
            for t, m in pairs if i % 2 == 0 else pairs[::-1]:
                step(t, m)
        print(f"  round {i + 1}/{rounds} done", file=sys.stderr, flush=True)


def _share(total: int, parts: int, index: int) -> int:
    """The size of part `index` when `total` is split into `parts` near-equal parts."""
    return total // parts + (1 if index < total % parts else 0)


def run(targets: Sequence[Target], s: Settings, workdir: Path) -> list[Measured]:
    """Start everything, measure every target in one interleaved run, stop everything."""
    with ExitStack() as stack:
        up = start_upstreams(stack, workdir, s.stream_events, s.paced_events, s.pace)
        running, skipped = launch_all(targets, up, workdir, stack)
        measured = [Measured(t.name) for t in running]
        runner = _Runner(LoadgenWorker.start(stack, workdir / "loadgen.log"), s, up.paced_pid)
        for t, m in zip(running, measured):
            m.add(runner.worker.run(runner.job(t, requests=1, warmup=0, max_tokens=s.short_tokens)))
            m.rss = rss_bytes(t.pid if t.pid else up.instant_pid)
            m.idle_cpu_rate = idle_cpu_rate(t.pid, s.idle_seconds) if t.pid else 0.0
        _interleaved(runner, running, measured, s.rounds)
        return measured + [Measured(name, skipped=why) for name, why in skipped.items()]


def _context(s: Settings, command: str) -> str:
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    return (
        f"Command: `{command}` ({s.label}: {s.rounds} rounds; per target {s.rounds * s.latency_requests} "
        f"non-stream and {s.rounds * s.ttfb_requests} stream requests at 1 client, "
        f"{s.rounds}×{s.throughput_seconds:g} s at {s.throughput_clients} clients, "
        f"{s.rounds * s.cpu_streams} streams of {s.stream_events} events for CPU).  \n"
        f"Machine: {os.cpu_count()} CPUs, load average {' '.join(load)} at the end, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}."
    )


def render(measured: Sequence[Measured], s: Settings, command: str) -> str:
    """The markdown report: context line, the table, and any errors seen."""
    rows: list[Row] = []
    direct = next(m for m in measured if m.name == "direct")
    for m in measured:
        if m is not direct and not m.skipped:
            rows += rows_for(direct, m, s)
    lines = [_context(s, command), "", render_rows(rows)]
    base = next((m for m in measured if m.name == "weir"), None)
    with_plugins = [m for m in measured if base is not None and m.name.startswith("weir+") and not m.skipped]
    if base is not None and with_plugins:
        extra = [r for m in with_plugins for r in plugin_rows(base, m, s)]
        lines += [
            "",
            "Plugins over Weir with no plugins (the `weir` target of the same run):",
            "",
            render_rows(extra, "weir"),
        ]
    for m in measured:
        lines += [f"\n**skipped ({m.name}):** {m.skipped}"] if m.skipped else []
        lines += [f"\n**errors ({m.name}):** " + "; ".join(m.errors[:5])] if m.errors else []
    return "\n".join(lines) + "\n"


def write_results(section: str, heading: str, path: Path = RESULTS) -> None:
    """Replace the section titled `heading` in RESULTS.md (or append it); other text is kept."""
    begin, end = f"<!-- bench:begin {heading} -->", f"<!-- bench:end {heading} -->"
    block = f"{begin}\n## {heading}\n\n{section.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Weir benchmark results\n\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def settings_for(quick: bool, focus: str = "all", rounds: int | None = None) -> Settings:
    """The settings the command line asks for: `QUICK` or `FULL`, `focus` "requests" to
    skip the CPU and paced measures, and `rounds` (at least 1) instead of the default."""
    s = QUICK if quick else FULL
    if focus == "requests":
        s = replace(s, label=s.label + ", requests only", cpu_streams=0, paced_runs=0)
    if rounds is not None:
        if rounds < 1:
            raise ValueError("--rounds must be at least 1")
        s = replace(s, rounds=rounds, paced_runs=min(s.paced_runs, rounds))
    return s


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack, which stops the children


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and requests (about a minute)")
    p.add_argument("--write", action="store_true", help="also write the dated section of bench/RESULTS.md")
    p.add_argument(
        "--targets",
        default=None,
        help=f"comma-separated, from: {','.join(known_targets())} (default: direct,weir; "
        f"with --focus versus: {VERSUS_TARGETS})",
    )
    p.add_argument(
        "--focus",
        choices=("all", "requests", "versus"),
        default="all",
        help="requests: only the 1-client latency/TTFB and throughput measures (no CPU or paced runs); "
        "versus: the comparison with LiteLLM of issue 20 (rps, CPU per request, added p50)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds instead of 8 (full), 3 (quick) or 2 (versus): more for a steadier reading on a noisy machine",
    )
    return p


def _command(args: argparse.Namespace) -> str:
    command = "python -m bench.report" + (" --quick" if args.quick else "")
    command += f" --focus {args.focus}" if args.focus != "all" else ""
    command += f" --rounds {args.rounds}" if args.rounds else ""
    return command + (f" --targets {args.targets}" if args.targets else "")


def _versus_settings(quick: bool, rounds: int | None) -> VersusSettings:
    s = VersusSettings(label="versus, quick", seconds=1.0) if quick else VersusSettings()
    return replace(s, rounds=rounds) if rounds is not None else s


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    p = _parser()
    args = p.parse_args(argv)
    versus = args.focus == "versus"
    targets = args.targets or (VERSUS_TARGETS if versus else "direct,weir")
    table = known_targets()
    names = ["direct"] + [n for n in targets.split(",") if n and n != "direct"]
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown target(s) {unknown}; known: {list(table)}")
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be at least 1")
    s = settings_for(args.quick, args.focus, args.rounds) if not versus else None
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="weir-bench-") as tmp:
            if s is None:
                vs = _versus_settings(args.quick, args.rounds)
                text, label = (
                    render_versus(run_versus([table[n] for n in names], vs, Path(tmp)), _command(args)),
                    vs.label,
                )
            else:
                text, label = render(run([table[n] for n in names], s, Path(tmp)), s, _command(args)), s.label
    except KeyboardInterrupt:
        print("interrupted; every benchmark process has been stopped", file=sys.stderr)
        return 130
    sys.stdout.write(text)
    if args.write:
        write_results(text, f"{dt.date.today().isoformat()} ({label}, {targets})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
