"""`create_app(config)`: routes, resources and their teardown order. Pure: no globals,
so tests build many apps in one process."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy import keys
from proxy.access_log import AccessLog
from proxy.config import Config
from proxy.context import Dialect
from proxy.dialects import (
    ANTHROPIC_ROUTES,
    AUDIO_ROUTE,
    GEMINI_PREFIXES,
    MODELS_ROUTE,
    OPENAI_ROUTES,
    Route,
    split_gemini_target,
)
from proxy.forward import Forwarder
from proxy.forwarded import TrustedProxies
from proxy.handler import Handler
from proxy.host import HOST, Host
from proxy.loopwatch import LoopWatch
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline
from proxy.plugin import Plugin
from proxy.preflight import preflight
from proxy.relay import ActiveStreams
from proxy.respond import error_response, unmatched
from proxy.task_apis import add_task_routes
from proxy.tasks import TaskTracker
from proxy.upstream import UpstreamPool
from proxy.upstream_call import UpstreamCaller
from proxy.upstream_health import UpstreamHealth
from proxy.web.admin_token import resolve_admin_token
from proxy.web.console import mount as mount_web_shell

if TYPE_CHECKING:
    from proxy.mock.upstream import MockUpstream

log = logging.getLogger(__name__)

ACTIVE = web.AppKey("weir.active_streams", ActiveStreams)
HANDLER = web.AppKey("weir.handler", Handler)
LOOP_WATCH = web.AppKey("weir.loop_watch", LoopWatch)


class PluginStartupError(Exception):
    """A plugin's `lifespan` failed, returned, or did not reach its `yield` in time: startup
    stops, and the message names the plugin."""


def create_app(
    config: Config,
    *,
    plugins: Sequence[Plugin] | None = None,
    instance_id: str | None = None,
) -> web.Application:
    """Build the Weir application for `config`.

    `plugins` overrides proxy.yaml's list (the test harness uses it). An `admin.token_file`
    is read (or created, on first start) here.
    """
    config = resolve_admin_token(config)
    loaded, warnings = preflight(config, plugins)
    for warning in warnings:
        log.warning("!!! %s", warning)
    app = web.Application(client_max_size=config.server.max_body_bytes)
    tracker = TaskTracker()
    metrics = Metrics(UpstreamHealth(config.upstreams))
    pool = UpstreamPool(config.upstreams, breaker=config.routing.breaker, on_breaker=metrics.breaker_changed)
    metrics.upstreams(up.name for up in pool.upstreams)
    active = ActiveStreams(config.server.client_write_timeout)
    trace = config.server.trace_plugins or os.environ.get("PROXY_TRACE_PLUGINS", "") not in ("", "0")
    pipeline = Pipeline(loaded, tracker, trace=trace)
    app[keys.CONFIG] = config
    app[keys.TASKS] = tracker
    app[keys.METRICS] = metrics
    app[keys.UPSTREAMS] = pool
    app[keys.PIPELINE] = pipeline
    app[keys.INSTANCE_ID] = instance_id or _instance_id(config.server.instance_id)
    app[keys.SHUTDOWN] = asyncio.Event()
    app[HOST] = Host(
        config,
        app[keys.INSTANCE_ID],
        tracker,
        metrics.registry,
        app[keys.SHUTDOWN],
        metrics.health,
        UpstreamCaller(pool),
    )
    app[ACTIVE] = active
    app[HANDLER] = Handler(
        pipeline,
        Forwarder(pool, config.routing.max_attempts, metrics, active),
        metrics,
        config.server.max_body_bytes,
        AccessLog() if config.server.access_log else None,
        config.server.body_timeout,
        TrustedProxies.from_config(config.server.trusted_proxies) or None,
    )
    # The access log first in, so that its cleanup writes the last lines.
    contexts: list[Context] = [_access_log_ctx]
    if config.server.loop_lag_warning > 0:
        app[LOOP_WATCH] = LoopWatch(loaded, config.server.loop_lag_warning)
        contexts.append(_loop_watch_ctx)
        app.on_startup.append(_serving)
    contexts += [_upstreams_ctx, *(_plugin_ctx(plugin) for plugin in loaded), _tracker_ctx]
    app.cleanup_ctx.append(_lifecycle(contexts))
    app.on_shutdown.append(_graceful_shutdown)
    mount_web_shell(app, config)
    _add_routes(app, loaded)
    return app


def _instance_id(name: str | None = None) -> str:
    # A configured name stays as the prefix, but every start gets a fresh suffix: a restart
    # under the same name (a StatefulSet pod) would otherwise heartbeat for its dead
    # predecessor, whose open holds would then never be resolved as orphans.
    base = name or f"{socket.gethostname()}-{os.getpid()}"
    return f"{base}-{secrets.token_hex(4)}"


async def _access_log_ctx(app: web.Application) -> AsyncIterator[None]:
    """Write the access log once a second while the app runs, and what is left at the end."""
    access = app[HANDLER].access
    if access is None:
        yield
        return
    writer = app[keys.TASKS].spawn_service(access.run(), name="access-log")
    try:
        yield
    finally:
        writer.cancel()
        access.flush()


async def _upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = app[keys.UPSTREAMS]
    mocks: list[MockUpstream] = []
    for up in pool.upstreams:
        if up.config.type == "mock" and not up.base_url:
            # Imported only when a built-in mock is configured (start-up time).
            from proxy.mock.upstream import MockUpstream

            mock = MockUpstream()
            up.base_url = await mock.start()
            mocks.append(mock)
    await pool.open()
    yield
    await pool.close()
    for mock in mocks:
        await mock.stop()


#: A resource paired with its teardown: an async generator function that yields once.
Context = Callable[[web.Application], AsyncIterator[None]]


def _lifecycle(contexts: Sequence[Context]) -> Context:
    """The app's resources as one cleanup context: started in order, torn down in reverse.

    One context rather than one each, because aiohttp's `run_app` does not tear down what
    had started when a later startup step fails: here, a failing step first tears down the
    ones before it (each resumed normally after its `yield`, as aiohttp would), so a plugin
    whose startup fails leaves no store open and no thread running behind it."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for context in contexts:
                steps = context(app).__aiter__()
                await steps.__anext__()
                stack.push_async_callback(_finish, steps)
            yield

    return lifecycle


async def _finish(steps: AsyncIterator[None]) -> None:
    try:
        await steps.__anext__()
    except StopAsyncIteration:
        return
    raise RuntimeError(f"{steps!r} has more than one 'yield'")


async def _loop_watch_ctx(app: web.Application) -> AsyncIterator[None]:
    # First in, so that it also watches the plugins' startup; the tracker stops it at shutdown.
    app[keys.TASKS].spawn_service(app[LOOP_WATCH].run(), name="loop-watch")
    yield


async def _serving(app: web.Application) -> None:
    """Startup is over (on_startup runs after every cleanup context): stalls now delay requests."""
    app[LOOP_WATCH].serving_since = time.monotonic()


def _plugin_ctx(plugin: Plugin) -> Callable[[web.Application], AsyncIterator[None]]:
    """The plugin's `lifespan` as a cleanup context, each half bounded by its
    `lifespan_timeout`: a startup that fails or hangs stops startup with the plugin's name;
    a teardown that fails or hangs is logged, and the other plugins' teardown still runs."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        life = plugin.lifespan(app)
        bound = plugin.lifespan_timeout
        try:
            async with asyncio.timeout(bound):
                await anext(life)
        except StopAsyncIteration:
            raise PluginStartupError(f"plugin {plugin.name}: lifespan returned without reaching its yield") from None
        except TimeoutError as exc:
            raise PluginStartupError(
                f"plugin {plugin.name}: lifespan did not reach its yield within {bound:g} s (lifespan_timeout)"
            ) from exc
        except Exception as exc:
            raise PluginStartupError(f"plugin {plugin.name}: lifespan failed at startup: {exc!r}") from exc
        yield
        try:
            async with asyncio.timeout(bound):
                await anext(life)
        except StopAsyncIteration:
            return
        except TimeoutError:
            log.error("plugin %s: lifespan teardown did not finish within %g s", plugin.name, bound)
        except Exception:
            log.exception("plugin %s: lifespan teardown failed", plugin.name)
        else:
            log.error("plugin %s: lifespan yielded more than once", plugin.name)
            close = getattr(life, "aclose", None)
            if close is not None:
                await close()

    return ctx


async def _tracker_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    # Before plugins and the store are torn down: settlement must finish first.
    await app[keys.TASKS].drain(timeout=max(30.0, app[keys.CONFIG].server.shutdown_grace))


#: After shutdown stopped the relays, how long it waits for them to deliver their outcomes
#: (a loop turn or two each); well within aiohttp's own timeout (`shutdown_grace + 5`).
_STOPPED_WAIT = 4.0


async def _graceful_shutdown(app: web.Application) -> None:
    """Let in-flight requests finish for `server.shutdown_grace` seconds, then end the
    streams still relaying.

    The grace waits for every request being served, not only for those already relaying: a
    request between its hold and the upstream's first byte would otherwise find the relays
    stopped when it starts its own, and be cut at once. Ending a stream aborts its client
    connection too, so a relay waiting on a client that stopped reading returns at once and
    delivers its terminal hook (outcome `shutdown`, the partial charge) before this returns:
    only then does aiohttp start its own timeout, after which it cancels handlers. Settlement runs in tracked tasks, which `_tracker_ctx` drains."""
    app[keys.SHUTDOWN].set()
    active, handler = app[ACTIVE], app[HANDLER]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + app[keys.CONFIG].server.shutdown_grace
    while (active.streams or handler.in_flight) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    active.abort_all()
    deadline = loop.time() + _STOPPED_WAIT
    while active.streams and loop.time() < deadline:
        await asyncio.sleep(0.01)
    if active.streams:
        log.error("%d relays did not end within %.0f s of being stopped", len(active.streams), _STOPPED_WAIT)


def _add_routes(app: web.Application, plugins: Sequence[Plugin]) -> None:
    handler = app[HANDLER]

    def bind(route: Route) -> Callable[[web.Request], Any]:
        async def serve(request: web.Request) -> web.StreamResponse:
            return await handler.handle(request, route)

        return serve

    for path, route in {**OPENAI_ROUTES, **ANTHROPIC_ROUTES}.items():
        app.router.add_post(path, bind(route))
    app.router.add_get("/v1/models", bind(MODELS_ROUTE))

    async def one_model(request: web.Request) -> web.StreamResponse:
        return await handler.handle(request, MODELS_ROUTE, model_in_path=request.match_info["model"])

    app.router.add_get("/v1/models/{model:.+}", one_model)
    app.router.add_post("/v1/audio/{tail:.+}", bind(AUDIO_ROUTE))
    add_task_routes(
        lambda method, path, route: app.router.add_route(method, path, bind(route)), app[keys.CONFIG].task_apis
    )

    async def gemini(request: web.Request) -> web.StreamResponse:
        split = split_gemini_target(request.match_info["target"])
        if split is None:
            return error_response(Dialect.GEMINI, 404, "not_found", "unknown Gemini method")
        model, route = split
        return await handler.handle(request, route, model_in_path=model)

    for prefix in GEMINI_PREFIXES:
        app.router.add_post(prefix + "/models/{target}", gemini)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    for plugin in plugins:
        app.router.add_routes(plugin.routes())
    # Last, and at the root of the route index: only requests no other route takes reach it.
    app.router.add_route("*", "/{tail:.*}", unmatched)


async def _healthz(request: web.Request) -> web.Response:
    """`ok` (200) when every plugin's health check passes (billing's: its store answers),
    else `degraded` (503); each check's result is in the body under its name."""
    checks = await request.app[HOST].health()
    healthy = all(checks.values())
    body = {"status": "ok" if healthy else "degraded", **checks, "instance": request.app[keys.INSTANCE_ID]}
    return web.json_response(body, status=200 if healthy else 503)


async def _metrics(request: web.Request) -> web.Response:
    """The Prometheus exposition; with `server.metrics_token` set, only for that bearer token."""
    token = request.app[HOST].config.server.metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return error_response(
                Dialect.OPENAI,
                401,
                "unauthorized",
                "/metrics needs the metrics token",
                {"WWW-Authenticate": "Bearer"},
            )
    return web.Response(body=request.app[keys.METRICS].render(), content_type="text/plain", charset="utf-8")
