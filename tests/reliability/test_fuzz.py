"""Fuzzing a real Weir with billing (SQLite), with bounded examples and deadlines.

* Generated request bodies (JSON-ish values in chat, messages and Gemini shapes, random
  types in every field, and raw bytes): never a 500 of Weir's own, never a leftover hold,
  and the wallet moves by exactly the sum of the logged charges.
* Generated SSE streams from the upstream (random events, usage with odd numbers, garbage,
  random line endings and splits, truncation): never a crash, exactly one settlement per
  request, a charge that is never negative, and a clean audit.

One Weir serves all examples of a test (an `asyncio.Runner` owned by the fixture), so the
books are checked across hundreds of requests, not just one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from plugins.billing.apikeys import generate_key
from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from proxy import keys
from proxy.config import UpstreamConfig
from proxy.mock.upstream import MockUpstream
from proxy.testing import ProxyHandle, proxy_config, start_proxy
from proxy.upstream import Upstream
from tests.e2e.conftest import PRICES
from tests.reliability.rawserver import RawConn, RawUpstream, sse_head

FUNDS = 10**12
RAW_MODEL = "mock-gpt-raw"  # priced by the mock-gpt* glob


@dataclass(slots=True)
class Rig:
    """A Weir with billing, its upstreams and a client session, driven by one runner."""

    runner: asyncio.Runner
    proxy: ProxyHandle
    mock: MockUpstream
    raw: RawUpstream
    session: aiohttp.ClientSession
    key: str
    stream: list[list[bytes]]  # what the raw upstream sends next (chunks)

    def run(self, coro: Any) -> Any:
        """Run `coro` on the rig's loop."""
        return self.runner.run(coro)

    async def books(self) -> tuple[int, int]:
        """(balance, number of log rows), after settlement, with the invariants checked."""
        await self.proxy.settled()
        store = self.proxy.store
        user = await store.get_user("fuzz")
        assert user is not None and user.reserved == 0
        assert await store.open_holds() == []
        report = await store.audit(time.time(), 30)
        assert report.ok, report
        return user.balance, len(await store.query_logs(user="fuzz", limit=100_000))

    async def funded_books(self) -> tuple[int, int]:
        """`books()`, after topping the wallet back up to `FUNDS` when an earlier example
        spent most of it: a generated usage of 2**40 tokens costs more than `FUNDS`, and the
        examples share one wallet, so without this a later example would meet a 402 that
        depends only on the order Hypothesis drew them in."""
        balance, rows = await self.books()
        if balance < FUNDS // 2:
            await self.proxy.store.credit("fuzz", FUNDS - balance, note="fuzz top-up")
            balance = FUNDS
        return balance, rows


async def _start(tmp: Path, stream: list[list[bytes]]) -> tuple[ProxyHandle, MockUpstream, RawUpstream, str]:
    mock = MockUpstream()
    await mock.start()

    async def script(conn: RawConn) -> None:
        await conn.send(sse_head())
        for piece in stream[0]:
            await conn.send(piece)

    raw = RawUpstream(script)
    await raw.start()
    cfg = proxy_config(mock.url, tmp)
    plugin = BillingPlugin(BillingConfig(pricing={"models": PRICES}, on_client_disconnect="partial"))
    proxy = await start_proxy(cfg, plugins=[plugin])
    # The raw upstream first for RAW_MODEL (it never refuses, so no failover); the mock
    # serves every other model.
    raw_cfg = UpstreamConfig(
        name="raw", type="openai", base_url=raw.url + "/v1", models=(RAW_MODEL,), priority=-1, read_timeout=2.0
    )
    proxy.app[keys.UPSTREAMS].upstreams.insert(0, Upstream(raw_cfg, raw_cfg.base_url))
    await proxy.store.create_user("fuzz")
    await proxy.store.credit("fuzz", FUNDS, note="fuzz funding")
    clear, digest, hint = generate_key()
    await proxy.store.create_key("fuzz", digest, name="fuzz", hint=hint)
    return proxy, mock, raw, clear


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A running rig; torn down (proxy, upstreams, loop) whatever the test does."""
    runner = asyncio.Runner()
    stream: list[list[bytes]] = [[]]
    proxy, mock, raw, key = runner.run(_start(tmp_path, stream))
    session = runner.run(_session())
    rig = Rig(runner, proxy, mock, raw, session, key, stream)
    try:
        yield rig
    finally:
        runner.run(_stop(rig))
        runner.close()


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))


async def _stop(rig: Rig) -> None:
    await rig.session.close()
    await rig.proxy.stop()
    await rig.raw.stop()
    await rig.mock.stop()


# ---- generated request bodies ----------------------------------------------------------------


def dumps(value: Any) -> bytes:
    """JSON bytes; the stdlib encoder, since orjson refuses integers beyond 64 bits."""
    return json.dumps(value).encode()


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
models = st.sampled_from(["mock-gpt", "mock-claude", "mock-gemini", "mock-embed", "mock-image", "nope"]) | json_values
roles = st.sampled_from(["user", "assistant", "system", "tool", "developer"]) | json_values
content = (
    st.text(max_size=40)
    | st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url", "input_audio"]) | json_values},
            optional={"text": json_values, "image_url": json_values},
        ),
        max_size=3,
    )
    | json_values
)
messages = (
    st.lists(st.fixed_dictionaries({"role": roles}, optional={"content": content, "name": json_values}), max_size=4)
    | json_values
)
limits = st.integers(min_value=-5, max_value=20) | json_values


def shaped(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict with the given field strategies, each optional, plus random extra fields."""
    return st.fixed_dictionaries({}, optional=base).flatmap(
        lambda d: st.dictionaries(st.text(max_size=8), json_values, max_size=2).map(lambda extra: {**extra, **d})
    )


chat_bodies = shaped(
    {
        "model": models,
        "messages": messages,
        "max_tokens": limits,
        "n": limits,
        "stream": st.booleans() | json_values,
        "stream_options": json_values,
        "tools": json_values,
        "max_completion_tokens": limits,
    }
)
anthropic_bodies = shaped(
    {
        "model": models,
        "messages": messages,
        "max_tokens": limits,
        "system": content,
        "stream": st.booleans() | json_values,
    }
)
gemini_bodies = shaped(
    {
        "contents": st.lists(
            st.fixed_dictionaries(
                {
                    "role": roles,
                    "parts": st.lists(st.fixed_dictionaries({}, optional={"text": json_values}), max_size=3)
                    | json_values,
                }
            ),
            max_size=3,
        )
        | json_values,
        "generationConfig": shaped({"maxOutputTokens": limits, "candidateCount": limits}) | json_values,
        "systemInstruction": json_values,
    }
)

VALID: list[tuple[str, dict[str, Any]]] = [
    (
        "/v1/chat/completions",
        {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True},
    ),
    ("/v1/chat/completions", {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}),
    (
        "/v1/messages",
        {"model": "mock-claude", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ),
    ("/v1/responses", {"model": "mock-gpt", "input": "hi", "max_output_tokens": 8}),
    (
        "/v1beta/models/mock-gemini:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 8}},
    ),
]


def _mutate(base: tuple[str, dict[str, Any]], field: str, value: Any, drop: bool) -> tuple[str, bytes]:
    path, body = base
    out = {k: v for k, v in body.items() if not (drop and k == field)}
    if not drop:
        out[field] = value
    return path, dumps(out)


# Valid requests with one field replaced, dropped or added get far into the pipeline; the
# free-form shapes below mostly test the refusals.
plausible: st.SearchStrategy[Any] = (
    st.sampled_from([8, 0, 1, 2**31, True, False, None, "x", "mock-gpt", [], {}, 1.5]) | json_values
)
mutated = st.builds(
    _mutate,
    st.sampled_from(VALID),
    st.sampled_from(
        [
            "model",
            "messages",
            "max_tokens",
            "stream",
            "input",
            "contents",
            "generationConfig",
            "stream_options",
            "n",
            "tools",
            "max_output_tokens",
            "system",
            "temperature",
            "metadata",
        ]
    ),
    plausible,
    st.booleans(),
)

others = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), chat_bodies.map(dumps)),
    st.tuples(
        st.just("/v1/completions"), shaped({"model": models, "prompt": json_values, "max_tokens": limits}).map(dumps)
    ),
    st.tuples(
        st.just("/v1/responses"),
        shaped({"model": models, "input": content, "max_output_tokens": limits, "stream": st.booleans()}).map(dumps),
    ),
    st.tuples(st.just("/v1/messages"), anthropic_bodies.map(dumps)),
    st.tuples(
        st.sampled_from(
            ["/v1beta/models/mock-gemini:generateContent", "/v1beta/models/mock-gemini:streamGenerateContent?alt=sse"]
        ),
        gemini_bodies.map(dumps),
    ),
    st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/embeddings"]), st.binary(max_size=200)),
    st.tuples(st.just("/v1/embeddings"), shaped({"model": models, "input": json_values}).map(dumps)),
    st.tuples(
        st.just("/v1/images/generations"), shaped({"model": models, "prompt": json_values, "n": limits}).map(dumps)
    ),
)
requests = st.integers(0, 9).flatmap(lambda i: mutated if i < 5 else others)


async def _send(rig: Rig, path: str, body: bytes) -> tuple[int, bytes]:
    headers = {
        "Authorization": f"Bearer {rig.key}",
        "x-api-key": rig.key,
        "x-goog-api-key": rig.key,
        "Content-Type": "application/json",
    }
    async with rig.session.post(rig.proxy.url + path, data=body, headers=headers) as r:
        try:
            data = await r.read()
        except aiohttp.ClientPayloadError:
            data = b""  # a stream cut on purpose is still an answer
        return r.status, data


@pytest.mark.slow
@settings(
    max_examples=250, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(req=requests)
def test_generated_bodies_never_500_and_books_balance(rig: Rig, req: tuple[str, bytes]) -> None:
    path, body = req

    async def one() -> None:
        balance, rows = await rig.funded_books()
        called = len(rig.mock.requests)
        status, data = await _send(rig, path, body)
        event(f"status {status}")  # --hypothesis-show-statistics: how far bodies get
        if status >= 500:
            # Only an upstream's own 5xx may be relayed; Weir itself never answers 500.
            assert len(rig.mock.requests) > called, (status, data[:300])
            assert b"plugin_failed" not in data, data[:300]
        after, after_rows = await rig.books()
        charges = (
            sum(r.charge for r in await rig.proxy.store.query_logs(user="fuzz", limit=after_rows - rows))
            if after_rows > rows
            else 0
        )
        assert balance - after == charges >= 0

    rig.run(one())


# ---- generated upstream SSE streams ---------------------------------------------------------------

texts = st.text(max_size=12)
usage_numbers = st.integers(min_value=-(2**40), max_value=2**40) | json_values


def _chat_chunk(text: str) -> bytes:
    return b"data: " + orjson.dumps(
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "model": RAW_MODEL,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
    )


def _usage(p: Any, c: Any, details: Any) -> bytes:
    return b"data: " + dumps(
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "prompt_tokens_details": details},
        }
    )


events = st.one_of(
    texts.map(_chat_chunk),
    st.builds(_usage, usage_numbers, usage_numbers, json_values),
    st.just(b"data: [DONE]"),
    st.just(b": keep-alive"),
    st.binary(max_size=40),
    json_values.map(lambda v: b"data: " + dumps(v)),
    st.tuples(st.text(max_size=10), json_values).map(lambda t: b"event: " + t[0].encode() + b"\ndata: " + dumps(t[1])),
    st.sampled_from([b"data", b"event", b"id: 7", b"retry: 10", b"data:", b"\xff\xfe", b'data: {"error":{}}']),
)
streams = st.tuples(
    st.lists(events, max_size=12),
    st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\r", b"\n"]),
    st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    st.booleans(),
)


@pytest.mark.slow
@settings(
    max_examples=200, deadline=10000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(spec=streams, stream=st.booleans())
def test_generated_upstream_streams_settle_exactly_once(rig: Rig, spec: Any, stream: bool) -> None:
    items, sep, cuts, truncate = spec
    data = b"".join(i + sep for i in items)
    if truncate and data:
        data = data[: len(data) // 2]
    points = sorted({c % (len(data) + 1) for c in cuts})
    rig.stream[0] = [data[a:b] for a, b in zip([0, *points], [*points, len(data)]) if b > a]

    async def one() -> None:
        balance, rows = await rig.funded_books()
        body = orjson.dumps({"model": RAW_MODEL, "messages": [{"role": "user", "content": "go"}], "stream": stream})
        status, _ = await _send(rig, "/v1/chat/completions", body)
        event(f"status {status}")
        assert status in (200, 502), status
        after, after_rows = await rig.books()
        assert after_rows == rows + 1  # exactly one settlement
        (row,) = await rig.proxy.store.query_logs(user="fuzz", limit=1)
        assert row.charge >= 0 and balance - after == row.charge
        event(f"{row.details.end_reason}/{row.details.usage_source}/{'charged' if row.charge else 'free'}")

    rig.run(one())
