"""Prometheus metrics, one registry per app (no global registry)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy.upstream_health import UpstreamHealth

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Request, status, latency, TTFT, relayed events and upstream attempts, per upstream."""

    def __init__(self, health: UpstreamHealth | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: Recent attempts and first-byte times per upstream (the admin API's health view).
        self.health = health or UpstreamHealth()
        self.requests = Counter(
            "weir_requests_total",
            "Proxied requests by endpoint, upstream, status and outcome",
            ("endpoint", "upstream", "status", "outcome"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "weir_request_duration_seconds",
            "Time from request to the end of the response",
            ("endpoint", "upstream"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "weir_time_to_first_byte_seconds",
            "Time from request to the first relayed body byte",
            ("endpoint", "upstream"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "weir_relayed_events_total",
            "SSE events relayed to clients",
            ("upstream",),
            registry=self.registry,
        )
        self.attempts = Counter(
            "weir_upstream_attempts_total",
            "Upstream attempts by result",
            ("upstream", "result"),
            registry=self.registry,
        )
        self.inflight = Gauge("weir_inflight_requests", "Requests in progress", registry=self.registry)
        self.breaker_open = Gauge(
            "weir_upstream_breaker_open",
            "1 while the upstream's circuit breaker is open (skipped or probing)",
            ("upstream",),
            registry=self.registry,
        )
        self.breaker_trips = Counter(
            "weir_upstream_breaker_trips_total",
            "Times the upstream's circuit breaker opened",
            ("upstream",),
            registry=self.registry,
        )
        # Labelled children, looked up once per label set: `labels()` validates and locks on
        # every call, which showed up in profiles of the request path.
        self._children: dict[tuple[str, ...], tuple[Any, Any, Any, Any]] = {}
        self._attempt_children: dict[tuple[str, str], Any] = {}

    def attempt(self, upstream: str, result: str) -> None:
        """Record one upstream attempt: its result is an HTTP status, `timeout` or `unreachable`."""
        child = self._attempt_children.get((upstream, result))
        if child is None:
            child = self._attempt_children[(upstream, result)] = self.attempts.labels(upstream, result)
        child.inc()
        self.health.attempt(upstream, result)

    def observe(
        self,
        endpoint: str,
        upstream: str,
        status: int,
        outcome: str,
        seconds: float,
        ttft: float | None,
        events: int,
    ) -> None:
        """Record one finished request."""
        label_set = (endpoint, upstream, str(status), outcome)
        children = self._children.get(label_set)
        if children is None:
            children = (
                self.requests.labels(*label_set),
                self.latency.labels(endpoint, upstream),
                self.ttft.labels(endpoint, upstream),
                self.events.labels(upstream),
            )
            self._children[label_set] = children
        requests, latency, ttft_hist, events_counter = children
        requests.inc()
        latency.observe(seconds)
        if ttft is not None:
            ttft_hist.observe(ttft)
            if 200 <= status < 300:
                self.health.first_byte(upstream, ttft)
        if events:
            events_counter.inc(events)

    def upstreams(self, names: Iterable[str]) -> None:
        """Show every upstream's breaker (closed, no trips) before anything happens to it."""
        for name in names:
            self.breaker_open.labels(name).set(0)
            self.breaker_trips.labels(name)

    def breaker_changed(self, upstream: str, is_open: bool, tripped: bool) -> None:
        """A circuit breaker opened (`tripped`) or closed (proxy.breaker)."""
        self.health.breaker_changed(upstream, is_open)
        self.breaker_open.labels(upstream).set(1 if is_open else 0)
        if tripped:
            self.breaker_trips.labels(upstream).inc()

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
