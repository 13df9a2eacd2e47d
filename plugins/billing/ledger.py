"""The ledger store for the life of the app: opened at startup, published, watched, closed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from plugins.billing.housekeeping import Housekeeper
from plugins.billing.store.base import Store
from plugins.billing.store.factory import make_store
from proxy.host import Host

#: The name under which billing publishes its store on the host (the harness's `.store`).
SERVICE = "store"


@asynccontextmanager
async def running_ledger(
    host: Host, store: Store | None = None, on_orphans: Callable[[Iterable[str]], None] | None = None
) -> AsyncIterator[Store]:
    """Open `store` (or the one proxy.yaml's `store:` names), publish it as the host's
    `store` service with a `/healthz` check, heartbeat this instance and resolve dead
    instances' holds while the app runs; stop all that and close the store on the way out (it stays published, closed: a
    test reopens it to inspect what was written). `on_orphans` is told the final states of
    the dead instances' holds resolved here (for metrics).

    The caller's lifespan ends after the core has drained settlement, so every capture is
    written before the store closes."""
    store = store if store is not None else make_store(host.config)
    await store.open()
    cfg = host.config.store
    keeper = Housekeeper(store, host.instance_id, cfg.heartbeat_every, cfg.orphan_after, on_resolved=on_orphans)
    host.publish(SERVICE, store)
    host.add_health_check(SERVICE, store.ping)
    try:
        await store.heartbeat(host.instance_id)
        keeper.start(host.tasks)
        yield store
    finally:
        await keeper.stop()
        host.remove_health_check(SERVICE)
        await store.close()
