"""A plugin that breaks the relay cannot break billing.

A hook that returns something the relay cannot send (here `on_event` returning a string
instead of an `SSEEvent`) is caught where it returns, blamed on that plugin, and ends the
stream with the dialect's error event. Every plugin still gets its terminal hook
(`plugin_failed`), so billing settles what was relayed: the hold is resolved at once (not
left reserved until a restart), one consume-log row is written, and the books balance.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from plugins.billing.apikeys import generate_key
from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from plugins.billing.store.base import Store
from proxy.context import RequestContext, SSEEvent
from proxy.mock.upstream import MockUpstream
from proxy.plugin import Plugin
from proxy.testing import proxy_config, start_proxy
from tests.e2e.conftest import PRICES

FUNDS = 500_000


async def _funded_key(store: Store) -> str:
    """Create user alice with `FUNDS` and a key; return the key in clear."""
    await store.create_user("alice")
    await store.credit("alice", FUNDS, note="test funding")
    clear, digest, hint = generate_key()
    await store.create_key("alice", digest, name="k", hint=hint)
    return clear


class WrongType(Plugin):
    """Returns a str from `on_event` after the third event: a plugin author's mistake."""

    name = "wrong-type"

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    async def on_event(self, ctx: RequestContext, event: SSEEvent) -> Any:
        """Pass three events, then hand back something that is not an event."""
        self.seen += 1
        return event if self.seen <= 3 else "not an event"


async def test_a_plugin_that_breaks_the_relay_still_gets_the_stream_settled(
    fake_upstream: MockUpstream, tmp_path: Path
) -> None:
    fake_upstream.behaviour.words, fake_upstream.behaviour.pace = 30, 0.01  # one event per chunk
    cfg = proxy_config(fake_upstream.url, tmp_path)
    proxy = await start_proxy(cfg, plugins=[WrongType(), BillingPlugin(BillingConfig(pricing={"models": PRICES}))])
    try:
        store = proxy.store
        clear = await _funded_key(store)
        body = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
        got = b""
        async with (
            aiohttp.ClientSession() as s,
            s.post(proxy.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {clear}"}) as r,
        ):
            assert r.status == 200
            rid = r.headers["x-request-id"]
            async for chunk in r.content.iter_any():
                got += chunk
        # Three events reached the client, then the dialect's error event (no exception
        # text, the request id), and no [DONE]: the stream visibly failed.
        *events, last = [e for e in got.split(b"\n\n") if e]
        assert b"[DONE]" not in got and len(events) == 3
        error = orjson.loads(last.removeprefix(b"data: "))["error"]
        assert error["code"] == "plugin_failed" and rid in error["message"] and "str" not in error["message"]
        await proxy.settled()
        assert await store.open_holds() == []
        (row,) = await store.query_logs(user="alice", limit=10)
        assert row.request_id == rid and row.details.end_reason == "plugin_failed"
        assert row.charge > 0  # the prompt and the three relayed chunks are billed (partial)
        user = await store.get_user("alice")
        assert user is not None and (user.balance, user.reserved) == (FUNDS - row.charge, 0)
        assert (await store.audit(time.time(), 30)).ok
    finally:
        await proxy.stop()


async def test_a_failure_after_the_hold_releases_it_and_forgets_the_request(
    fake_upstream: MockUpstream, tmp_path: Path, monkeypatch: Any
) -> None:
    """Billing's own `on_request` fails after its hold was written (here, setting up the
    output counter raises). The plugin gets no terminal hook for such a request, so it
    must give the hold back itself: the client gets the dialect's 500, the upstream is never
    called, the hold is released (one log row, charge 0), and the request is not left
    tracked as in flight, where it would shield a stray hold from the sweep."""
    cfg = proxy_config(fake_upstream.url, tmp_path)
    billing = BillingPlugin(BillingConfig(pricing={"models": PRICES}))
    proxy = await start_proxy(cfg, plugins=[billing])
    try:
        store = proxy.store
        clear = await _funded_key(store)

        class BrokenCounter:
            def __init__(self, real: Any) -> None:
                self.family = real.family

            def counter(self, family: str) -> Any:
                raise RuntimeError("counter unavailable")

        monkeypatch.setattr(billing, "tokenizer", BrokenCounter(billing.tokenizer))
        body = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
        async with (
            aiohttp.ClientSession() as s,
            s.post(proxy.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {clear}"}) as r,
        ):
            assert r.status == 500
            assert (await r.json())["error"]["code"] == "plugin_failed"
            rid = r.headers["x-request-id"]
        await proxy.settled()
        assert fake_upstream.requests == []
        assert await store.open_holds() == []
        (row,) = await store.query_logs(user="alice", limit=10)
        assert (row.request_id, row.charge, row.details.end_reason) == (rid, 0, "plugin_failed")
        assert rid not in billing._sweeper
        user = await store.get_user("alice")
        assert user is not None and (user.balance, user.reserved) == (FUNDS, 0)
        assert (await store.audit(time.time(), 30)).ok
    finally:
        await proxy.stop()
