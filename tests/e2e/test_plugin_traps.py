"""No plugin can break billing or a stream silently (issue 15, item 4).

A misbehaving plugin runs together with billing, listed after it: in the response hooks
(reverse order) it runs before billing, so a result it gets wrong would reach billing next
and, unchecked, be blamed on billing. Each case checks what the client sees (an error in
the endpoint's dialect where the answer broke, never the exception's text), that billing
settled the request exactly once (one log row, no open hold, the books balanced, audit
clean), and that the log names the guilty plugin and hook, with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
import pytest_asyncio

from plugins.billing.apikeys import generate_key
from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from proxy.mock.upstream import MockUpstream
from proxy.plugin import Outcome, Plugin, ProxyError, RequestContext, SSEEvent, UpstreamResponse
from proxy.testing import ProxyHandle, proxy_config, start_proxy
from tests.e2e.conftest import PRICES

FUNDS = 500_000
SECRET = "secret-internal-detail-42"
CHAT = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hello there"}]}
STREAM = {**CHAT, "stream": True}


class Guilty(Plugin):
    """Misbehaves in one hook, one way: `wrong` (returns a value of the wrong type), `raise`,
    `slow` (overruns its 0.3 s `timeout`) or `header` (sets a header value that is not a
    str). In `on_event` only from the third event, so the stream has started. Records the
    terminal hooks it gets."""

    name = "guilty"

    def __init__(self, hook: str, how: str) -> None:
        super().__init__()
        self.hook, self.how, self.events = hook, how, 0
        self.terminals: list[str] = []
        if how == "slow":
            self.timeout = 0.3

    async def _misbehave(self, hook: str, ctx: RequestContext) -> Any:
        if hook != self.hook:
            return None
        if self.how == "raise":
            raise RuntimeError(SECRET)
        if self.how == "slow":
            await asyncio.sleep(30)
        if self.how == "header":
            ctx.response_headers["x-guilty"] = 5  # type: ignore[assignment]
            return None
        return SECRET  # a str: the wrong type for every hook

    async def on_request(self, ctx: RequestContext) -> None:
        await self._misbehave("on_request", ctx)  # its value returned below when `wrong`
        if self.hook == "on_request" and self.how == "wrong":
            return SECRET  # type: ignore[return-value]

    async def on_response_headers(self, ctx: RequestContext, upstream: UpstreamResponse) -> None:
        return await self._misbehave("on_response_headers", ctx)  # type: ignore[no-any-return]

    async def on_event(self, ctx: RequestContext, event: SSEEvent) -> Any:
        self.events += 1
        return await self._misbehave("on_event", ctx) if self.events >= 3 else None

    async def on_body(self, ctx: RequestContext, body: bytes) -> Any:
        return await self._misbehave("on_body", ctx)

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        self.terminals.append("on_complete")

    async def on_error(self, ctx: RequestContext, error: ProxyError) -> None:
        self.terminals.append("on_error")


@dataclass(slots=True)
class Chain:
    """A running Weir with billing and other plugins, and one funded key."""

    proxy: ProxyHandle
    key: str
    upstream: MockUpstream

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def post(self, body: dict[str, Any], path: str = "/v1/chat/completions") -> tuple[int, str, bytes]:
        """Status, request id and the whole body (a cut stream is read up to the cut)."""
        got = b""
        async with aiohttp.ClientSession() as s, s.post(self.proxy.url + path, json=body, headers=self.auth) as r:
            try:
                async for chunk in r.content.iter_any():
                    got += chunk
            except aiohttp.ClientPayloadError:
                pass
            return r.status, r.headers["x-request-id"], got

    async def settled_once(self, rid: str) -> Any:
        """Billing's one log row for `rid`, after checking that the books balance."""
        await self.proxy.settled()
        store = self.proxy.store
        assert await store.open_holds() == []
        rows = await store.query_logs(user="alice", limit=10)
        assert [row.request_id for row in rows] == [rid]
        user = await store.get_user("alice")
        assert user is not None and (user.balance, user.reserved) == (FUNDS - rows[0].charge, 0)
        assert (await store.audit(time.time(), 30)).ok
        return rows[0]


ChainFactory = Callable[..., Awaitable[Chain]]


@pytest_asyncio.fixture
async def chain(fake_upstream: MockUpstream, tmp_path: Path) -> AsyncIterator[ChainFactory]:
    """`await chain(*after, before=(...))`: Weir with `before`, billing, then `after`."""
    started: list[ProxyHandle] = []

    async def factory(*after: Plugin, before: tuple[Plugin, ...] = (), **overrides: Any) -> Chain:
        billing = BillingPlugin(BillingConfig(pricing={"models": PRICES}))
        cfg = proxy_config(fake_upstream.url, tmp_path, **overrides)
        proxy = await start_proxy(cfg, plugins=[*before, billing, *after])
        started.append(proxy)
        await proxy.store.create_user("alice")
        await proxy.store.credit("alice", FUNDS, note="test funding")
        clear, digest, hint = generate_key()
        await proxy.store.create_key("alice", digest, name="k", hint=hint)
        return Chain(proxy, clear, fake_upstream)

    yield factory
    for proxy in started:
        await proxy.stop()


def assert_blamed(caplog: pytest.LogCaptureFixture, plugin: str, hook: str) -> None:
    """The log names `plugin` and `hook` with a traceback, and blames no one else."""
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR and "failed in" in r.getMessage()]
    assert lines, "no plugin failure was logged"
    assert all(f"plugin {plugin} failed in {hook}" in r.getMessage() for r in lines), [r.getMessage() for r in lines]
    assert all(r.exc_info is not None for r in lines)


def split_events(raw: bytes) -> list[bytes]:
    """The events of a raw SSE body (blank-line separated, LF or CRLF)."""
    return [e.strip() for e in re.split(rb"\r?\n\r?\n", raw) if e.strip()]


CASES = [
    ("on_request", "wrong"),
    ("on_request", "raise"),
    ("on_request", "slow"),
    ("on_request", "header"),
    ("on_response_headers", "wrong"),
    ("on_response_headers", "raise"),
    ("on_response_headers", "slow"),
    ("on_response_headers", "header"),
    ("on_body", "wrong"),
    ("on_body", "raise"),
    ("on_body", "slow"),
    ("on_event", "wrong"),
    ("on_event", "raise"),
    ("on_event", "slow"),
]


@pytest.mark.parametrize(("hook", "how"), CASES)
async def test_a_misbehaving_plugin_is_blamed_and_billing_settles_once(
    chain: ChainFactory, caplog: pytest.LogCaptureFixture, hook: str, how: str
) -> None:
    guilty = Guilty(hook, how)
    c = await chain(guilty)
    status, rid, body = await c.post(STREAM if hook == "on_event" else CHAT)
    assert SECRET not in body.decode()
    row = await c.settled_once(rid)
    assert row.details.end_reason == "plugin_failed" and SECRET not in repr(row)  # nor in the log row
    assert_blamed(caplog, "guilty", hook)
    if hook == "on_event":
        # Two events reached the client, then the dialect's error event; no [DONE].
        *events, last = split_events(body)
        assert status == 200 and len(events) == 2 and b"[DONE]" not in body
        error = orjson.loads(last.removeprefix(b"data: "))["error"]
        assert error["code"] == "plugin_failed" and rid in error["message"]
        assert guilty.terminals == ["on_complete"] and row.charge > 0
        return
    assert status == 500
    error = orjson.loads(body)["error"]
    assert error["code"] == "plugin_failed" and rid in error["message"]
    assert row.charge == 0  # nothing was delivered: the hold is released
    entered = not (hook == "on_request" and how in ("raise", "slow"))  # its on_request returned
    assert guilty.terminals == (["on_error"] if entered else [])
    assert (c.upstream.requests == []) == (hook == "on_request")


async def test_a_non_critical_plugin_that_misbehaves_is_skipped(
    chain: ChainFactory, caplog: pytest.LogCaptureFixture
) -> None:
    class Observer(Guilty):
        name = "observer"
        critical = False

    c = await chain(Observer("on_event", "wrong"))
    status, rid, body = await c.post(STREAM)
    assert status == 200 and split_events(body)[-1] == b"data: [DONE]"
    row = await c.settled_once(rid)
    assert row.details.end_reason == "completed" and row.charge > 0
    assert_blamed(caplog, "observer", "on_event")


async def test_forgetting_to_return_the_event_changes_nothing(chain: ChainFactory, fake_upstream: MockUpstream) -> None:
    class Counter(Plugin):
        name = "counter"
        seen = 0

        async def on_event(self, ctx: RequestContext, event: SSEEvent) -> None:
            self.seen += 1  # and no `return event`: None means "unchanged"

    counter = Counter()
    c = await chain(counter)
    async with aiohttp.ClientSession() as s, s.post(fake_upstream.url + "/v1/chat/completions", json=STREAM) as r:
        direct = split_events(await r.read())
    status, rid, body = await c.post(STREAM)
    events = split_events(body)
    assert status == 200 and events[-1] == b"data: [DONE]" and len(events) == len(direct)
    row = await c.settled_once(rid)
    assert row.details.end_reason == "completed" and counter.seen >= len(events)


async def test_changes_made_in_place_to_the_request_json_are_sent(chain: ChainFactory) -> None:
    class Redactor(Plugin):
        name = "redactor"

        async def on_request(self, ctx: RequestContext) -> None:
            assert ctx.json is not None
            ctx.json["messages"][0]["content"] = "[redacted]"
            ctx.json["temperature"] = 0

    c = await chain(Redactor())
    status, rid, _ = await c.post(STREAM)
    assert status == 200
    sent = c.upstream.requests[-1].json
    assert sent["messages"][0]["content"] == "[redacted]" and sent["temperature"] == 0
    assert sent["stream_options"] == {"include_usage": True}  # billing's own change, also in place
    assert (await c.settled_once(rid)).details.end_reason == "completed"


async def test_the_openai_sdk_raises_when_a_plugin_breaks_the_stream(chain: ChainFactory) -> None:
    c = await chain(Guilty("on_event", "raise"))
    client = openai.AsyncOpenAI(base_url=c.proxy.openai_base, api_key=c.key, max_retries=0)
    chunks = 0
    with pytest.raises(openai.APIError) as err:
        stream = await client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for _ in stream:
            chunks += 1
    assert chunks == 2 and "request id" in err.value.message and SECRET not in err.value.message
    await client.close()
    await c.proxy.settled()
    assert await c.proxy.store.open_holds() == []


async def test_the_anthropic_sdk_raises_when_a_plugin_breaks_the_stream(chain: ChainFactory) -> None:
    c = await chain(Guilty("on_event", "wrong"))
    client = anthropic.AsyncAnthropic(base_url=c.proxy.url, api_key=c.key, max_retries=0)
    with pytest.raises(anthropic.APIError) as err:
        async with client.messages.stream(
            model="mock-claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for _ in stream:
                pass
    assert "plugin failed" in str(err.value) and SECRET not in str(err.value)
    await client.close()
    await c.proxy.settled()
    assert await c.proxy.store.open_holds() == []


async def test_a_gemini_stream_ends_with_gemini_s_error_object(chain: ChainFactory) -> None:
    c = await chain(Guilty("on_event", "raise"))
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    status, rid, raw = await c.post(body, "/v1beta/models/mock-gemini:streamGenerateContent?alt=sse")
    last = split_events(raw)[-1]
    error = orjson.loads(last.removeprefix(b"data: "))["error"]
    assert status == 200 and error["code"] == 500 and error["status"] == "INTERNAL" and rid in error["message"]
    assert (await c.settled_once(rid)).details.end_reason == "plugin_failed"
