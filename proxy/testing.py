"""The test harness for plugin authors, shipped as a pytest plugin (entry point `pytest11`).

Fixtures:
  * `fake_upstream`: a real loopback mock upstream (OpenAI, Anthropic and Gemini formats)
    whose `behaviour` knobs make it error, truncate, stall or omit usage.
  * `make_proxy`: `await make_proxy(plugins=[MyPlugin(cfg)])` starts a real Weir in front
    of `fake_upstream` and returns a `ProxyHandle` (`.url`, `.store`, `await .settled()`).
  * `read_sse`: `events = await read_sse(response)` parses an aiohttp response's SSE body
    (also importable as `proxy.testing.sse_events`).

A plugin test is a dozen lines with no mocks::

    async def test_adds_header(make_proxy, fake_upstream):
        proxy = await make_proxy(plugins=[InjectHeadersPlugin(...)])
        async with aiohttp.ClientSession() as s:
            r = await s.post(proxy.url + "/v1/chat/completions", json={...})
        assert fake_upstream.requests[-1].headers["x-team"] == "blue"
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy import keys
from proxy.app import create_app
from proxy.host import HOST, Host, TaskTracker
from proxy.config import Config, parse_config
from proxy.context import SSEEvent
from proxy.mock.upstream import MockBehaviour, MockUpstream
from proxy.plugin import Plugin
from proxy.sse import SSEParser

try:
    import pytest_asyncio

    _async_fixture: Any = pytest_asyncio.fixture
except ImportError:  # the harness needs pytest-asyncio; without it the fixtures are absent
    _async_fixture = None

__all__ = ["MockBehaviour", "ProxyHandle", "host_app", "proxy_config", "sse_events", "start_proxy"]


@dataclass(slots=True)
class ProxyHandle:
    """A running Weir: its base URL, app, store and a way to await settlement."""

    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def store(self) -> Any:
        """The service a plugin published as `store` (billing publishes its ledger there)."""
        return self.app[HOST].service("store")

    @property
    def openai_base(self) -> str:
        """The base URL for `openai.AsyncOpenAI(base_url=...)`."""
        return self.url + "/v1"

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until every terminal hook (settlement) has finished."""
        await self.app[keys.TASKS].idle(timeout)

    async def stop(self) -> None:
        """Shut the proxy down gracefully (terminal hooks are drained)."""
        await self.runner.cleanup()


async def start_proxy(
    config: Config,
    plugins: Sequence[Plugin] | None = None,
    instance_id: str | None = None,
) -> ProxyHandle:
    """Start Weir for `config` on a free loopback port."""
    app = create_app(config, plugins=plugins, instance_id=instance_id)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.server.shutdown_grace + 2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return ProxyHandle(f"http://{host}:{port}", app, runner)


def host_app(config: Config | None = None, *, instance_id: str = "test-instance",
             tracker: TaskTracker | None = None) -> web.Application:
    """An app with a host and nothing else: run a plugin's `lifespan` on it outside a server
    (unit tests, benchmarks). Drain `host_of(app).tasks` when done."""
    app = web.Application()
    shutdown = asyncio.Event()
    app[HOST] = Host(config or Config(), instance_id, tracker or TaskTracker(), CollectorRegistry(), shutdown)
    return app


async def sse_events(response: aiohttp.ClientResponse) -> list[SSEEvent]:
    """Read a whole SSE response body and return its events (comments dropped)."""
    parser = SSEParser()
    events: list[SSEEvent] = []
    async for chunk in response.content.iter_any():
        events.extend(i for i in parser.feed(chunk) if isinstance(i, SSEEvent))
    events.extend(i for i in parser.flush() if isinstance(i, SSEEvent))
    return events


def proxy_config(upstream_url: str, tmp: Path, **overrides: Any) -> Config:
    """A harness config: one mock-type upstream at `upstream_url`, SQLite in `tmp`."""
    data: dict[str, Any] = {
        "server": {"shutdown_grace": 1.0, "access_log": False},
        "store": {"backend": "sqlite", "path": str(tmp / "weir.db")},
        "upstreams": [{"name": "fake", "type": "mock", "base_url": upstream_url, "models": ["*"]}],
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) and isinstance(value, dict) else value
    return parse_config(data, env={})


if _async_fixture is not None:

    @_async_fixture  # type: ignore[untyped-decorator]
    async def fake_upstream() -> AsyncIterator[MockUpstream]:
        """A real loopback mock upstream; flip `fake_upstream.behaviour` knobs in tests."""
        mock = MockUpstream()
        await mock.start()
        yield mock
        await mock.stop()

    @_async_fixture  # type: ignore[untyped-decorator]
    async def make_proxy(
        fake_upstream: MockUpstream, tmp_path: Path
    ) -> AsyncIterator[Callable[..., Awaitable[ProxyHandle]]]:
        """Factory: `await make_proxy(plugins=[...], **config_overrides)`."""
        started: list[ProxyHandle] = []

        async def factory(
            plugins: Sequence[Plugin] = (), **overrides: Any
        ) -> ProxyHandle:
            config = proxy_config(fake_upstream.url, tmp_path / f"p{len(started)}", **overrides)
            (tmp_path / f"p{len(started)}").mkdir(exist_ok=True)
            handle = await start_proxy(config, plugins=list(plugins))
            started.append(handle)
            return handle

        yield factory
        for handle in reversed(started):
            await handle.stop()

    @pytest.fixture
    def read_sse() -> Callable[[aiohttp.ClientResponse], Awaitable[list[SSEEvent]]]:
        """`events = await read_sse(response)`: the SSE events of an aiohttp response."""
        return sse_events


def unique_prefix() -> str:
    """A fresh Redis key prefix for one test."""
    return f"weirtest:{uuid.uuid4().hex[:12]}"
