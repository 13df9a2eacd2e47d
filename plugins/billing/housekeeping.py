"""Instance heartbeats and the orphan resolver, run for the life of the app."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from plugins.billing.store.base import Store, StoreError
from proxy.host import TaskTracker

log = logging.getLogger(__name__)


class Housekeeper:
    """Heartbeats this instance and resolves the holds of dead ones."""

    def __init__(
        self,
        store: Store,
        instance_id: str,
        heartbeat_every: float,
        orphan_after: float,
        clock: Callable[[], float] = time.time,
        on_resolved: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        """`on_resolved(states)` is told the final state of every orphan this instance resolves."""
        self.store = store
        self.on_resolved = on_resolved
        self.clock = clock
        self.instance_id = instance_id
        self.heartbeat_every = heartbeat_every
        self.orphan_after = orphan_after
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, tracker: TaskTracker) -> None:
        """Begin the loop as a tracked task (stopped by `stop`)."""
        self._task = tracker.spawn_service(self._loop(), name="weir-housekeeping")

    async def stop(self) -> None:
        """End the loop and wait for it."""
        self._stop.set()
        # Shutdown's drain may have cancelled the loop already (it is a service).
        if self._task is not None and not self._task.done():
            await self._task

    async def tick(self) -> int:
        """One heartbeat and one orphan sweep; returns how many holds were resolved."""
        await self.store.heartbeat(self.instance_id)
        now = self.clock()
        resolved = await self.store.resolve_orphans(now, self.orphan_after)
        for r in resolved:
            log.warning("resolved orphaned hold %s: %s, charged %d", r.request_id, r.state.value, r.charged)
        if resolved and self.on_resolved is not None:
            self.on_resolved([r.state.value for r in resolved])
        return len(resolved)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.tick()
            except StoreError as exc:
                log.error("housekeeping: store error: %s", exc)
            except Exception:
                log.exception("housekeeping failed")
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.heartbeat_every)
            except TimeoutError:
                pass
