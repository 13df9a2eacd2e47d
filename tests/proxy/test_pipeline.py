"""The pipeline's rules: order, exactly one terminal hook, isolation by phase, Reject."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, ClassVar

import aiohttp
import orjson
import pytest

from proxy.plugin import (
    DROP,
    Drop,
    EndReason,
    Outcome,
    Plugin,
    ProxyError,
    Reject,
    RequestContext,
    SSEEvent,
    UpstreamResponse,
)

CHAT = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hello"}]}
STREAM = {**CHAT, "stream": True}


class Recorder(Plugin):
    """Records every hook call as (plugin, hook, detail) in a shared journal."""

    name = "recorder"
    fail_in: ClassVar[str] = ""

    def __init__(
        self, label: str, journal: list[tuple[str, str, Any]], fail_in: str = "", critical: bool = True
    ) -> None:
        super().__init__()
        self.label = label
        self.journal = journal
        self.fail = fail_in
        self.critical = critical  # type: ignore[misc]

    def _note(self, hook: str, detail: Any = None) -> None:
        self.journal.append((self.label, hook, detail))
        if self.fail == hook:
            raise RuntimeError(f"{self.label} fails in {hook}")

    async def on_request(self, ctx: RequestContext) -> None:
        self._note("on_request")
        if self.fail == "reject":
            raise Reject(418, "teapot", "refused by test")

    async def on_response_headers(self, ctx: RequestContext, upstream: UpstreamResponse) -> None:
        self._note("on_response_headers", upstream.status)

    async def on_event(self, ctx: RequestContext, event: SSEEvent) -> SSEEvent | None:
        self._note("on_event")
        return event

    async def on_body(self, ctx: RequestContext, body: bytes) -> bytes:
        self._note("on_body")
        return body

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        self._note("on_complete", outcome.reason)

    async def on_error(self, ctx: RequestContext, error: ProxyError) -> None:
        self._note("on_error", error.reason)


def terminals(journal: list[tuple[str, str, Any]]) -> list[tuple[str, str, Any]]:
    return [j for j in journal if j[1] in ("on_complete", "on_error")]


def assert_one_terminal_each(journal: list[tuple[str, str, Any]], labels: list[str]) -> None:
    counts = Counter(label for label, _, _ in terminals(journal))
    assert counts == Counter({label: 1 for label in labels}), journal


async def post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", json=body) as r:
            return r.status, await r.read()


async def test_order_onion(make_proxy: Any) -> None:
    journal: list[tuple[str, str, Any]] = []
    proxy = await make_proxy(plugins=[Recorder(x, journal) for x in "ABC"])
    status, body = await post(proxy.url, STREAM)
    await proxy.settled()
    assert status == 200 and b"[DONE]" in body
    requests = [label for label, hook, _ in journal if hook == "on_request"]
    assert requests == ["A", "B", "C"]
    headers = [label for label, hook, _ in journal if hook == "on_response_headers"]
    assert headers == ["C", "B", "A"]
    first_event = [label for label, hook, _ in journal if hook == "on_event"][:3]
    assert first_event == ["C", "B", "A"]
    assert [(label, reason) for label, _, reason in terminals(journal)] == [
        ("C", EndReason.COMPLETED),
        ("B", EndReason.COMPLETED),
        ("A", EndReason.COMPLETED),
    ]


async def test_non_stream_body_hook_and_complete(make_proxy: Any) -> None:
    journal: list[tuple[str, str, Any]] = []
    proxy = await make_proxy(plugins=[Recorder("A", journal)])
    status, body = await post(proxy.url, CHAT)
    await proxy.settled()
    assert status == 200 and b"chat.completion" in body
    assert [hook for _, hook, _ in journal] == ["on_request", "on_response_headers", "on_body", "on_complete"]


async def test_upstream_500_before_first_byte(make_proxy: Any, fake_upstream: Any) -> None:
    journal: list[tuple[str, str, Any]] = []
    fake_upstream.behaviour.fail_status = 500
    proxy = await make_proxy(plugins=[Recorder("A", journal), Recorder("B", journal)])
    status, body = await post(proxy.url, STREAM)
    await proxy.settled()
    assert status == 500 and b"error" in body
    assert_one_terminal_each(journal, ["A", "B"])
    assert all(hook == "on_error" and reason == EndReason.UPSTREAM_ERROR for _, hook, reason in terminals(journal))
    assert not [j for j in journal if j[1] in ("on_event", "on_response_headers")]


async def test_upstream_reset_mid_stream(make_proxy: Any, fake_upstream: Any) -> None:
    journal: list[tuple[str, str, Any]] = []
    fake_upstream.behaviour.reset_after = 3
    proxy = await make_proxy(plugins=[Recorder("A", journal)])
    received = b""
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/chat/completions", json=STREAM) as r:
            assert r.status == 200
            # The reset is passed on: the client's stream ends without its final chunk.
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in r.content.iter_any():
                    received += chunk
    await proxy.settled()
    assert b"[DONE]" not in received and received.count(b"data:") == 3
    assert terminals(journal) == [("A", "on_complete", EndReason.UPSTREAM_TRUNCATED)]


@pytest.mark.parametrize("after_events", [1, 5])
async def test_client_disconnect(make_proxy: Any, fake_upstream: Any, after_events: int) -> None:
    journal: list[tuple[str, str, Any]] = []
    fake_upstream.behaviour.pace = 0.02
    fake_upstream.behaviour.words = 40
    proxy = await make_proxy(plugins=[Recorder("A", journal), Recorder("B", journal)])
    async with aiohttp.ClientSession() as s:
        resp = await s.post(proxy.url + "/v1/chat/completions", json=STREAM)
        seen = 0
        while seen < after_events:
            line = await resp.content.readline()
            seen += line.startswith(b"data:")
        resp.close()
    await asyncio.sleep(0.2)
    await proxy.settled()
    assert_one_terminal_each(journal, ["A", "B"])
    assert {reason for _, _, reason in terminals(journal)} == {EndReason.CLIENT_DISCONNECTED}
    relayed = [j for j in journal if j[1] == "on_event" and j[0] == "A"]
    assert len(relayed) < 40  # the upstream was closed, not read to the end


async def test_reject_reaches_entered_plugins_only(make_proxy: Any, fake_upstream: Any) -> None:
    journal: list[tuple[str, str, Any]] = []
    proxy = await make_proxy(
        plugins=[Recorder("A", journal), Recorder("B", journal, fail_in="reject"), Recorder("C", journal)]
    )
    status, body = await post(proxy.url, STREAM)
    await proxy.settled()
    assert status == 418 and b'"code":"teapot"' in body and b"refused by test" in body
    assert terminals(journal) == [("A", "on_error", EndReason.REJECTED)]
    assert not any(label == "C" for label, _, _ in journal)
    assert fake_upstream.requests == []


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    "hook", ["on_request", "on_response_headers", "on_event", "on_body", "on_complete", "on_error"]
)
async def test_plugin_raising_in_each_hook(make_proxy: Any, fake_upstream: Any, hook: str, stream: bool) -> None:
    journal: list[tuple[str, str, Any]] = []
    if hook == "on_error":
        fake_upstream.behaviour.fail_status = 503
    proxy = await make_proxy(
        plugins=[Recorder("A", journal), Recorder("B", journal, fail_in=hook), Recorder("C", journal)]
    )
    status, body = await post(proxy.url, STREAM if stream else CHAT)
    await proxy.settled()
    entered = ["A"] if hook == "on_request" else ["A", "B", "C"]
    assert_one_terminal_each(journal, entered)
    if hook == "on_request":
        assert status == 500 and b"plugin_failed" in body
        assert fake_upstream.requests == []
    elif hook == "on_response_headers" or (hook == "on_body" and not stream):
        assert status == 500 and b"plugin_failed" in body
        assert {h for _, h, _ in terminals(journal)} == {"on_error"}
    elif hook == "on_event" and stream:
        assert status == 200
        assert {r for _, _, r in terminals(journal)} == {EndReason.PLUGIN_FAILED}
    elif hook == "on_error":
        assert status == 503
        assert {h for _, h, _ in terminals(journal)} == {"on_error"}
    else:
        assert status == 200
        assert {r for _, _, r in terminals(journal)} == {EndReason.COMPLETED}


async def test_non_critical_event_failure_is_skipped(make_proxy: Any) -> None:
    journal: list[tuple[str, str, Any]] = []
    flaky = Recorder("B", journal, fail_in="on_event", critical=False)
    proxy = await make_proxy(plugins=[Recorder("A", journal), flaky])
    status, body = await post(proxy.url, STREAM)
    await proxy.settled()
    assert status == 200 and b"[DONE]" in body
    assert sum(1 for label, hook, _ in journal if label == "B" and hook == "on_event") == 1
    assert sum(1 for label, hook, _ in journal if label == "A" and hook == "on_event") > 3
    assert {(label, r) for label, _, r in terminals(journal)} == {
        ("A", EndReason.COMPLETED),
        ("B", EndReason.COMPLETED),
    }


async def test_shutdown_during_stream(make_proxy: Any, fake_upstream: Any) -> None:
    journal: list[tuple[str, str, Any]] = []
    fake_upstream.behaviour.pace = 0.05
    fake_upstream.behaviour.words = 200
    proxy = await make_proxy(plugins=[Recorder("A", journal), Recorder("B", journal)])
    async with aiohttp.ClientSession() as s:
        resp = await s.post(proxy.url + "/v1/chat/completions", json=STREAM)
        await resp.content.readline()
        await proxy.stop()  # shutdown_grace is 1 s in the harness; the stream needs 10 s
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # cut short, visibly: no final chunk
    assert_one_terminal_each(journal, ["A", "B"])
    assert {r for _, _, r in terminals(journal)} == {EndReason.SHUTDOWN}


async def test_shutdown_gives_its_grace_to_a_stream_not_yet_started(make_proxy: Any, fake_upstream: Any) -> None:
    """A request still waiting for the upstream's headers when shutdown begins gets the
    grace as a relaying one does: its stream is relayed whole, not cut as it starts."""
    journal: list[tuple[str, str, Any]] = []
    fake_upstream.behaviour.stall_before_headers = 0.3
    proxy = await make_proxy(plugins=[Recorder("A", journal)])

    async def upstream_has_it() -> None:
        while not fake_upstream.requests:
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as s:

        async def call() -> tuple[int, bytes]:
            async with s.post(proxy.url + "/v1/chat/completions", json=STREAM) as r:
                return r.status, await r.read()

        answer = asyncio.create_task(call())
        await asyncio.wait_for(upstream_has_it(), 30)  # in flight, no relay yet
        await proxy.stop()  # shutdown_grace is 1 s in the harness
        status, body = await answer
    assert status == 200 and body.rstrip().endswith(b"data: [DONE]")
    assert_one_terminal_each(journal, ["A"])
    assert {r for _, _, r in terminals(journal)} == {EndReason.COMPLETED}


async def test_event_drop_and_replace(make_proxy: Any, fake_upstream: Any) -> None:
    class Rewriter(Plugin):
        name = "rewriter"

        async def on_event(self, ctx: RequestContext, event: SSEEvent) -> SSEEvent | Drop | None:
            data = event.json
            if isinstance(data, dict) and data.get("choices"):
                delta = data["choices"][0].get("delta", {})
                if delta.get("content") == "Mock":
                    return DROP
                if "content" in delta:
                    delta["content"] = delta["content"].upper()
                    return event.with_json(data)
            return event

    proxy = await make_proxy(plugins=[Rewriter()])
    direct_status, direct = await post(fake_upstream.url, STREAM)
    status, body = await post(proxy.url, STREAM)
    assert status == direct_status == 200

    def contents(raw: bytes) -> list[str]:
        out = []
        for line in raw.split(b"\n"):
            if line.startswith(b"data: {"):
                choices = orjson.loads(line[6:]).get("choices") or [{}]
                if "content" in choices[0].get("delta", {}):
                    out.append(choices[0]["delta"]["content"])
        return out

    expected = [c.upper() for c in contents(direct) if c != "Mock"]
    assert contents(body) == expected and len(expected) > 3
    assert b"[DONE]" in body
