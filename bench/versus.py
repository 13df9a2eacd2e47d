"""Weir against LiteLLM in one interleaved run (issue 20, item 5): `bench.report --focus versus`.

Four cases: non-stream answers (16 tokens) and 100-chunk streams, each at 1 and at 32
clients. In every round each case runs on every target back to back for a fixed time (the
order flips from case to case and round to round), so the machine's noise lands on all of
them. Per target and case it records requests per second (median of the rounds), the CPU per
request of the target's process (utime + stime from /proc/<pid>/stat around each measure,
minus its idle rate, over every request the measure sent, warm-up included), and at 1
client the latency samples whose p50 is compared with direct. `render_versus` turns that
into the issue's tables and judges its goals.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import Job, LoadgenWorker, percentile
from bench.targets import INSTANT_MODEL, Running, Target, cpu_seconds, idle_cpu_rate, launch_all
from bench.upstreams import start_upstreams

__all__ = ["COLUMNS", "Case", "Tally", "Versus", "VersusSettings", "cases", "run_versus"]

# Known targets in the column order, with the column names.
COLUMNS = {
    "direct": "direct",
    "litellm": "LiteLLM",
    "weir": "Weir, no plugins",
    "weir+billing-sqlite": "Weir + billing (SQLite)",
    "weir+billing-redis": "Weir + billing (Redis)",
}
VERSUS_TARGETS = ",".join(COLUMNS)


@dataclass(frozen=True, slots=True)
class VersusSettings:
    """How much to measure: `seconds` per target, case and round, after `warmup` requests
    per client (which open the connections)."""

    label: str = "versus"
    rounds: int = 2
    seconds: float = 3.0
    warmup: int = 1
    short_tokens: int = 16
    chunks: int = 100
    clients: tuple[int, ...] = (1, 32)
    idle_seconds: float = 2.0
    timeout: float = 120.0


@dataclass(frozen=True, slots=True)
class Case:
    """One cell of the issue's table: a kind of answer at a number of clients."""

    stream: bool
    clients: int

    def mode(self, s: VersusSettings) -> str:
        """The table's "mode" column."""
        return f"stream, {s.chunks} chunks" if self.stream else "non-stream"


def cases(s: VersusSettings) -> list[Case]:
    """Every case, in the issue's row order."""
    return [Case(stream, n) for stream in (False, True) for n in s.clients]


@dataclass(slots=True)
class Tally:
    """What one target measured in one case over the whole run."""

    rps: list[float] = field(default_factory=list)
    cpu: float = 0.0
    requests: int = 0
    latencies: list[float] = field(default_factory=list)

    def median_rps(self) -> float:
        """Requests per second, median of the rounds (NaN when never measured)."""
        return percentile(self.rps, 50)

    def cpu_per_request(self) -> float:
        """CPU seconds of the target's process per request (NaN without a pid or requests)."""
        return self.cpu / self.requests if self.requests else float("nan")


@dataclass(slots=True)
class Versus:
    """The whole run: per target name and case, its tally; skipped targets and errors."""

    settings: VersusSettings
    order: list[str]
    tallies: dict[str, dict[Case, Tally]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)

    def tally(self, name: str, case: Case) -> Tally | None:
        """The tally of target `name` in `case`, None for a target that did not run."""
        return self.tallies.get(name, {}).get(case)


class _Measurer:
    """Runs one case on one target and adds the outcome to that target's tally."""

    def __init__(self, worker: LoadgenWorker, s: VersusSettings, v: Versus, idle: dict[str, float]) -> None:
        self.worker, self.s, self.v, self.idle = worker, s, v, idle

    def job(self, t: Running, case: Case) -> Job:
        """The load generator job for `case` against `t`."""
        s = self.s
        return Job(
            url=t.endpoint(False),
            model=INSTANT_MODEL,
            stream=case.stream,
            clients=case.clients,
            duration=s.seconds,
            warmup=s.warmup,
            max_tokens=s.chunks if case.stream else s.short_tokens,
            headers=t.headers,
            timeout=s.timeout,
        )

    def measure(self, t: Running, case: Case) -> None:
        """One timed run; the target's CPU around it, less its idle rate, is charged to it."""
        job = self.job(t, case)
        cpu0, w0 = (cpu_seconds(t.pid) if t.pid else 0.0), time.perf_counter()
        r = self.worker.run(job)
        wall = time.perf_counter() - w0
        cpu = (cpu_seconds(t.pid) - cpu0) if t.pid else 0.0
        tally = self.v.tallies.setdefault(t.name, {}).setdefault(case, Tally())
        tally.rps.append(r.throughput)
        if t.pid:
            tally.cpu += max(0.0, cpu - self.idle[t.name] * wall)
            tally.requests += r.ok + r.errors + job.clients * job.warmup
        if case.clients == 1:
            tally.latencies += r.latencies
        if r.errors:
            self.v.errors.setdefault(t.name, []).append(f"{case.mode(self.s)}, c={case.clients}: {r.first_error}")


def run_versus(targets: Sequence[Target], s: VersusSettings, workdir: Path) -> Versus:
    """Start the mocks and `targets`, measure every case in `s.rounds` interleaved rounds,
    stop everything (also on an error or Ctrl-C)."""
    v = Versus(s, [t.name for t in targets], descriptions={t.name: t.description for t in targets})
    with ExitStack() as stack:
        up = start_upstreams(stack, workdir, max(s.chunks, s.short_tokens))
        running, v.skipped = launch_all(targets, up, workdir, stack)
        worker = LoadgenWorker.start(stack, workdir / "loadgen.log")
        idle = {t.name: idle_cpu_rate(t.pid, s.idle_seconds) if t.pid else 0.0 for t in running}
        m = _Measurer(worker, s, v, idle)
        for i in range(s.rounds):
            for k, case in enumerate(cases(s)):
                for t in running if (i + k) % 2 == 0 else running[::-1]:
                    m.measure(t, case)
            print(f"  round {i + 1}/{s.rounds} done", file=sys.stderr, flush=True)
    return v
