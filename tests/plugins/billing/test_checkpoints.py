"""Billing's checkpoints come from a timer, not from events.

The plugin runs against a real SQLite store (no HTTP): `checkpoint_live` is what the timer
calls every `checkpoint_every` seconds. These tests read the holds back from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from plugins.billing.apikeys import generate_key
from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from plugins.billing.store.sqlite.store import SQLiteStore
from proxy.config import Config
from proxy.context import Dialect, Endpoint, EndReason, Outcome, ProxyError, RequestContext, SSEEvent
from proxy.dataclass_builder import build
from proxy.tasks import TaskTracker
from proxy.testing import host_app

BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "tell me about weirs"}], "stream": True}
BILLING = {"quota_per_usd": 500_000, "pricing": {"models": {"mock-gpt*": {"input": 10, "output": 100}}}}


class Harness:
    """A billing plugin bound to a SQLite store through its lifespan, and a funded key."""

    def __init__(self, plugin: BillingPlugin, store: SQLiteStore, tracker: TaskTracker, key: str) -> None:
        self.plugin, self.store, self.tracker, self.key = plugin, store, tracker, key
        self.count = 0

    async def request(self, age: float = 0.0) -> RequestContext:
        """A streamed chat request through `on_request` (held), as if it arrived `age` s ago."""
        self.count += 1
        headers = CIMultiDictProxy(CIMultiDict({"authorization": f"Bearer {self.key}"}))
        query: MultiDictProxy[str] = MultiDictProxy(MultiDict())
        ctx = RequestContext(
            f"req-{self.count}",
            Dialect.OPENAI,
            Endpoint.CHAT,
            "POST",
            "/v1/chat/completions",
            query,
            headers,
            "127.0.0.1",
            orjson.dumps(BODY),
            dict(BODY),
            "mock-gpt",
            True,
            api_key=self.key,
        )
        ctx.started_at -= age
        await self.plugin.on_request(ctx)
        return ctx

    async def words(self, ctx: RequestContext, n: int) -> None:
        """Feed `n` content events through `on_event`."""
        for i in range(n):
            payload = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f" word{i}"}}]}
            await self.plugin.on_event(ctx, SSEEvent(orjson.dumps(payload).decode()))

    async def checkpoint(self, ctx: RequestContext) -> int | None:
        """The checkpoint on `ctx`'s hold (None: never written)."""
        hold = await self.store.get_hold(ctx.request_id)
        assert hold is not None
        return hold.checkpoint


@contextlib.asynccontextmanager
async def harness(tmp_path: Path, **config: Any) -> AsyncIterator[Harness]:
    """The plugin's lifespan around a test; its services are stopped afterwards."""
    store = SQLiteStore(str(tmp_path / "weir.db"))
    tracker = TaskTracker()
    plugin = BillingPlugin(build(BillingConfig, {**BILLING, **config}, "config"), store=store)
    # The outbox goes next to proxy.yaml.
    app = host_app(Config(source=str(tmp_path / "proxy.yaml")), tracker=tracker)
    life = plugin.lifespan(app)
    await life.__anext__()
    try:
        await store.create_user("alice")
        await store.credit("alice", 10_000_000)
        clear, digest, hint = generate_key()
        await store.create_key("alice", digest, name="k", hint=hint)
        yield Harness(plugin, store, tracker, clear)
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await life.__anext__()
        await tracker.drain(10)


async def test_live_requests_older_than_the_period_are_checkpointed(tmp_path: Path) -> None:
    """Every due request gets the partial charge so far, a request with nothing relayed gets
    0 (the liveness signal), a young one none; the checkpoint equals what a broken ending
    (`shutdown`) then captures."""
    async with harness(tmp_path) as h:
        busy, quiet, young = await h.request(age=60), await h.request(age=60), await h.request()
        for ctx in (busy, young):
            await h.words(ctx, 5)
        await h.plugin.checkpoint_live()
        assert await h.checkpoint(quiet) == 0
        assert await h.checkpoint(young) is None
        so_far = await h.checkpoint(busy)
        assert so_far is not None and so_far > 0
        await h.plugin.on_complete(busy, Outcome(EndReason.SHUTDOWN, 200, 5))
        (row,) = [r for r in await h.store.query_logs(user="alice") if r.request_id == busy.request_id]
        assert (row.charge, row.details.end_reason, row.details.usage_source) == (so_far, "shutdown", "partial")


async def test_settled_requests_are_no_longer_checkpointed_and_a_failure_skips_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its terminal hook a request is never checkpointed again; a store error on one
    request's checkpoint is logged and the others are still written."""
    async with harness(tmp_path) as h:
        done, failing, other = [await h.request(age=60) for _ in range(3)]
        await h.plugin.on_complete(done, Outcome(EndReason.COMPLETED, 200, 0))
        calls: list[str] = []
        real = h.store.checkpoint

        async def checkpoint(request_id: str, charge: int) -> bool:
            calls.append(request_id)
            if request_id == failing.request_id:
                raise OSError("disk on fire")
            return await real(request_id, charge)

        monkeypatch.setattr(h.store, "checkpoint", checkpoint)
        await h.plugin.checkpoint_live()
        assert sorted(calls) == sorted([failing.request_id, other.request_id])
        assert await h.checkpoint(other) == 0 and await h.checkpoint(failing) is None


async def test_the_timer_checkpoints_without_any_event(tmp_path: Path) -> None:
    """With `checkpoint_every` 0.05 s, a request that receives no event at all (a relay
    blocked on its client) still gets its checkpoint from the plugin's timer."""
    async with harness(tmp_path, checkpoint_every=0.05) as h:
        ctx = await h.request()
        await h.words(ctx, 3)
        deadline = time.monotonic() + 30
        while await h.checkpoint(ctx) is None:
            assert time.monotonic() < deadline, "no checkpoint within 30 s"
            await asyncio.sleep(0.05)
        assert (await h.checkpoint(ctx) or 0) > 0
        await h.plugin.on_error(ctx, ProxyError(EndReason.UPSTREAM_ERROR, 502, "upstream_error", "test"))
