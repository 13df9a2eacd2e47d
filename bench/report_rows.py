"""The report's tables: one `Row` per measure and target, against direct or against Weir
with no plugins, with each goal and whether it is met."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from bench.loadgen import Result, percentile
from bench.measures import Measured, Settings

__all__ = ["Row", "plugin_rows", "render_rows", "rows_for"]


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
