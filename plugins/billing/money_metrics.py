"""Metrics that show money: what was charged, what is held, how long the store takes.

`MoneyMetrics` is a Prometheus collector on the host's registry. The request path only adds
integers to plain dicts and lists (a few hundred instructions); the exposition is built
when `/metrics` is scraped. The store-wide view of open holds (every instance's) is
refreshed by a service task (`watch_open_holds`), never by a scrape, so a scrape never
waits on the store.

Exposed (all prefixed `weir_billing_`):
- `charged_quota_total{model,group}`, `charged_usd_total{model,group}`, `charges_total{model,group}`
- `releases_total{reason}`: holds given back in full (nothing delivered, or a 0 charge);
  async tasks count here too when they end (a capture, or a release by their end reason)
- `open_holds{scope}` and `open_hold_oldest_seconds{scope}`: `scope="instance"` is this
  process's requests between hold and settlement; `scope="store"` every instance's
- `hold_seconds`, `settle_seconds`: histograms of the store's hold and settlement latency
- `store_errors_total{op,kind}`: store failures met by billing (`kind` is the error class)
- `orphans_resolved_total{state}`: dead instances' holds this instance resolved
- `settlement_retries_total`: settlements that waited for the store (kept and retried)
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from plugins.billing.store.base import Store
from plugins.billing.store.records import StoreError
from plugins.billing.store.tasks import TASK_OWNER

#: Store latency buckets, in seconds: a local SQLite commit is ~1 ms, a Redis round trip less.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Buckets:
    """A cumulative-at-scrape histogram: one list increment per observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """The Prometheus histogram (cumulative buckets) of what was observed so far."""
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts):
            running += count
            buckets.append((bound, running))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


class MoneyMetrics(Collector):
    """The money counters of one billing plugin (see the module docstring for the names)."""

    def __init__(self, quota_per_usd: int, clock: Callable[[], float] = time.time) -> None:
        self.quota_per_usd = quota_per_usd
        self.clock = clock
        #: (model, group) → [captures, quota charged]
        self.charges: dict[tuple[str, str], list[int]] = {}
        self.releases: dict[str, int] = {}
        self.hold_latency = Buckets()
        self.settle_latency = Buckets()
        self.store_errors: dict[tuple[str, str], int] = {}
        self.orphans: dict[str, int] = {}
        #: Set by the plugin: this instance's live holds as (count, oldest start in monotonic time).
        self.live: Callable[[], tuple[int, float | None]] = lambda: (0, None)
        self.retries: Callable[[], int] = lambda: 0
        #: The last store-wide count of open holds and the oldest one's age, or None before the first.
        self.store_holds: tuple[int, float] | None = None

    def settled(self, model: str, group: str, quota: int, seconds: float) -> None:
        """Count a capture of `quota` units (0 counts as a release, reason `zero_charge`)
        whose settlement took `seconds` (one call per request: each costs the hot path)."""
        self.settle_latency.observe(seconds)
        if quota <= 0:
            self.released("zero_charge")
            return
        self._charged(model, group, quota)

    def task_ended(self, model: str, group: str, quota: int, reason: str) -> None:
        """Count an async task's end: a capture of `quota` units, or (nothing charged) a
        release by its end reason (`failed`, `deleted`, ...)."""
        if quota > 0:
            self._charged(model, group, quota)
        else:
            self.released(reason)

    def _charged(self, model: str, group: str, quota: int) -> None:
        tally = self.charges.get((model, group))
        if tally is None:
            tally = self.charges[(model, group)] = [0, 0]
        tally[0] += 1
        tally[1] += quota

    def released(self, reason: str) -> None:
        """Count a hold given back in full, by the end reason."""
        self.releases[reason] = self.releases.get(reason, 0) + 1

    def store_error(self, op: str, exc: BaseException) -> None:
        """Count a store failure met during `op` (hold, capture, release, sweep, housekeeping)."""
        key = (op, type(exc).__name__)
        self.store_errors[key] = self.store_errors.get(key, 0) + 1

    def orphans_resolved(self, states: Iterable[str]) -> None:
        """Count dead instances' holds resolved here, by their final state."""
        for state in states:
            self.orphans[state] = self.orphans.get(state, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """The exposition (called on every scrape of /metrics)."""
        yield from self._charge_families()
        releases = CounterMetricFamily(
            "weir_billing_releases", "Holds given back in full, by end reason", labels=("reason",)
        )
        for reason, count in sorted(self.releases.items()):
            releases.add_metric((reason,), count)
        yield releases
        yield from self._hold_families()
        yield self.hold_latency.family("weir_billing_hold_seconds", "Time the store took to place a hold")
        yield self.settle_latency.family(
            "weir_billing_settle_seconds", "Time from a response's end to its settlement in the store"
        )
        errors = CounterMetricFamily(
            "weir_billing_store_errors", "Store failures met by billing, by operation and kind", labels=("op", "kind")
        )
        for (op, kind), count in sorted(self.store_errors.items()):
            errors.add_metric((op, kind), count)
        yield errors
        orphans = CounterMetricFamily(
            "weir_billing_orphans_resolved", "Dead instances' holds resolved by this one", labels=("state",)
        )
        for state, count in sorted(self.orphans.items()):
            orphans.add_metric((state,), count)
        yield orphans
        yield CounterMetricFamily(
            "weir_billing_settlement_retries",
            "Settlements that waited for the store and were retried",
            value=self.retries(),
        )

    def _charge_families(self) -> Iterator[Metric]:
        labels = ("model", "group")
        quota = CounterMetricFamily("weir_billing_charged_quota", "Quota units captured", labels=labels)
        usd = CounterMetricFamily("weir_billing_charged_usd", "US dollars captured", labels=labels)
        count = CounterMetricFamily("weir_billing_charges", "Captures of a non-zero charge", labels=labels)
        per_usd = Decimal(self.quota_per_usd)
        for (model, group), (n, units) in sorted(self.charges.items()):
            quota.add_metric((model, group), units)
            usd.add_metric((model, group), float(Decimal(units) / per_usd))
            count.add_metric((model, group), n)
        return iter((quota, usd, count))

    def _hold_families(self) -> Iterator[Metric]:
        held = GaugeMetricFamily("weir_billing_open_holds", "Holds not yet settled", labels=("scope",))
        oldest = GaugeMetricFamily(
            "weir_billing_open_hold_oldest_seconds", "Age of the oldest hold not yet settled", labels=("scope",)
        )
        count, started = self.live()
        held.add_metric(("instance",), count)
        oldest.add_metric(("instance",), 0.0 if started is None else max(0.0, time.monotonic() - started))
        if self.store_holds is not None:
            held.add_metric(("store",), self.store_holds[0])
            oldest.add_metric(("store",), self.store_holds[1])
        return iter((held, oldest))


async def watch_open_holds(store: Store, metrics: MoneyMetrics, every: float = 15.0) -> None:
    """Forever (a service task): every `every` seconds, count every instance's open holds
    and the oldest one's age into `metrics` (a failure is counted and the last value kept)."""
    while True:
        try:
            holds = await store.open_holds()
        except StoreError as exc:
            metrics.store_error("open_holds", exc)
        else:
            # An async task's hold lives for minutes by design: it would mask a stuck request's.
            holds = [h for h in holds if h.instance_id != TASK_OWNER]
            now = metrics.clock()
            oldest = min((h.created_at for h in holds), default=None)
            metrics.store_holds = (len(holds), 0.0 if oldest is None else max(0.0, now - oldest))
        await asyncio.sleep(every)
