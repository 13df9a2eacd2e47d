"""Every `web.AppKey` Weir uses, in one place (typed app state, no globals)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from proxy.config import Config  # noqa: F401 (named in AppKey strings)
    from proxy.metrics import Metrics  # noqa: F401 (named in AppKey strings)
    from proxy.pipeline import Pipeline  # noqa: F401 (named in AppKey strings)
    from proxy.tasks import TaskTracker  # noqa: F401 (named in AppKey strings)
    from proxy.upstream import UpstreamPool  # noqa: F401 (named in AppKey strings)

CONFIG = web.AppKey["Config"]("weir.config")
PIPELINE = web.AppKey["Pipeline"]("weir.pipeline")
UPSTREAMS = web.AppKey["UpstreamPool"]("weir.upstreams")
TASKS = web.AppKey["TaskTracker"]("weir.tasks")
METRICS = web.AppKey["Metrics"]("weir.metrics")
INSTANCE_ID = web.AppKey[str]("weir.instance_id")
SHUTDOWN = web.AppKey[asyncio.Event]("weir.shutdown")
