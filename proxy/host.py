"""The host: what the core offers a plugin beyond its hooks. Public API.

A plugin reaches the host from its `lifespan` with `host_of(app)`:

    async def lifespan(self, app):
        host = host_of(app)
        task = host.tasks.spawn_service(self._loop(), name="my-loop")
        host.add_health_check("my-db", self._db.ping)
        yield
        task.cancel()

It gives the proxy's whole config (read-only), the instance id, the config file's folder,
the tracked task runner (background work that shutdown drains), the app's Prometheus
registry, named health checks that `/healthz` reports, named services a plugin publishes
for others (billing publishes its ledger store as `store`), and each upstream's recent health
(`upstreams()`). Nothing here knows any plugin.

`call_upstream` sends a plugin's own request to a configured upstream (billing polls async
tasks with it).

Also re-exported for plugins: `Config`, `StoreConfig`, `TaskApiConfig`, `ConfigError` and
`build_config` (frozen dataclasses from YAML with YAML-path errors), `TaskTracker`, and
`UpstreamReply` / `UpstreamCallError` (what `call_upstream` answers or raises).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.config import Config, StoreConfig
from proxy.dataclass_builder import ConfigError
from proxy.dataclass_builder import build as build_config
from proxy.task_apis import TaskApiConfig
from proxy.tasks import TaskTracker
from proxy.upstream_call import UpstreamCaller, UpstreamCallError, UpstreamReply
from proxy.upstream_health import UpstreamHealth, UpstreamStatus

__all__ = [
    "HOST",
    "Config",
    "ConfigError",
    "HealthCheck",
    "Host",
    "StoreConfig",
    "TaskApiConfig",
    "TaskTracker",
    "UpstreamCallError",
    "UpstreamReply",
    "UpstreamStatus",
    "build_config",
    "host_of",
]

log = logging.getLogger(__name__)

#: A health check: answers True when the thing it watches works.
HealthCheck = Callable[[], Awaitable[bool]]


@dataclass(slots=True, eq=False)
class Host:
    """The core's services for plugins; one per app, built by `create_app`."""

    config: Config
    instance_id: str
    tasks: TaskTracker
    metrics: CollectorRegistry
    shutdown: asyncio.Event
    upstream_health: UpstreamHealth = field(default_factory=UpstreamHealth)
    caller: UpstreamCaller | None = None
    _checks: dict[str, HealthCheck] = field(default_factory=dict)
    _services: dict[str, object] = field(default_factory=dict)

    def upstreams(self) -> list[UpstreamStatus]:
        """Every configured upstream with its recent health (errors and time to first byte
        over the last five minutes), in config order."""
        return self.upstream_health.snapshot()

    @property
    def config_dir(self) -> Path:
        """The folder of the config file (the working directory for a config built in code):
        where a plugin keeps files beside proxy.yaml."""
        return Path(self.config.source).parent if self.config.source else Path.cwd()

    @property
    def admin_enabled(self) -> bool:
        """Whether `admin.token` is set; without it admin surfaces answer 404."""
        return bool(self.config.admin.token)

    def is_admin_token(self, presented: str) -> bool:
        """Constant-time check of a presented admin token (False when none is configured)."""
        token = self.config.admin.token
        return bool(token) and hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), token.encode())

    async def call_upstream(
        self,
        upstream: str,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> UpstreamReply:
        """Send `method path` to the configured upstream named `upstream`, with its
        credentials, and read the whole answer (at most 4 MiB). `path` is written as a
        client would (`/v1/videos/abc`). Raises `UpstreamCallError` when the upstream is
        unknown, unreachable or too slow. Only while the app runs (from `lifespan` on)."""
        if self.caller is None:
            raise UpstreamCallError("this app has no upstreams to call")
        return await self.caller(upstream, method, path, body=body, headers=headers, timeout=timeout)

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        """Report `check` as `name` in `/healthz`; a False answer (or an error) makes the
        proxy `degraded` with status 503."""
        if name in self._checks or name in ("status", "instance"):
            raise ValueError(f"health check {name!r} is already registered")
        self._checks[name] = check

    def remove_health_check(self, name: str) -> None:
        """Stop reporting `name` (a plugin's lifespan calls it on the way out)."""
        self._checks.pop(name, None)

    async def health(self) -> dict[str, bool]:
        """Run every health check; an exception counts as unhealthy."""
        results: dict[str, bool] = {}
        for name, check in self._checks.items():
            try:
                results[name] = bool(await check())
            except Exception:
                log.debug("health check %s failed", name, exc_info=True)
                results[name] = False
        return results

    def publish(self, name: str, service: object) -> None:
        """Offer `service` to other plugins and to the test harness under `name`."""
        self._services[name] = service

    def unpublish(self, name: str) -> None:
        """Withdraw a published service."""
        self._services.pop(name, None)

    def service(self, name: str) -> object:
        """The service published under `name`; `KeyError` when none is."""
        try:
            return self._services[name]
        except KeyError:
            raise KeyError(f"no plugin published a service named {name!r}") from None


HOST = web.AppKey("weir.host", Host)


def host_of(app: web.Application) -> Host:
    """The host of `app` (call it from a plugin's `lifespan` or a route handler)."""
    return app[HOST]
