"""A plugin cannot hang Weir or block it unnoticed (issue 15, item 4), with billing listed.

A `lifespan` that raises, returns or never reaches its `yield` stops startup with the
plugin's name; `weir serve` then exits non-zero (3) instead of hanging. A hook that blocks
the event loop is named in the log, with the request. `timeout:` and `lifespan_timeout:`
in proxy.yaml reach the plugin.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from proxy.app import PluginStartupError, create_app
from proxy.config import ConfigError, PluginSpec, parse_config
from proxy.host import host_of
from proxy.loader import load_plugins
from proxy.mock.upstream import MockUpstream
from proxy.plugin import Plugin, RequestContext, SSEEvent
from proxy.testing import proxy_config
from tests.e2e.conftest import PRICES
from tests.e2e.test_plugin_traps import ChainFactory, chain, split_events  # noqa: F401 (a fixture)
from tests.redis_server import free_port
from tests.reliability.procs import child_env


class NeverReady(Plugin):
    """Its `lifespan` waits forever before its `yield` (a connection that never comes up)."""

    name = "never-ready"

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        await asyncio.Event().wait()
        yield


class BrokenStart(Plugin):
    """Its `lifespan` raises before its `yield`."""

    name = "broken-start"

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        raise RuntimeError("cannot open the thing")
        yield


class NoYield(Plugin):
    """Its `lifespan` returns without yielding."""

    name = "no-yield"

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        if False:
            yield


@pytest.mark.parametrize(
    ("plugin", "says"),
    [
        (NeverReady(), "plugin never-ready: lifespan did not reach its yield within 0.5 s"),
        (BrokenStart(), "plugin broken-start: lifespan failed at startup: RuntimeError('cannot open the thing')"),
        (NoYield(), "plugin no-yield: lifespan returned without reaching its yield"),
    ],
)
async def test_a_lifespan_that_fails_or_hangs_stops_startup_naming_the_plugin(
    fake_upstream: MockUpstream, tmp_path: Path, plugin: Plugin, says: str
) -> None:
    plugin.lifespan_timeout = 0.5
    billing = BillingPlugin(BillingConfig(pricing={"models": PRICES}))
    app = create_app(proxy_config(fake_upstream.url, tmp_path), plugins=[billing, plugin])
    runner = web.AppRunner(app)
    started = time.monotonic()
    try:
        with pytest.raises(PluginStartupError) as err:
            await runner.setup()
        assert str(err.value).startswith(says)
        assert time.monotonic() - started < 20  # bounded (0.5 s plus billing's own startup)
        # Billing had started (its store is published) and is already torn down (its health
        # check is gone): `weir serve`, whose runner cleans up nothing then, leaves nothing open.
        assert host_of(app).service("store") is not None
        assert "store" not in await host_of(app).health()
    finally:
        await runner.cleanup()


def test_weir_serve_exits_non_zero_naming_the_plugin(tmp_path: Path) -> None:
    data = {
        "server": {"host": "127.0.0.1", "port": free_port(), "shutdown_grace": 1.0},
        "store": {"backend": "sqlite", "path": "./weir.db"},
        "upstreams": [{"name": "mock", "type": "mock", "models": ["mock-*"]}],
        "plugins": [
            {"use": "billing", "config": {"pricing": {"fallback": "none", "models": PRICES}}},
            {"use": "tests.e2e.test_plugin_startup:NeverReady", "lifespan_timeout": 1},
        ],
    }
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert "weir: startup failed: plugin never-ready: lifespan did not reach its yield within 1 s" in proc.stderr
    assert "serving on" not in proc.stdout


class Sleeper(Plugin):
    """Blocks the event loop with `time.sleep` on the second event of a stream."""

    name = "sleeper"
    seen = 0

    async def on_event(self, ctx: RequestContext, event: SSEEvent) -> None:
        self.seen += 1
        if self.seen == 2:
            time.sleep(1.0)  # the mistake under test


async def test_a_hook_that_blocks_the_loop_is_named_in_the_log(
    chain: ChainFactory,
    caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    caplog.set_level(logging.DEBUG, logger="proxy.loopwatch")
    c = await chain(Sleeper())
    status, rid, body = await c.post(
        {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 200 and split_events(body)[-1] == b"data: [DONE]"
    assert (await c.settled_once(rid)).details.end_reason == "completed"
    deadline = time.monotonic() + 10
    named = "plugin sleeper in on_event ("
    while time.monotonic() < deadline:
        found = [r for r in caplog.records if r.name == "proxy.loopwatch" and named in r.getMessage()]
        if found:
            break
        await asyncio.sleep(0.05)
    assert found, [r.getMessage() for r in caplog.records if r.name == "proxy.loopwatch"]
    assert found[0].levelno == logging.WARNING and f"[request {rid}]" in found[0].getMessage()


async def test_a_slow_non_critical_hook_is_cut_off_and_skipped(chain: ChainFactory) -> None:  # noqa: F811
    class SlowObserver(Plugin):
        name = "slow-observer"
        critical = False
        timeout = 0.2

        async def on_event(self, ctx: RequestContext, event: SSEEvent) -> None:
            await asyncio.sleep(30)

    c = await chain(SlowObserver())
    started = time.monotonic()
    status, rid, body = await c.post(
        {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 200 and split_events(body)[-1] == b"data: [DONE]"
    assert time.monotonic() - started < 20  # one 0.2 s overrun, then skipped for the rest
    assert (await c.settled_once(rid)).details.end_reason == "completed"


def test_timeouts_in_proxy_yaml_reach_the_plugin() -> None:
    use = "tests.e2e.test_plugin_startup:Sleeper"
    (plugin,) = load_plugins((PluginSpec(use, timeout=2.5, lifespan_timeout=4),))
    assert (plugin.timeout, plugin.lifespan_timeout) == (2.5, 4)
    (plugin,) = load_plugins((PluginSpec(use),))
    assert (plugin.timeout, plugin.lifespan_timeout) == (None, 30.0)
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.timeout: must be greater than 0"):
        parse_config({"plugins": [{"use": use, "timeout": 0}]}, env={})
    with pytest.raises(ConfigError, match=r"server\.loop_lag_warning"):
        parse_config({"server": {"loop_lag_warning": -1}}, env={})


async def test_unknown_paths_with_billing_listed_answer_json(chain: ChainFactory) -> None:  # noqa: F811
    c = await chain()
    async with aiohttp.ClientSession() as s, s.get(c.proxy.url + "/v1/chat/completions", headers=c.auth) as r:
        assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
