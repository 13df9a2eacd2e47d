"""The tables of `bench.report --focus versus` and the verdicts on issue 20's goals (item 5).

Three tables, one row per case (mode × clients), one column per target in the issue's order:
requests per second with the ratio Weir + billing (SQLite) ÷ LiteLLM; CPU per request of each
proxy process with the ratio LiteLLM ÷ Weir + billing (SQLite); and, at 1 client, the p50
latency added over direct. Then each goal with its measured value and whether it is met.
A target that did not run shows "skipped" (the reason is printed below the tables).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import percentile
from bench.versus import COLUMNS, Case, Tally, Versus, cases

__all__ = ["Goal", "goals", "machine", "render_versus"]

BILLING = "weir+billing-sqlite"
LITELLM = "litellm"
NAN = float("nan")


def machine() -> str:
    """This machine in one line: CPUs, CPU model, load average, Python, kernel."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    return (
        f"{os.cpu_count()} CPUs ({model}), load average {' '.join(load)} at the end, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def _columns(v: Versus) -> list[str]:
    known = [n for n in COLUMNS if n in v.order]
    return known + [n for n in v.order if n not in COLUMNS]


def _cell(v: Versus, name: str, case: Case, value: Callable[[Tally], str]) -> str:
    if name in v.skipped:
        return "skipped"
    t = v.tally(name, case)
    return value(t) if t is not None else "—"


def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else NAN


def _x(r: float) -> str:
    return f"{r:.1f}×" if r == r else "—"


def _rps(v: Versus, name: str, case: Case) -> float:
    t = v.tally(name, case)
    return t.median_rps() if t else NAN


def _cpu(v: Versus, name: str, case: Case) -> float:
    t = v.tally(name, case)
    return t.cpu_per_request() if t else NAN


def _p50(v: Versus, name: str, case: Case) -> float:
    t = v.tally(name, case)
    return percentile(t.latencies, 50) if t else NAN


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _throughput(v: Versus) -> list[str]:
    s, cols = v.settings, _columns(v)
    rows = []
    for c in cases(s):
        cells = [_cell(v, n, c, lambda t: f"{t.median_rps():.1f}") for n in cols]
        rows.append([c.mode(s), str(c.clients), *cells, _x(_ratio(_rps(v, BILLING, c), _rps(v, LITELLM, c)))])
    head = ["mode", "clients"] + [f"{COLUMNS.get(n, n)} rps" for n in cols] + ["billing ÷ LiteLLM"]
    return _table(head, rows)


def _cpu_table(v: Versus) -> list[str]:
    s = v.settings
    cols = [n for n in _columns(v) if n != "direct"]
    rows = []
    for c in cases(s):
        cells = [_cell(v, n, c, lambda t: f"{t.cpu_per_request() * 1000:.2f} ms") for n in cols]
        rows.append([c.mode(s), str(c.clients), *cells, _x(_ratio(_cpu(v, LITELLM, c), _cpu(v, BILLING, c)))])
    head = ["mode", "clients"] + [COLUMNS.get(n, n) for n in cols] + ["LiteLLM ÷ billing (SQLite)"]
    return _table(head, rows)


def _p50_cell(v: Versus, name: str, case: Case, direct: float) -> str:
    if name in v.skipped or v.tally(name, case) is None:
        return _cell(v, name, case, str)
    p50 = _p50(v, name, case)
    return f"{p50 * 1000:.3f} ms" + ("" if name == "direct" else f" ({(p50 - direct) * 1000:+.3f})")


def _latency_table(v: Versus) -> list[str]:
    s, cols = v.settings, _columns(v)
    rows = []
    for c in (c for c in cases(s) if c.clients == 1):
        base = _p50(v, "direct", c)
        rows.append([c.mode(s), *(_p50_cell(v, n, c, base) for n in cols)])
    return _table(["mode (1 client)"] + [f"{COLUMNS.get(n, n)} p50 (added)" for n in cols], rows)


@dataclass(frozen=True, slots=True)
class Goal:
    """One goal of issue 20, item 5: what is measured, the bound, and the measured value."""

    text: str
    value: float
    bound: float
    at_least: bool
    unit: str

    def verdict(self) -> str:
        """ "yes", "**NO**", or "—" when the value could not be measured."""
        if self.value != self.value:
            return "—"
        ok = self.value >= self.bound if self.at_least else self.value <= self.bound
        return "yes" if ok else "**NO**"

    def shown(self) -> str:
        """The measured value with its unit."""
        if self.value != self.value:
            return "not measured"
        return f"{self.value:.1f}×" if self.unit == "×" else f"{self.value:+.3f} ms"


def goals(v: Versus) -> list[Goal]:
    """The goals with their measured values (NaN when a target needed was skipped)."""
    s, out = v.settings, []
    for c in cases(s):
        bound = 60.0 if c.stream else 40.0
        who = f"{c.clients} client" + ("s" if c.clients > 1 else "")
        text = f"CPU per request, {c.mode(s)}, {who}: LiteLLM ÷ Weir + billing (SQLite) ≥ {bound:g}×"
        out.append(Goal(text, _ratio(_cpu(v, LITELLM, c), _cpu(v, BILLING, c)), bound, True, "×"))
    big = max(s.clients)
    c = Case(False, big)
    text = f"throughput, non-stream, {big} clients: Weir + billing (SQLite) ÷ LiteLLM ≥ 40×"
    out.append(Goal(text, _ratio(_rps(v, BILLING, c), _rps(v, LITELLM, c)), 40.0, True, "×"))
    c = Case(False, 1)
    added = (_p50(v, BILLING, c) - _p50(v, "direct", c)) * 1000
    out.append(
        Goal("p50 added over direct, non-stream, 1 client, Weir + billing (SQLite) ≤ 0.8 ms", added, 0.8, False, "ms")
    )
    return out


def render_versus(v: Versus, command: str) -> str:
    """The markdown report: context, the three tables, the goals, skipped targets and errors."""
    s = v.settings
    lines = [
        f"Command: `{command}` ({s.rounds} rounds of {s.seconds:g} s per target and case after "
        f"{s.warmup} warm-up request(s) per client; rps are medians of the rounds).  ",
        f"Machine: {machine()}.  ",
        "Targets: " + "; ".join(f"{n}: {v.descriptions.get(n, '')}" for n in _columns(v)) + ".",
        "",
        "Requests per second:",
        "",
        *_throughput(v),
        "",
        "CPU per request of the proxy process (utime + stime, idle rate subtracted):",
        "",
        *_cpu_table(v),
        "",
        "p50 latency at 1 client (to the last body byte), added over direct in brackets:",
        "",
        *_latency_table(v),
        "",
        "Goals (issue 20, item 5):",
        "",
        *_table(["goal", "measured", "met"], [[g.text, g.shown(), g.verdict()] for g in goals(v)]),
    ]
    lines += [f"\n**skipped ({n}):** {why}" for n, why in v.skipped.items()]
    lines += [f"\n**errors ({n}):** " + "; ".join(e[:5]) for n, e in v.errors.items()]
    return "\n".join(lines) + "\n"
