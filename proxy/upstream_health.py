"""Upstream health as the proxy sees it: each upstream's recent attempts (errors and
successes) and its recent time to first byte, for the admin API and console.

Fed by `proxy.metrics.Metrics` (one append per attempt and per finished request, to bounded
deques: no work on the event path beyond that). Read with `snapshot()`, through the host
(`Host.upstreams()`).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.config import UpstreamConfig

__all__ = ["UpstreamHealth", "UpstreamStatus"]

#: "Recent" means the last five minutes, and at most this many samples per upstream.
WINDOW = 300.0
SAMPLES = 500


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    """One upstream's configuration and recent health.

    `healthy`: its circuit breaker is closed and its most recent attempt in the window
    succeeded (True when it had none). `breaker_open`: the breaker (`routing.breaker`) is
    skipping it, or letting a probe through.
    `recent_errors` / `recent_attempts`: attempts in the last five minutes that failed (timeout,
    unreachable, 429 or 5xx) / all of them. `p50_ms`: the median time to first byte of its
    recent successful requests (None without any). `last_error`: what the last failure was.
    """

    name: str
    type: str
    models: tuple[str, ...]
    healthy: bool
    breaker_open: bool
    recent_errors: int
    recent_attempts: int
    p50_ms: float | None
    last_error: str | None
    last_error_at: float | None


def is_failure(result: str) -> bool:
    """Whether an attempt's result (an HTTP status, `timeout` or `unreachable`) counts
    against the upstream: a 4xx other than 429 is the client's fault, not the upstream's."""
    if not result.isdigit():
        return True
    status = int(result)
    return status == 429 or status >= 500


class UpstreamHealth:
    """Recent attempts and first-byte times per configured upstream."""

    def __init__(self, upstreams: Sequence[UpstreamConfig] = ()) -> None:
        self._configs = {u.name: u for u in upstreams}
        self._attempts: dict[str, deque[tuple[float, bool]]] = {u.name: deque(maxlen=SAMPLES) for u in upstreams}
        self._ttfb: dict[str, deque[tuple[float, float]]] = {u.name: deque(maxlen=SAMPLES) for u in upstreams}
        self._last_error: dict[str, tuple[str, float]] = {}
        self._open: set[str] = set()

    def breaker_changed(self, upstream: str, is_open: bool) -> None:
        """The upstream's circuit breaker opened or closed."""
        if is_open:
            self._open.add(upstream)
        else:
            self._open.discard(upstream)

    def attempt(self, upstream: str, result: str) -> None:
        """Record one attempt on `upstream` (an HTTP status, `timeout` or `unreachable`)."""
        samples = self._attempts.get(upstream)
        if samples is None:
            return
        failed = is_failure(result)
        samples.append((time.monotonic(), not failed))
        if failed:
            self._last_error[upstream] = (result, time.time())

    def first_byte(self, upstream: str, seconds: float) -> None:
        """Record a successful request's time to first byte."""
        samples = self._ttfb.get(upstream)
        if samples is not None:
            samples.append((time.monotonic(), seconds))

    def snapshot(self) -> list[UpstreamStatus]:
        """Every configured upstream, in config order, with its recent health."""
        since = time.monotonic() - WINDOW
        found = []
        for name, config in self._configs.items():
            attempts = [ok for t, ok in self._attempts[name] if t >= since]
            ttfb = [s for t, s in self._ttfb[name] if t >= since]
            last = self._last_error.get(name)
            is_open = name in self._open
            found.append(
                UpstreamStatus(
                    name,
                    config.type,
                    tuple(config.models),
                    not is_open and (not attempts or attempts[-1]),
                    is_open,
                    attempts.count(False),
                    len(attempts),
                    round(statistics.median(ttfb) * 1000, 1) if ttfb else None,
                    last[0] if last else None,
                    last[1] if last else None,
                )
            )
        return found
