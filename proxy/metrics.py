"""Prometheus metrics, one registry per app (no global registry).

The four series every request updates (`weir_requests_total`, the two latency histograms,
`weir_relayed_events_total`) are plain integers and lists updated on the request path and
built into metric families only when `/metrics` is scraped (`RequestSeries`):
`prometheus_client`'s own metrics take a lock per increment and scan the buckets in
Python, ~23k instructions per request. The exposition is the same, bucket bounds included,
without the `_created` samples.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proxy.upstream_health import UpstreamHealth

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: The `le` labels, as `prometheus_client` writes them ("1.0", "+Inf").
_LE = (*map(floatToGoString, _LATENCY_BUCKETS), "+Inf")


class Buckets:
    """One histogram series: a count per bucket (cumulated at scrape) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(_LE)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation (in the first bucket whose bound is >= it)."""
        self.counts[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations <= le) for every bucket, as the exposition wants them."""
        out: list[tuple[str, float]] = []
        running = 0
        for le, count in zip(_LE, self.counts):
            running += count
            out.append((le, running))
        return out


#: One label set's series: its request count and events count (one-element lists, so the
#: request path increments them in place), its latency and its time-to-first-byte histograms.
Series = tuple[list[int], Buckets, Buckets, list[int]]


class RequestSeries(Collector):
    """The per-request series, as plain counters (see the module docstring)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, str], list[int]] = {}
        self.latency: dict[tuple[str, str], Buckets] = {}
        self.ttft: dict[tuple[str, str], Buckets] = {}
        self.events: dict[str, list[int]] = {}

    def series(self, endpoint: str, upstream: str, status: str, outcome: str) -> Series:
        """The counters of one label set, created at zero the first time it is seen."""
        route = (endpoint, upstream)
        return (
            self.requests.setdefault((endpoint, upstream, status, outcome), [0]),
            self.latency.setdefault(route, Buckets()),
            self.ttft.setdefault(route, Buckets()),
            self.events.setdefault(upstream, [0]),
        )

    def collect(self) -> Iterator[Metric]:
        """The exposition (called on every scrape of /metrics)."""
        requests = CounterMetricFamily(
            "weir_requests",
            "Proxied requests by endpoint, upstream, status and outcome",
            labels=("endpoint", "upstream", "status", "outcome"),
        )
        for labels, count in list(self.requests.items()):
            requests.add_metric(labels, count[0])
        yield requests
        yield _histogram("weir_request_duration_seconds", "Time from request to the end of the response", self.latency)
        yield _histogram(
            "weir_time_to_first_byte_seconds", "Time from request to the first relayed body byte", self.ttft
        )
        events = CounterMetricFamily("weir_relayed_events", "SSE events relayed to clients", labels=("upstream",))
        for upstream, count in list(self.events.items()):
            events.add_metric((upstream,), count[0])
        yield events


def _histogram(name: str, documentation: str, series: dict[tuple[str, str], Buckets]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=("endpoint", "upstream"))
    for labels, buckets in list(series.items()):
        family.add_metric(labels, buckets.cumulative(), buckets.total)
    return family


class Metrics:
    """Request, status, latency, TTFT, relayed events and upstream attempts, per upstream."""

    def __init__(self, health: UpstreamHealth | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: Recent attempts and first-byte times per upstream (the admin API's health view).
        self.health = health or UpstreamHealth()
        #: Requests, latency, time to first byte and relayed events (`RequestSeries`).
        self.series = RequestSeries()
        self.registry.register(self.series)
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
        # Each label set's series, looked up once per request with one dict lookup.
        self._children: dict[tuple[str, ...], Series] = {}
        # Labelled children, looked up once per label set: `labels()` validates and locks.
        self._attempt_children: dict[tuple[str, str], Counter] = {}

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
            children = self._children[label_set] = self.series.series(*label_set)
        requests, latency, ttft_hist, events_count = children
        requests[0] += 1
        latency.observe(seconds)
        if ttft is not None:
            ttft_hist.observe(ttft)
            if 200 <= status < 300:
                self.health.first_byte(upstream, ttft)
        if events:
            events_count[0] += events

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
