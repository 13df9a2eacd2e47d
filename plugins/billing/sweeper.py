"""Holds this instance opened but no longer has in flight.

The orphan resolver only resolves holds of *dead* instances. A live instance can still
own an open hold that nothing will resolve: its capture was acknowledged and then lost
(a Redis failover or restart that dropped the last second of writes), or a hold was
written although the store reported a failure. This sweeper resolves such holds as the
orphan rule would (capture the last checkpoint, else release; logged `orphaned`), after a
grace period so that a request between its hold and its first bookkeeping is never touched.
"""

from __future__ import annotations

import logging
import time

from plugins.billing.store.base import LogDetails, Store, StoreError

log = logging.getLogger(__name__)


class InflightSweeper:
    """Tracks this instance's in-flight request ids and sweeps its strays."""

    def __init__(self, instance_id: str, grace: float = 120.0) -> None:
        self.instance_id = instance_id
        self.grace = grace
        self._inflight: set[str] = set()

    def track(self, request_id: str) -> None:
        """A hold is about to be taken for `request_id`."""
        self._inflight.add(request_id)

    def done(self, request_id: str) -> None:
        """`request_id`'s hold is resolved (or was never taken)."""
        self._inflight.discard(request_id)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._inflight

    async def sweep(self, store: Store, now: float | None = None) -> int:
        """Resolve this instance's open holds that are not in flight and older than `grace`."""
        now = time.time() if now is None else now
        resolved = 0
        for hold in await store.open_holds():
            if hold.instance_id != self.instance_id or hold.request_id in self._inflight:
                continue
            if hold.created_at > now - self.grace:
                continue
            details = LogDetails(end_reason="orphaned", usage_source="partial" if hold.checkpoint else "none")
            try:
                if hold.checkpoint:
                    await store.capture(hold.request_id, hold.checkpoint, details)
                else:
                    await store.release(hold.request_id, details)
            except StoreError as exc:
                log.error("sweeping stray hold %s failed: %s", hold.request_id, exc)
                continue
            log.warning("resolved stray hold %s of this instance (charged %d)", hold.request_id, hold.checkpoint or 0)
            resolved += 1
        return resolved
