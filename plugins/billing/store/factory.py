"""Build the configured store (`store.backend: sqlite | redis`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from plugins.billing.store.base import Store
from proxy.host import Config


def sqlite_path(config: Config) -> str:
    """`store.path`, relative to the directory of the config file it came from."""
    path = Path(config.store.path)
    if not path.is_absolute() and config.source:
        path = Path(config.source).parent / path
    return str(path)


def make_store(config: Config, clock: Callable[[], float] = time.time) -> Store:
    """A new, unopened store for `config.store`."""
    cfg = config.store
    if cfg.backend == "redis":
        from plugins.billing.store.redis.store import RedisStore

        return RedisStore(cfg.url, prefix=cfg.prefix, clock=clock, cluster=cfg.cluster)
    from plugins.billing.store.sqlite.store import SQLiteStore

    return SQLiteStore(
        sqlite_path(config), clock=clock, synchronous=cfg.synchronous, busy_timeout_ms=cfg.busy_timeout_ms
    )
