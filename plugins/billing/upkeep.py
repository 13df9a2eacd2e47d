"""The billing plugin's upkeep between requests: replaying outboxes and sweeping strays.

At start-up, and then every `outbox_replay_every` seconds, the settlements written to the
outboxes (this instance's, and those of dead instances that may never restart) are replayed
to the store; after each periodic replay, this instance's own stray holds are resolved
(`plugins.billing.sweeper`).
"""

from __future__ import annotations

import asyncio
import logging

from plugins.billing.outbox import Settler
from plugins.billing.store.base import Store, StoreError
from plugins.billing.sweeper import InflightSweeper

__all__ = ["replay_outboxes", "upkeep_forever"]

log = logging.getLogger(__name__)


async def replay_outboxes(settler: Settler) -> None:
    """Replay what the outboxes hold; an unreadable outbox is logged, not raised."""
    try:
        replayed = await settler.replay()
    except OSError as exc:
        log.error("billing: cannot read the outbox: %s", exc)
        return
    if replayed:
        log.warning("billing: replayed %d pending resolutions from the outbox", replayed)


async def upkeep_forever(settler: Settler, sweeper: InflightSweeper, store: Store, every: float) -> None:
    """Every `every` seconds: replay the outboxes, then sweep this instance's stray holds."""
    while True:
        await asyncio.sleep(every)
        await replay_outboxes(settler)
        try:
            await sweeper.sweep(store)
        except StoreError as exc:
            log.error("billing: stray-hold sweep failed: %s", exc)
