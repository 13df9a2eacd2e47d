"""The billed requests in flight, and the checkpoints that keep their holds current.

A request is live between its hold (`on_request`) and its terminal hook. Every
`checkpoint_every` seconds the plugin's timer writes the charge so far on the hold of each
live request older than that (`LiveRequests.checkpoint`): a crash then loses at most one
interval of metering, and each checkpoint also keeps the hold alive.
"""

from __future__ import annotations

import asyncio
import logging
import time

from plugins.billing.charge_table import settle
from plugins.billing.request_state import Billing, metered
from plugins.billing.store.base import Store
from proxy.plugin import EndReason, RequestContext

log = logging.getLogger(__name__)

#: A checkpoint charges what a response that broke off now would be charged.
_PARTIAL = EndReason.UPSTREAM_TRUNCATED


class LiveRequests:
    """The billed requests between their hold and their terminal hook, by request id."""

    __slots__ = ("_live", "quota_per_usd")

    def __init__(self, quota_per_usd: int) -> None:
        self._live: dict[str, tuple[RequestContext, Billing]] = {}
        self.quota_per_usd = quota_per_usd

    def add(self, ctx: RequestContext, st: Billing) -> None:
        """A request was held: checkpoint it until `done`."""
        self._live[ctx.request_id] = (ctx, st)

    def done(self, request_id: str) -> None:
        """A request reached its terminal hook (or was resolved elsewhere)."""
        self._live.pop(request_id, None)

    def holds(self) -> tuple[int, float | None]:
        """How many requests are live, and when the oldest started (`time.monotonic`)."""
        live = self._live
        return len(live), min((ctx.started_at for ctx, _ in live.values()), default=None)

    async def checkpoint_forever(self, store: Store, every: float) -> None:
        """Every `every` seconds, `checkpoint`. A timer, not events: it runs while a relay
        waits on a client that stopped reading, and costs the event path nothing."""
        while True:
            await asyncio.sleep(every)
            await self.checkpoint(store, every)

    async def checkpoint(self, store: Store, every: float) -> None:
        """Write the charge so far on the hold of every live request older than `every`
        seconds (short requests never checkpoint), even when it is unchanged or 0: each
        checkpoint also keeps the hold alive. A failed one is logged and skipped."""
        horizon = time.monotonic() - every
        due = [(ctx, st) for ctx, st in list(self._live.values()) if ctx.started_at <= horizon]
        if due:
            await asyncio.gather(*(self._checkpoint(store, ctx, st) for ctx, st in due))

    async def _checkpoint(self, store: Store, ctx: RequestContext, st: Billing) -> None:
        try:
            charge = settle(_PARTIAL, metered(st), st.price, st.multiplier, self.quota_per_usd).charge
            if not await store.checkpoint(ctx.request_id, charge):
                self.done(ctx.request_id)  # resolved meanwhile (e.g. as an orphan)
        except Exception as exc:  # a missed checkpoint only weakens the crash guarantee
            log.warning("checkpoint failed [request %s]: %r", ctx.request_id, exc)
