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
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from bench.loadgen import Job, LoadgenWorker, Result
from bench.measures import FULL, QUICK, Measured, Settings
from bench.report_rows import Row, plugin_rows, render_rows, rows_for
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
