"""What a benchmark report measures: its settings (`FULL`, `QUICK`) and, per target, what
was measured (`Measured`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bench.loadgen import Result

__all__ = ["FULL", "QUICK", "Measured", "Settings"]


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
