"""Client faults through a real Weir with billing: disconnects at each point under both
`on_client_disconnect` policies (exact charge), a reader that stops reading (bounded memory
and backpressure to the upstream, measured on a `weir serve` process), a body trickled in
slowly, and pipelined and reused keep-alive connections."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml

from plugins.billing.apikeys import generate_key
from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from plugins.billing.store.factory import make_store
from proxy.config import parse_config
from proxy.context import Endpoint
from tests.e2e.conftest import PRICES, Billed, BilledFactory, backend, billed  # noqa: F401  (fixtures)
from tests.reliability.rawserver import (
    RawConn,
    RawUpstream,
    WeirProcess,
    fetch,
    log_rows,
    money_moved,
    prompt_estimate,
    quota,
    raw_exchange,
    read_response,
    sse_head,
    tokens,
)

GPT = PRICES["mock-gpt*"]
MSG = [{"role": "user", "content": "tell me about weirs"}]
STREAM = {"model": "mock-gpt", "messages": MSG, "stream": True}
WORDS = 8
# The client sees: role chunk, WORDS content chunks, the finish chunk, [DONE] (usage hidden).
LAST = WORDS + 2


async def full_usage(b: Billed) -> dict[str, int]:
    """The usage the upstream reports for the whole answer (asked of it directly)."""
    got = await fetch(b.upstream.url + "/v1/chat/completions", {**STREAM, "stream_options": {"include_usage": True}})
    for line in got.body.split(b"\n\n"):
        if line.startswith(b"data: {") and b'"usage":{' in line:
            usage: dict[str, int] = orjson.loads(line[6:])["usage"]
            return usage
    raise AssertionError("the mock sent no usage")


async def read_then_leave(b: Billed, k: int) -> str:
    """Read `k` SSE data events, then drop the connection; return the content text read."""
    text = ""
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            b.proxy.url + "/v1/chat/completions", json=STREAM, headers={"Authorization": f"Bearer {b.key}"}
        )
        assert resp.status == 200
        seen = 0
        while seen < k:
            line = await resp.content.readline()
            if line.startswith(b"data: {"):
                seen += 1
                choices = orjson.loads(line[6:])["choices"]
                text += (choices[0]["delta"].get("content") or "") if choices else ""
        resp.close()
    return text


@pytest.mark.parametrize("policy", ["drain", "partial"])
async def test_disconnect_at_each_point(billed: BilledFactory, policy: str) -> None:
    b = await billed(on_client_disconnect=policy)
    b.upstream.behaviour.words = WORDS
    full = await full_usage(b)
    b.upstream.behaviour.pace = 0.1  # the client leaves well before Weir's next write
    whole = quota(GPT, full["prompt_tokens"], full["completion_tokens"])
    prompt = prompt_estimate(b, Endpoint.CHAT, STREAM, "mock-gpt")
    before = await b.balance()
    for i, k in enumerate((0, 1, 4, LAST), 1):
        text = await read_then_leave(b, k)
        row = (await log_rows(b, i))[0]
        assert row.details.end_reason == "client_disconnected", (k, row)
        if policy == "drain":
            # Drained to the end: the upstream's usage for the whole answer.
            assert (row.charge, row.details.usage_source) == (whole, "upstream"), (k, row)
            assert row.details.output == full["completion_tokens"]
        elif text:
            # Closed at once: what was relayed, counted. Bytes that came after the client
            # left are not metered; at LAST the finish chunk was relayed, so the answer is
            # complete but its usage chunk was not read: estimated.
            source = "estimated" if k == LAST else "partial"
            assert (row.details.usage_source, row.details.input) == (source, prompt), (k, row)
            assert row.details.output == tokens(text, "mock-gpt")
            assert row.charge == quota(GPT, prompt, tokens(text, "mock-gpt")), (k, row)
        else:
            assert row.charge == 0, (k, row)  # nothing but the empty role chunk was relayed
        before -= row.charge
        await money_moved(b, before, 0)


# ---- a reader that stops reading --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


FULL_ANSWER = 256 * 1024 * 1024
PIECE = (
    b'data: {"id":"c","object":"chat.completion.chunk","model":"mock-gpt","choices":[{"index":0,'
    b'"delta":{"content":"lorem ipsum "},"finish_reason":null}]}\n\n'
) * 400


async def firehose(conn: RawConn) -> None:
    """An upstream that writes a 256 MiB answer as fast as it is read."""
    await conn.send(sse_head())
    while conn.upstream.sent < FULL_ANSWER:
        await conn.send(PIECE)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[WeirProcess, RawUpstream, str, str]]:
    """`weir serve` (SQLite, billing, partial on disconnect) in front of the firehose."""
    raw = RawUpstream(firehose)
    await raw.start()
    port = free_port()
    cfg = {
        "server": {"port": port, "shutdown_grace": 1},
        "store": {"backend": "sqlite", "path": str(tmp_path / "weir.db")},
        "upstreams": [{"name": "raw", "type": "openai", "base_url": raw.url + "/v1", "api_key": "sk-up"}],
        "plugins": [{"use": "billing", "config": {"pricing": {"models": PRICES}, "on_client_disconnect": "partial"}}],
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    store = make_store(parse_config(cfg, env={}))
    await store.open()
    await store.create_user("alice")
    await store.credit("alice", 5_000_000, note="test")
    clear, digest, hint = generate_key()
    await store.create_key("alice", digest, name="k", hint=hint)
    await store.close()
    weir = WeirProcess(path)
    try:
        await asyncio.to_thread(weir.start, f"http://127.0.0.1:{port}")
        yield weir, raw, f"http://127.0.0.1:{port}", clear
    finally:
        await asyncio.to_thread(weir.stop)
        await raw.stop()


@pytest.mark.slow
async def test_slow_reader_keeps_memory_bounded_and_pushes_back(
    served: tuple[WeirProcess, RawUpstream, str, str], tmp_path: Path
) -> None:
    weir, raw, url, key = served
    rss0 = weir.rss_kib()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
    body = orjson.dumps(STREAM)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await reader.readexactly(32 * 1024)  # a little, then the client stops reading
    peak = 0
    for _ in range(20):  # 3 s of a stalled reader
        await asyncio.sleep(0.15)
        peak = max(peak, weir.rss_kib())
    sent_stalled = raw.sent
    await asyncio.sleep(1.0)
    # Backpressure: the upstream is blocked, far short of its answer, and stays there.
    assert sent_stalled < 48 * 1024 * 1024 and raw.sent - sent_stalled < 1024 * 1024, (sent_stalled, raw.sent)
    assert peak - rss0 < 40 * 1024, (rss0, peak)
    writer.transport.abort()
    await asyncio.to_thread(weir.stop)
    store = make_store(parse_config({"store": {"backend": "sqlite", "path": str(tmp_path / "weir.db")}}, env={}))
    await store.open()
    try:
        (row,) = await store.query_logs(user="alice")
        estimator = BillingPlugin(BillingConfig(pricing={"models": PRICES})).estimator
        prompt = estimator.prompt_tokens(Endpoint.CHAT, STREAM, "mock-gpt")
        assert (row.details.end_reason, row.details.usage_source) == ("client_disconnected", "partial")
        assert row.details.input == prompt and row.details.output > 0
        assert row.charge == quota(GPT, prompt, row.details.output)
        user = await store.get_user("alice")
        assert user is not None and (user.balance, user.reserved) == (5_000_000 - row.charge, 0)
        assert await store.open_holds() == [] and (await store.audit(time.time(), 30)).ok
    finally:
        await store.close()


# ---- slow bodies, pipelining, keep-alive -------------------------------------------------------


def request(b: Billed, body: bytes, key: str | None = None) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + (key or b.key).encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )


def charge_of(body: bytes) -> int:
    usage = orjson.loads(body)["usage"]
    return quota(GPT, usage["prompt_tokens"], usage["completion_tokens"])


async def test_body_trickled_slowly_holds_only_once_complete(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    data = request(b, orjson.dumps({"model": "mock-gpt", "messages": MSG}))
    host, port = b.proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for i in range(0, len(data) - 1, 16):
            writer.write(data[i : min(i + 16, len(data) - 1)])
            await writer.drain()
            await asyncio.sleep(0.02)
            assert await b.store.open_holds() == []  # nothing is held before the body is whole
        writer.write(data[-1:])
        async with asyncio.timeout(10):
            resp = await read_response(reader)
    finally:
        writer.close()
    assert resp.status == 200
    (row,) = await log_rows(b)
    assert row.charge == charge_of(resp.body)
    await money_moved(b, before, row.charge)


async def test_pipelined_requests_on_one_connection(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    one = orjson.dumps({"model": "mock-gpt", "messages": MSG})
    two = orjson.dumps({"model": "mock-gpt", "messages": [{"role": "user", "content": "and rivers too please"}]})
    r1, r2 = await raw_exchange(b.proxy.url, request(b, one) + request(b, two), responses=2)
    assert (r1.status, r2.status) == (200, 200)
    # In order: the second answer echoes the second prompt.
    assert "rivers" in orjson.loads(r2.body)["choices"][0]["message"]["content"]
    rows = await log_rows(b, 2)
    assert sum(r.charge for r in rows) == charge_of(r1.body) + charge_of(r2.body)
    await money_moved(b, before, charge_of(r1.body) + charge_of(r2.body))


async def test_keep_alive_is_reused_after_error_responses(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    good = orjson.dumps({"model": "mock-gpt", "messages": MSG})
    data = request(b, good, key="wk-wrong") + request(b, b"{not json") + request(b, good)
    r1, r2, r3 = await raw_exchange(b.proxy.url, data, responses=3)
    assert (r1.status, r2.status, r3.status) == (401, 400, 200)
    assert orjson.loads(r1.body)["error"]["code"] == "invalid_api_key"
    (row,) = await log_rows(b)
    assert row.charge == charge_of(r3.body)
    await money_moved(b, before, row.charge)


async def test_stream_then_request_on_the_same_connection(billed: BilledFactory) -> None:
    """A streamed answer's framing ends cleanly, so the next request on the connection works."""
    b = await billed()
    before = await b.balance()
    data = request(b, orjson.dumps(STREAM)) + request(b, orjson.dumps({"model": "mock-gpt", "messages": MSG}))
    r1, r2 = await raw_exchange(b.proxy.url, data, responses=2)
    assert (r1.status, r2.status) == (200, 200) and r1.body.endswith(b"data: [DONE]\n\n")
    rows = await log_rows(b, 2)
    total = sum(r.charge for r in rows)
    assert rows[0].charge == charge_of(r2.body)
    await money_moved(b, before, total)
