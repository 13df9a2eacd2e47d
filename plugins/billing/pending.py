"""Making settlements that wait for the store visible: metrics and a log line a minute.

`SettlementMetrics` is a Prometheus collector registered on the app's own registry (by the
billing plugin's lifespan); it reads the `Settler`'s counts when scraped, so settling a
request costs nothing extra. `report_pending` is the plugin's service loop that logs, every
`every` seconds while the count is non-zero, how many settlements wait and for how long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from plugins.billing.outbox import Settler

log = logging.getLogger(__name__)


class SettlementMetrics(Collector):
    """`weir_billing_pending_settlements`, `weir_billing_pending_oldest_seconds` and
    `weir_billing_settlement_failures_total{op}` of one `Settler`."""

    def __init__(self, settler: Settler) -> None:
        self.settler = settler

    def collect(self) -> Iterator[Metric]:
        """The current values (called on every scrape of /metrics)."""
        settler = self.settler
        yield GaugeMetricFamily(
            "weir_billing_pending_settlements",
            "Captures and releases waiting for the store (kept in memory and retried)",
            value=settler.pending(),
        )
        yield GaugeMetricFamily(
            "weir_billing_pending_oldest_seconds",
            "How long the oldest settlement waiting for the store has waited",
            value=settler.oldest_pending(),
        )
        failures = CounterMetricFamily(
            "weir_billing_settlement_failures",
            "Settlements the store refused for good (not retried; the hold is left for `weir audit`)",
            labels=("op",),
        )
        for op, count in sorted(settler.failures.items()):
            failures.add_metric((op,), count)
        yield failures


def pending_summary(settler: Settler) -> str | None:
    """The log line for the settlements waiting now, or None when none waits."""
    count = settler.pending()
    if not count:
        return None
    return f"billing: {count} settlements pending for the store; oldest {settler.oldest_pending():.0f} s"


async def report_pending(settler: Settler, every: float = 60.0) -> None:
    """Forever (a service task): every `every` seconds, log the pending settlements, if any."""
    while True:
        await asyncio.sleep(every)
        line = pending_summary(settler)
        if line is not None:
            log.warning("%s", line)
