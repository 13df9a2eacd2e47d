"""The public plugin API: subclass `Plugin`, override the hooks you need.

These docstrings are the hook contract; `docs/plugins.md` documents each hook with an
example, and `tests/test_docs.py` fails when a hook is undocumented.

Ordering: `on_request` runs in proxy.yaml order; every response hook and terminal hook
runs in reverse order, as an onion would. Every plugin whose `on_request` returned gets
exactly one terminal hook (`on_complete` or `on_error`), exactly once.

What a hook returns is checked: `on_event` returns an `SSEEvent`, None (unchanged) or
`DROP`; `on_body` bytes or None (unchanged); every other hook None. A wrong type is a
failure of the plugin that returned it, handled by the phase's rules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Final

from aiohttp import web

from proxy.context import (
    Dialect,
    Endpoint,
    EndReason,
    Outcome,
    ProxyError,
    RequestContext,
    SSEEvent,
    StateKey,
    UpstreamResponse,
    UpstreamTarget,
)
from proxy.event_filter import EventFilter, EventTape

__all__ = [
    "DROP",
    "Dialect",
    "Drop",
    "EndReason",
    "Endpoint",
    "EventFilter",
    "EventTape",
    "NoConfig",
    "Outcome",
    "Plugin",
    "ProxyError",
    "Reject",
    "RequestContext",
    "SSEEvent",
    "StateKey",
    "UpstreamResponse",
    "UpstreamTarget",
]


class Reject(Exception):
    """Stop a request with an error answered in the endpoint's dialect.

    The only control-flow exception. Raised from `on_request` it refuses the request:
    plugins that already entered get `on_error` with reason `rejected`. `headers` are
    added to the error response (e.g. `Retry-After`).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class Drop(Enum):
    """The type of `DROP`."""

    DROP = "drop"


#: Returned from `on_event` to drop the event: it is not relayed, and the plugins after
#: this one do not see it. (None means "unchanged", so a forgotten `return` drops nothing.)
DROP: Final = Drop.DROP


@dataclass(frozen=True, slots=True)
class NoConfig:
    """The config of a plugin that takes none."""


class Plugin:
    """Base class for Weir plugins. Every hook is an async no-op by default.

    Class attributes:
      * `name`: the plugin's name, used in logs and traces.
      * `Config`: a frozen dataclass built from the plugin's `config:` block in
        proxy.yaml; unknown keys are rejected with their YAML path.
      * `critical`: when False, an exception in a response hook (`on_response_headers`,
        `on_event`, `on_body`) is logged and the plugin is skipped for the rest of that
        request; when True (the default) the response ends with `plugin_failed`.
      * `authenticates`: True for a plugin that refuses requests without a valid client
        credential. Weir refuses to listen beyond loopback unless one is listed (or
        `server.allow_unauthenticated` is set).
      * `timeout`: seconds each hook call may take (None: no limit); an overrun is a
        failure of the plugin in that hook. proxy.yaml's `timeout:` on the plugin's entry
        sets it.
      * `lifespan_timeout`: seconds `lifespan` may take to reach its `yield`, and its
        teardown to finish; proxy.yaml's `lifespan_timeout:` sets it. An overrun at
        startup stops startup, naming the plugin.

    Only overridden hooks are called, so an unused hook costs nothing per event.
    """

    name: ClassVar[str] = "plugin"
    Config: ClassVar[type[Any]] = NoConfig
    critical: ClassVar[bool] = True
    authenticates: ClassVar[bool] = False
    timeout: float | None = None
    lifespan_timeout: float = 30.0

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """Set up and tear down resources around the app's life (an aiohttp cleanup_ctx).

        Runs once at startup, before the first request, in proxy.yaml order; the code after
        `yield` runs at shutdown in reverse order, after in-flight terminal hooks have
        finished. An exception before `yield`, or not reaching it within `lifespan_timeout`
        seconds, stops startup with the plugin's name (`weir serve` exits non-zero).
        """
        yield

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        """Extra HTTP routes this plugin serves (admin pages, webhooks). Default: none.

        Called once while the app is built. Routes are served as they are: protect them
        yourself.
        """
        return ()

    async def on_request(self, ctx: RequestContext) -> None:
        """Inspect or change a request before it is sent upstream.

        Fires once per request, in proxy.yaml order, after the body is read and parsed.
        May mutate `ctx`: `ctx.json` in place or with `ctx.set_json` (what it holds after
        the last `on_request` is what is sent upstream), `ctx.set_body`,
        `ctx.upstream_headers`, `ctx.response_headers` (str values), `ctx.state`,
        `ctx.drain_on_disconnect`. Raise `Reject` to refuse the request. Fails closed: any
        other exception, a time-out or a returned value refuses the request with a 500 and
        the plugins already entered get `on_error`. Once it returns, this plugin is
        guaranteed exactly one terminal hook.
        """

    async def on_response_headers(self, ctx: RequestContext, upstream: UpstreamResponse) -> None:
        """See the upstream's 2xx status and headers before any byte is relayed.

        Fires once per request that got a successful upstream answer, in reverse order.
        May add to `ctx.response_headers`. Error policy: see `critical`.
        """

    async def on_event(self, ctx: RequestContext, event: SSEEvent) -> SSEEvent | Drop | None:
        """See each SSE event of a streamed response; return a replacement, `DROP` or None.

        Fires per event, in reverse order; each plugin sees what the previous one returned.
        None (or the event itself) leaves it unchanged; `DROP` drops it (later plugins do
        not see it). An event passed on unchanged is relayed as its original bytes. Also
        fires for events read while draining after a client disconnect (they are not
        relayed). Any other return value is a failure. Error policy: see `critical`.
        A plugin that declares an `EventFilter` (`event_filter`) is called only on the
        events its filter lets through; the others pass it unchanged.
        """
        return None

    def event_filter(self, ctx: RequestContext) -> EventFilter | None:
        """Declare which events of this streamed response `on_event` needs to see.

        Called once per streamed response, before its first event, for a plugin that
        overrides `on_event` (and is not skipped). Return None (the default) to see every
        event, or an `EventFilter`: a bytes pattern the relay tests (in C) on each event's
        raw bytes, so that `on_event` runs only on the events it matches, and optionally an
        `EventTape` on which the relay keeps every event that reached this plugin, for it
        to read when it needs them. Events `on_event` does not see pass it unchanged; the
        order of the hooks, `DROP` and the error policy are as for `on_event`. Costs the
        relay a pattern search per event instead of a hook call. An exception or a wrong
        return value is a failure in `on_event`.
        """
        return None

    async def on_body(self, ctx: RequestContext, body: bytes) -> bytes | None:
        """See, and optionally replace, the whole body of a non-streamed 2xx response.

        Fires once, in reverse order, before the body is written to the client. Return new
        bytes to replace it; None (or the body itself) leaves it unchanged. Error policy:
        see `critical`.
        """
        return None

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        """A response was started; this is how it ended. Terminal: fires exactly once.

        Fires in reverse order, isolated from other plugins (an exception is logged and
        the next plugin still runs), inside a tracked task that shutdown waits for, so a
        client disconnect never cancels it midway. `outcome.reason` is completed,
        client_disconnected, upstream_truncated, upstream_error, plugin_failed or shutdown.
        """

    async def on_error(self, ctx: RequestContext, error: ProxyError) -> None:
        """Nothing was delivered to the client; this is why. Terminal: fires exactly once.

        Fires in reverse order for every plugin whose `on_request` returned, when the
        upstream failed (after failover), a later plugin rejected the request, a plugin
        failed, or the proxy shut down before a response started. Isolated and tracked as
        `on_complete` is.
        """
