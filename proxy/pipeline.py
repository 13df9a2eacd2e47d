"""Hook dispatch: order, exactly-one terminal hook, isolation by phase, checked results,
time limits, tracing.

`Pipeline` is built once per app from the loaded plugins. Each request gets a `Run`, which
remembers which plugins entered (their `on_request` returned) and guarantees that each of
them receives exactly one terminal hook, whatever another plugin returns or raises.

What a hook hands back is checked where it returns, so a mistake is blamed on the plugin
that made it (not on the next plugin, or the relay): `on_event` returns an `SSEEvent`,
None (unchanged) or `DROP`; `on_body` bytes or None (unchanged); the other hooks None.
Headers a plugin set for the upstream or the client must be strings without line breaks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import orjson

from proxy.context import EndReason, Outcome, ProxyError, RequestContext, SSEEvent, UpstreamResponse
from proxy.event_filter import EventFilter, StreamFilters
from proxy.hook_checks import header_problem, reject_problem
from proxy.plugin import DROP, Drop, Plugin, Reject
from proxy.tasks import TaskTracker

log = logging.getLogger(__name__)
trace_log = logging.getLogger("weir.trace")

HOOKS = (
    "lifespan",
    "routes",
    "on_request",
    "on_response_headers",
    "on_event",
    "event_filter",
    "on_body",
    "on_complete",
    "on_error",
)


class PluginFailed(Exception):
    """A plugin failed in a hook; the request is refused or the response ends with
    `plugin_failed`. `plugin` is None when no single plugin can be blamed."""

    def __init__(self, plugin: Plugin | None, hook: str, cause: BaseException) -> None:
        who = f"plugin {plugin.name}" if plugin is not None else "the plugins"
        # The exception's type only: this text reaches plugins (`Outcome.error`) and the
        # consume log; its message and traceback are in the proxy's log line.
        super().__init__(f"{who} failed in {hook} ({type(cause).__name__})")
        self.plugin = plugin
        self.hook = hook


class HookResultError(TypeError):
    """A hook returned something of the wrong type (or set a header that cannot be sent)."""


class HookTimeout(TimeoutError):
    """A hook did not finish within its plugin's `timeout`."""


def overrides(plugin: Plugin, hook: str) -> bool:
    """True when `plugin`'s class overrides `hook` of the base `Plugin`."""
    return getattr(type(plugin), hook) is not getattr(Plugin, hook)


def hook_name(plugin: Plugin, hook: str) -> str:
    """`module.Class.hook`: where a plugin author finds the hook that misbehaved."""
    cls = type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}.{hook}"


def _wrong(plugin: Plugin, hook: str, value: object, expected: str) -> HookResultError:
    return HookResultError(f"{hook_name(plugin, hook)} returned {type(value).__name__}; expected {expected}")


class Pipeline:
    """The ordered plugins, with per-hook lists of only the plugins that override each hook."""

    def __init__(self, plugins: Sequence[Plugin], tracker: TaskTracker, trace: bool = False) -> None:
        self.plugins = tuple(plugins)
        self.tracker = tracker
        self.trace = trace
        rev = tuple(reversed(self.plugins))
        self.header_hooks = tuple(p for p in rev if overrides(p, "on_response_headers"))
        self.event_hooks = tuple(p for p in rev if overrides(p, "on_event"))
        #: The plugins among `event_hooks` that declare what they see (`Plugin.event_filter`).
        self.filter_hooks = tuple(p for p in self.event_hooks if overrides(p, "event_filter"))
        self.body_hooks = tuple(p for p in rev if overrides(p, "on_body"))
        self.complete_hooks = tuple(p for p in rev if overrides(p, "on_complete"))
        self.error_hooks = tuple(p for p in rev if overrides(p, "on_error"))
        # Per request, computed once here: which plugins run `on_request`, and each terminal
        # hook's plugins with their position (a Run's entered plugins are a prefix).
        self.request_plan = tuple((p, overrides(p, "on_request")) for p in self.plugins)
        self.requests_hooked = any(hooked for _, hooked in self.request_plan)
        position = {id(p): i for i, p in enumerate(self.plugins)}
        self.complete_plan = tuple((position[id(p)], p) for p in self.complete_hooks)
        self.error_plan = tuple((position[id(p)], p) for p in self.error_hooks)
        # Hooks are awaited directly unless tracing or a plugin's time limit needs a wrapper.
        self.direct = not trace and all(p.timeout is None for p in self.plugins)

    def start(self, ctx: RequestContext) -> Run:
        """Begin the hook sequence for one request."""
        return Run(self, ctx)


_NONE_SKIPPED: frozenset[int] = frozenset()
_REASON_TEXT = {reason: reason.value for reason in EndReason}  # `.value` is a Python-level call


class Run:
    """One request's pass through the pipeline.

    `entered` counts the plugins whose `on_request` returned: `on_request` runs in order and
    stops at the first failure, so the entered plugins are always the first `entered` ones.
    """

    __slots__ = ("pipeline", "ctx", "entered", "skipped", "finished", "event_hooks", "filters")

    def __init__(self, pipeline: Pipeline, ctx: RequestContext) -> None:
        self.pipeline = pipeline
        self.ctx = ctx
        self.entered = 0
        self.skipped = _NONE_SKIPPED
        self.finished = False
        self.event_hooks = pipeline.event_hooks
        #: Set by `open_stream` when a plugin declared an `EventFilter`.
        self.filters: StreamFilters | None = None

    async def request(self) -> None:
        """Run `on_request` in order. Raises Reject, or PluginFailed (fail closed).

        Plugins that do not override `on_request` count as entered when reached. A plugin
        whose hook returned has entered even when what it returned or set is refused: it
        is owed its terminal hook. Afterwards `ctx.json` (changes made in place included)
        becomes the body sent upstream.
        """
        ctx = self.ctx
        direct = self.pipeline.direct
        for plugin, hooked in self.pipeline.request_plan:
            if not hooked:
                self.entered += 1
                continue
            try:
                if direct:
                    result = await plugin.on_request(ctx)  # type: ignore[func-returns-value]
                else:
                    result = await self._call(plugin, "on_request", plugin.on_request(ctx))
            except Reject as exc:
                problem = reject_problem(exc)
                if problem is None:
                    raise
                self._request_failure(plugin, HookResultError(f"{hook_name(plugin, 'on_request')}: {problem}"))
            except Exception as exc:
                self._request_failure(plugin, exc)
            self.entered += 1
            if result is not None:
                self._request_failure(plugin, _wrong(plugin, "on_request", result, "None"))
            if ctx.upstream_headers or ctx.response_headers:
                problem = header_problem(ctx)
                if problem is not None:
                    self._request_failure(plugin, HookResultError(f"{hook_name(plugin, 'on_request')}: {problem}"))
        if ctx.json is not None and self.pipeline.requests_hooked:
            try:
                ctx.body = orjson.dumps(ctx.json)
            except TypeError as exc:  # orjson's JSONEncodeError: something a plugin put in ctx.json
                self._unserialisable(exc)

    def _unserialisable(self, exc: TypeError) -> NoReturn:
        names = ", ".join(p.name for p, hooked in self.pipeline.request_plan if hooked)
        log.error(
            "ctx.json cannot be serialised after on_request (plugins: %s) [request %s]",
            names,
            self.ctx.request_id,
            exc_info=exc,
        )
        raise PluginFailed(None, "on_request", exc) from exc

    def _request_failure(self, plugin: Plugin, exc: BaseException) -> NoReturn:
        log.error("plugin %s failed in on_request [request %s]", plugin.name, self.ctx.request_id, exc_info=exc)
        raise PluginFailed(plugin, "on_request", exc) from exc

    async def response_headers(self, upstream: UpstreamResponse) -> None:
        """Run `on_response_headers` in reverse order."""
        ctx = self.ctx
        for plugin in self.pipeline.header_hooks:
            if id(plugin) in self.skipped:
                continue
            try:
                result = await self._call(plugin, "on_response_headers", plugin.on_response_headers(ctx, upstream))
                if result is not None:
                    raise _wrong(plugin, "on_response_headers", result, "None")
                problem = header_problem(ctx)
                if problem is not None:
                    raise HookResultError(f"{hook_name(plugin, 'on_response_headers')}: {problem}")
            except Exception as exc:
                self._response_failure(plugin, "on_response_headers", exc)

    async def event(self, event: SSEEvent) -> SSEEvent | None:
        """Pass one event through `on_event` in reverse order; None means dropped.

        Every plugin sees every event: use what `open_stream` returns, which honours the
        plugins' `EventFilter`s."""
        ctx = self.ctx
        direct = self.pipeline.direct
        current = event
        for plugin in self.event_hooks:
            try:
                if direct:
                    out = await plugin.on_event(ctx, current)
                else:
                    out = await self._call(plugin, "on_event", plugin.on_event(ctx, current))
                if out is None:
                    continue  # unchanged
                if not isinstance(out, SSEEvent):
                    if out is DROP:
                        return None
                    raise _wrong(plugin, "on_event", out, "an SSEEvent, None (unchanged) or DROP")
            except Exception as exc:
                self._response_failure(plugin, "on_event", exc)
                continue
            current = out
        return current

    def open_stream(self) -> Callable[[SSEEvent], Awaitable[SSEEvent | None]]:
        """Before a stream's first event: ask each plugin that overrides `event_filter` what
        its `on_event` should see (a failure is the plugin's, in `on_event`'s phase).

        Returns what passes one event through the plugins for this stream: `event`, or
        `filtered_event` when a plugin declared an `EventFilter` (then see `passing`)."""
        if not self.pipeline.filter_hooks:
            return self.event
        filters: dict[int, EventFilter] = {}
        for plugin in self.pipeline.filter_hooks:
            if plugin not in self.event_hooks:
                continue  # skipped after a failure
            try:
                declared = plugin.event_filter(self.ctx)
                if declared is not None and not isinstance(declared, EventFilter):
                    raise _wrong(plugin, "event_filter", declared, "an EventFilter or None")
            except Exception as exc:
                self._response_failure(plugin, "on_event", exc)
                continue
            if declared is not None:
                filters[id(plugin)] = declared
        if not filters:
            return self.event
        self.filters = StreamFilters(filters)
        self.filters.plan(self.event_hooks)
        return self.filtered_event

    def passing(self) -> tuple[Any, str | None, Callable[[bytes], None] | None, int]:
        """For the relay to pass events by the plugins without a call, when they all declared
        a filter: `gate`, `needle` (`StreamFilters`), `keep` (keeps a passed-by event on the
        tapes) and `room`: how many may pass by before one must go through `filtered_event`
        (so that a full tape's plugin is called). Read again after each `filtered_event`."""
        filters = self.filters
        assert filters is not None
        return filters.gate, filters.needle, filters.keep, filters.room()

    async def filtered_event(self, event: SSEEvent) -> SSEEvent | None:
        """`event`, honouring each plugin's `EventFilter`: its tape keeps the event as it
        reached the plugin, and its `on_event` runs only when the pattern matches (or the
        tape is full). A plugin that declared nothing sees every event."""
        filters = self.filters
        assert filters is not None
        current = event
        for plugin in self.event_hooks:
            if not filters.wanted(plugin, current):
                continue
            out = await self._one_event(plugin, current)
            if out is None:
                continue
            if out is DROP:
                return None
            current = out
        return current

    async def _one_event(self, plugin: Plugin, event: SSEEvent) -> SSEEvent | Drop | None:
        """One plugin's `on_event`, checked: an SSEEvent, DROP, or None (unchanged or failed)."""
        try:
            if self.pipeline.direct:
                out = await plugin.on_event(self.ctx, event)
            else:
                out = await self._call(plugin, "on_event", plugin.on_event(self.ctx, event))
            if out is None or out is DROP or isinstance(out, SSEEvent):
                return out
            raise _wrong(plugin, "on_event", out, "an SSEEvent, None (unchanged) or DROP")
        except Exception as exc:
            self._response_failure(plugin, "on_event", exc)
            return None

    async def body(self, body: bytes) -> bytes:
        """Pass a non-streamed body through `on_body` in reverse order."""
        direct = self.pipeline.direct
        for plugin in self.pipeline.body_hooks:
            if id(plugin) in self.skipped:
                continue
            try:
                if direct:
                    out = await plugin.on_body(self.ctx, body)
                else:
                    out = await self._call(plugin, "on_body", plugin.on_body(self.ctx, body))
                if out is None:
                    continue  # unchanged
                if not isinstance(out, bytes):
                    raise _wrong(plugin, "on_body", out, "bytes or None (unchanged)")
            except Exception as exc:
                self._response_failure(plugin, "on_body", exc)
                continue
            body = out
        return body

    def complete(self, outcome: Outcome) -> None:
        """Deliver `on_complete` to every entered plugin, once, in a tracked task.

        Returns at once: settlement never delays the client or the next request on a
        keep-alive connection, and shutdown waits for it.
        """
        if self._claim():
            self.ctx.end_reason = _REASON_TEXT[outcome.reason]
            self.ctx.events_relayed = outcome.events
            self.pipeline.tracker.spawn(
                self._terminal("on_complete", self.pipeline.complete_plan, outcome),
                name=f"complete:{self.ctx.request_id}",
            )

    def error(self, error: ProxyError) -> None:
        """Deliver `on_error` to every entered plugin, once, in a tracked task."""
        if self._claim():
            self.ctx.end_reason = _REASON_TEXT[error.reason]
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
        direct = self.pipeline.direct
        for position, plugin in plan:
            if position >= self.entered:
                continue
            try:
                if direct:
                    result = await getattr(plugin, hook)(self.ctx, arg)
                else:
                    result = await self._call(plugin, hook, getattr(plugin, hook)(self.ctx, arg))
                if result is not None:
                    raise _wrong(plugin, hook, result, "None")
            except Exception as exc:
                log.error("plugin %s failed in %s [request %s]", plugin.name, hook, self.ctx.request_id, exc_info=exc)

    def _response_failure(self, plugin: Plugin, hook: str, exc: Exception) -> None:
        log.error("plugin %s failed in %s [request %s]", plugin.name, hook, self.ctx.request_id, exc_info=exc)
        if plugin.critical:
            raise PluginFailed(plugin, hook, exc) from exc
        self.skipped = self.skipped | {id(plugin)}
        self.event_hooks = tuple(p for p in self.event_hooks if p is not plugin)
        if self.filters is not None:
            self.filters.plan(self.event_hooks)

    async def _call(self, plugin: Plugin, hook: str, aw: Awaitable[Any]) -> Any:
        """Await one hook call within the plugin's `timeout` (when it has one), timed when
        tracing is on."""
        timeout = plugin.timeout
        if not self.pipeline.trace:
            return await (aw if timeout is None else _limited(plugin, hook, aw, timeout))
        t0 = time.perf_counter()
        try:
            return await (aw if timeout is None else _limited(plugin, hook, aw, timeout))
        finally:
            trace_log.info(
                "plugin=%s hook=%s request=%s took_us=%d",
                plugin.name,
                hook,
                self.ctx.request_id,
                (time.perf_counter() - t0) * 1e6,
            )


async def _limited(plugin: Plugin, hook: str, aw: Awaitable[Any], timeout: float) -> Any:
    """`aw` within `timeout` seconds; a `HookTimeout` (a plugin failure) when it overruns.
    A TimeoutError the hook raises itself passes through as the hook's own error."""
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            return await aw
    except TimeoutError:
        if limit.expired():
            raise HookTimeout(f"{hook_name(plugin, hook)} did not finish within its timeout of {timeout:g} s") from None
        raise
