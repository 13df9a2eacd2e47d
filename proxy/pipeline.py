"""Hook dispatch: order, exactly-one terminal hook, isolation by phase, tracing.

`Pipeline` is built once per app from the loaded plugins. Each request gets a `Run`, which
remembers which plugins entered (their `on_request` returned) and guarantees that each of
them receives exactly one terminal hook, whatever happens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from proxy.context import Outcome, ProxyError, RequestContext, SSEEvent, UpstreamResponse
from proxy.plugin import Plugin, Reject
from proxy.tasks import TaskTracker

log = logging.getLogger(__name__)
trace_log = logging.getLogger("weir.trace")

HOOKS = (
    "lifespan",
    "routes",
    "on_request",
    "on_response_headers",
    "on_event",
    "on_body",
    "on_complete",
    "on_error",
)


class PluginFailed(Exception):
    """A critical plugin raised in a response hook; the response ends with plugin_failed."""

    def __init__(self, plugin: Plugin, hook: str, cause: BaseException) -> None:
        super().__init__(f"plugin {plugin.name} failed in {hook}: {cause!r}")
        self.plugin = plugin
        self.hook = hook


def overrides(plugin: Plugin, hook: str) -> bool:
    """True when `plugin`'s class overrides `hook` of the base `Plugin`."""
    return getattr(type(plugin), hook) is not getattr(Plugin, hook)


class Pipeline:
    """The ordered plugins, with per-hook lists of only the plugins that override each hook."""

    def __init__(self, plugins: Sequence[Plugin], tracker: TaskTracker, trace: bool = False) -> None:
        self.plugins = tuple(plugins)
        self.tracker = tracker
        self.trace = trace
        rev = tuple(reversed(self.plugins))
        self.header_hooks = tuple(p for p in rev if overrides(p, "on_response_headers"))
        self.event_hooks = tuple(p for p in rev if overrides(p, "on_event"))
        self.body_hooks = tuple(p for p in rev if overrides(p, "on_body"))
        self.complete_hooks = tuple(p for p in rev if overrides(p, "on_complete"))
        self.error_hooks = tuple(p for p in rev if overrides(p, "on_error"))
        # Per request, computed once here: which plugins run `on_request`, and each terminal
        # hook's plugins with their position (a Run's entered plugins are a prefix).
        self.request_plan = tuple((p, overrides(p, "on_request")) for p in self.plugins)
        position = {id(p): i for i, p in enumerate(self.plugins)}
        self.complete_plan = tuple((position[id(p)], p) for p in self.complete_hooks)
        self.error_plan = tuple((position[id(p)], p) for p in self.error_hooks)

    def start(self, ctx: RequestContext) -> Run:
        """Begin the hook sequence for one request."""
        return Run(self, ctx)


_NONE_SKIPPED: frozenset[int] = frozenset()


class Run:
    """One request's pass through the pipeline.

    `entered` counts the plugins whose `on_request` returned: `on_request` runs in order and
    stops at the first failure, so the entered plugins are always the first `entered` ones.
    """

    __slots__ = ("pipeline", "ctx", "entered", "skipped", "finished", "event_hooks")

    def __init__(self, pipeline: Pipeline, ctx: RequestContext) -> None:
        self.pipeline = pipeline
        self.ctx = ctx
        self.entered = 0
        self.skipped = _NONE_SKIPPED
        self.finished = False
        self.event_hooks = pipeline.event_hooks

    async def request(self) -> None:
        """Run `on_request` in order. Raises Reject, or PluginFailed (fail closed).

        Plugins that do not override `on_request` count as entered when reached.
        """
        ctx = self.ctx
        trace = self.pipeline.trace
        for plugin, hooked in self.pipeline.request_plan:
            if hooked:
                try:
                    if trace:
                        await self._call(plugin, "on_request", plugin.on_request(ctx))
                    else:
                        await plugin.on_request(ctx)
                except Reject:
                    raise
                except Exception as exc:
                    log.exception("plugin %s failed in on_request [request %s]", plugin.name, ctx.request_id)
                    raise PluginFailed(plugin, "on_request", exc) from exc
            self.entered += 1

    async def response_headers(self, upstream: UpstreamResponse) -> None:
        """Run `on_response_headers` in reverse order."""
        for plugin in self.pipeline.header_hooks:
            if id(plugin) in self.skipped:
                continue
            try:
                await self._call(plugin, "on_response_headers", plugin.on_response_headers(self.ctx, upstream))
            except Exception as exc:
                self._response_failure(plugin, "on_response_headers", exc)

    async def event(self, event: SSEEvent) -> SSEEvent | None:
        """Pass one event through `on_event` in reverse order; None means dropped."""
        ctx = self.ctx
        current: SSEEvent | None = event
        for plugin in self.event_hooks:
            try:
                if self.pipeline.trace:
                    current = await self._call(plugin, "on_event", plugin.on_event(ctx, current))  # type: ignore[arg-type]
                else:
                    current = await plugin.on_event(ctx, current)  # type: ignore[arg-type]
            except Exception as exc:
                self._response_failure(plugin, "on_event", exc)
                continue
            if current is None:
                return None
        return current

    async def body(self, body: bytes) -> bytes:
        """Pass a non-streamed body through `on_body` in reverse order."""
        trace = self.pipeline.trace
        for plugin in self.pipeline.body_hooks:
            if id(plugin) in self.skipped:
                continue
            try:
                if trace:
                    body = await self._call(plugin, "on_body", plugin.on_body(self.ctx, body))
                else:
                    body = await plugin.on_body(self.ctx, body)
            except Exception as exc:
                self._response_failure(plugin, "on_body", exc)
        return body

    def complete(self, outcome: Outcome) -> None:
        """Deliver `on_complete` to every entered plugin, once, in a tracked task.

        Returns at once: settlement never delays the client or the next request on a
        keep-alive connection, and shutdown waits for it.
        """
        if self._claim():
            self.ctx.end_reason = outcome.reason.value
            self.ctx.events_relayed = outcome.events
            self.pipeline.tracker.spawn(
                self._terminal("on_complete", self.pipeline.complete_plan, outcome),
                name=f"complete:{self.ctx.request_id}",
            )

    def error(self, error: ProxyError) -> None:
        """Deliver `on_error` to every entered plugin, once, in a tracked task."""
        if self._claim():
            self.ctx.end_reason = error.reason.value
            self.pipeline.tracker.spawn(
                self._terminal("on_error", self.pipeline.error_plan, error),
                name=f"error:{self.ctx.request_id}",
            )

    def _claim(self) -> bool:
        if self.finished:
            return False
        self.finished = True
        return True

    async def _terminal(self, hook: str, plan: Sequence[tuple[int, Plugin]], arg: Any) -> None:
        trace = self.pipeline.trace
        for position, plugin in plan:
            if position >= self.entered:
                continue
            try:
                if trace:
                    await self._call(plugin, hook, getattr(plugin, hook)(self.ctx, arg))
                else:
                    await getattr(plugin, hook)(self.ctx, arg)
            except Exception:
                log.exception("plugin %s failed in %s [request %s]", plugin.name, hook, self.ctx.request_id)

    def _response_failure(self, plugin: Plugin, hook: str, exc: Exception) -> None:
        log.error(
            "plugin %s failed in %s [request %s]: %r", plugin.name, hook, self.ctx.request_id, exc
        )
        if plugin.critical:
            raise PluginFailed(plugin, hook, exc) from exc
        self.skipped = self.skipped | {id(plugin)}
        self.event_hooks = tuple(p for p in self.event_hooks if p is not plugin)

    async def _call(self, plugin: Plugin, hook: str, aw: Awaitable[Any]) -> Any:
        if not self.pipeline.trace:
            return await aw
        t0 = time.perf_counter()
        try:
            return await aw
        finally:
            trace_log.info(
                "plugin=%s hook=%s request=%s took_us=%d",
                plugin.name, hook, self.ctx.request_id, (time.perf_counter() - t0) * 1e6,
            )

