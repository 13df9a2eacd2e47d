"""Hostile input through a real Weir with billing: every refusal is a 4xx in the endpoint's
dialect (never a 500), leaves no hold, moves no money and never reaches the upstream.
Inputs that are odd but legal are billed exactly."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from plugins.billing.apikeys import generate_key
from tests.e2e.conftest import PRICES, Billed, BilledFactory, backend, billed  # noqa: F401  (fixtures)
from tests.reliability.rawserver import fetch, log_rows, money_moved, quota, raw_exchange

GPT = PRICES["mock-gpt*"]
MSG = [{"role": "user", "content": "hello there"}]
OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
GEMINI = "/v1beta/models/mock-gemini:generateContent"


def chat(**fields: Any) -> bytes:
    body: dict[str, Any] = {"model": "mock-gpt", "messages": MSG}
    for k, v in fields.items():
        if v is _DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return orjson.dumps(body)


_DROP = object()


def key_headers(b: Billed, path: str) -> dict[str, str]:
    if path == ANTHROPIC:
        return {"x-api-key": b.key}
    if path == GEMINI:
        return {"x-goog-api-key": b.key}
    return {"Authorization": f"Bearer {b.key}"}


def assert_shape(path: str, status: int, body: bytes) -> str:
    """The error body is in the endpoint's dialect; returns Weir's machine code."""
    doc = orjson.loads(body)
    if path == ANTHROPIC:
        assert doc["type"] == "error" and isinstance(doc["error"]["type"], str)
        return str(doc["error"]["code"])
    if path == GEMINI:
        assert doc["error"]["code"] == status and isinstance(doc["error"]["status"], str)
        return str(doc["error"]["details"][0]["reason"])
    assert isinstance(doc["error"]["message"], str) and "type" in doc["error"]
    return str(doc["error"]["code"])


async def nothing_moved(b: Billed, before: int) -> None:
    """No hold, no ledger movement, no log row, and the upstream never called."""
    await money_moved(b, before, 0)
    assert await b.store.query_logs(user=b.user) == []
    assert b.upstream.requests == []


BAD_BODIES: list[tuple[str, bytes, int]] = [
    ("max_tokens negative", chat(max_tokens=-1), 400),
    ("max_tokens over the limit", chat(max_tokens=10**12), 400),
    ("max_tokens float", chat(max_tokens=1.5), 400),
    ("max_tokens string", chat(max_tokens="100"), 400),
    ("max_tokens bool", chat(max_tokens=True), 400),
    ("max_tokens null-ish list", chat(max_tokens=[1]), 400),
    ("max_completion_tokens negative", chat(max_completion_tokens=-5), 400),
    ("max_tokens huge but legal: unaffordable", chat(max_tokens=10_000_000), 402),
    ("n zero", chat(n=0), 400),
    ("n negative", chat(n=-3), 400),
    ("n too large", chat(n=10_000), 400),
    ("n float", chat(n=2.0), 400),
    ("n string", chat(n="2"), 400),
    ("n bool", chat(n=True), 400),
    ("malformed JSON", b'{"model": "mock-gpt", "messages": [', 400),
    ("trailing garbage", chat() + b"}", 400),
    ("a JSON array", b"[1, 2, 3]", 400),
    ("a JSON string", b'"hello"', 400),
    ("JSON null", b"null", 400),
    ("empty body", b"", 400),
    ("invalid UTF-8", b'{"model":"mock-gpt","messages":[{"role":"user","content":"\xff\xfe\xfd"}]}', 400),
    ("lone surrogate escape", b'{"model":"mock-gpt","messages":[{"role":"user","content":"\\ud800"}]}', 400),
    ("model missing", chat(model=_DROP), 400),
    ("model a number", chat(model=42), 400),
    ("model a list", chat(model=["mock-gpt"]), 400),
    ("model empty", chat(model=""), 400),
    ("model huge", chat(model="m" * 10_000), 400),
    ("model not priced", chat(model="no-such-model"), 400),
    ("messages not a list", chat(messages="hi"), 400),
    ("message content a number", chat(messages=[{"role": "user", "content": 5}]), 400),
    ("messages nested deeply", chat(messages=[{"role": "user", "content": [[[[[[["x"]]]]]]]}]), 400),
    ("stream not a bool", chat(stream="yes"), 400),
    ("deeply nested JSON", b'{"model":"mock-gpt","messages":' + b"[" * 5000 + b"]" * 5000 + b"}", 400),
]


async def test_bad_openai_bodies_are_refused(billed: BilledFactory) -> None:
    """One Weir per backend for the whole table: each case must leave the books untouched."""
    b = await billed()
    before = await b.balance()
    for name, body, status in BAD_BODIES:
        got = await fetch(b.proxy.url + OPENAI, body, key_headers(b, OPENAI))
        assert got.status == status, (name, got.body)
        assert_shape(OPENAI, status, got.body)
        await nothing_moved(b, before)


OTHER_DIALECTS: list[tuple[str, bytes, int]] = [
    (ANTHROPIC, b'{"model":"mock-claude","max_tokens":-1,"messages":[]}', 400),
    (ANTHROPIC, b'{"model":"mock-claude","max_tokens":true,"messages":[]}', 400),
    (ANTHROPIC, b'{"model":"mock-claude","max_tokens":16,"messages":{"a":1}}', 400),
    (ANTHROPIC, b'{"max_tokens":16,"messages":[]}', 400),
    (ANTHROPIC, b'{"model":', 400),
    (ANTHROPIC, b"\xff\xfe", 400),
    (GEMINI, b'{"contents":"hi"}', 400),
    (GEMINI, b'{"contents":[],"generationConfig":{"maxOutputTokens":-4}}', 400),
    (GEMINI, b'{"contents":[],"generationConfig":{"candidateCount":"2"}}', 400),
    (GEMINI, b'{"contents":[],"generationConfig":[]}', 400),
    (GEMINI, b"{", 400),
]


async def test_bad_bodies_in_other_dialects(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    for path, body, status in OTHER_DIALECTS:
        got = await fetch(b.proxy.url + path, body, key_headers(b, path))
        assert got.status == status, (path, body, got.body)
        assert_shape(path, status, got.body)
        await nothing_moved(b, before)


async def test_wrong_content_type_is_415(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    for path in (OPENAI, ANTHROPIC, GEMINI):
        for ctype in ("text/html", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            got = await fetch(b.proxy.url + path, chat(), {**key_headers(b, path), "Content-Type": ctype})
            assert got.status == 415, (path, ctype)
            assert_shape(path, 415, got.body)
            await nothing_moved(b, before)


async def test_body_over_the_limit_is_413_before_any_hold(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    big = b'{"model":"mock-gpt","messages":[{"role":"user","content":"' + b"a" * (10 * 1024 * 1024) + b'"}]}'
    for path in (OPENAI, ANTHROPIC, GEMINI):
        got = await fetch(b.proxy.url + path, big, key_headers(b, path))
        assert got.status == 413
        assert assert_shape(path, 413, got.body) == "request_too_large"
        await nothing_moved(b, before)


async def test_chunked_body_over_the_limit_is_413(billed: BilledFactory) -> None:
    """No Content-Length to refuse early: the limit applies while reading."""
    b = await billed()
    before = await b.balance()

    async def gen() -> Any:
        yield b'{"model":"mock-gpt","messages":[{"role":"user","content":"'
        for _ in range(11):
            yield b"a" * (1024 * 1024)
        yield b'"}]}'

    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.post(b.proxy.url + OPENAI, data=gen(), headers=key_headers(b, OPENAI)) as r:
            status, body = r.status, await r.read()
    assert status == 413 and assert_shape(OPENAI, 413, body) == "request_too_large"
    await nothing_moved(b, before)


# ---- odd but legal: billed exactly ---------------------------------------------------------


async def billed_exactly(b: Billed, before: int, got_body: bytes, rows: int = 1) -> int:
    """The newest of `rows` log rows charged the upstream's usage; returns that charge."""
    usage = orjson.loads(got_body)["usage"]
    row = (await log_rows(b, rows))[0]
    expected = quota(GPT, usage["prompt_tokens"], usage["completion_tokens"])
    assert (row.charge, row.details.usage_source) == (expected, "upstream")
    await money_moved(b, before, expected)
    return expected


LEGAL: list[dict[str, Any]] = [
    {},
    {"max_tokens": 0},
    {"max_tokens": 3},
    {"n": 3},
    {"max_tokens": None},
    {"max_completion_tokens": 7, "max_tokens": 2},
]


async def test_legal_limits_are_held_and_billed_exactly(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    for i, fields in enumerate(LEGAL, 1):
        got = await fetch(b.proxy.url + OPENAI, chat(**fields), key_headers(b, OPENAI))
        assert got.status == 200, (fields, got.body)
        before -= await billed_exactly(b, before, got.body, rows=i)


async def test_giant_messages_array_within_the_limit(billed: BilledFactory) -> None:
    """60,000 messages under the body limit are relayed and billed exactly. (How long the
    estimate takes for such a body is a question for a benchmark, not for this test.)"""
    b = await billed(quota=50_000_000)
    before = await b.balance()
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(60_000)]
    body = orjson.dumps({"model": "mock-gpt", "messages": messages})
    assert 1_000_000 < len(body) < 10 * 1024 * 1024
    got = await fetch(b.proxy.url + OPENAI, body, key_headers(b, OPENAI))
    assert got.status == 200
    await billed_exactly(b, before, got.body)


# ---- header abuse on a raw socket ------------------------------------------------------------


def request_bytes(b: Billed, body: bytes, *extra: str, path: str = OPENAI, length: bool = True) -> bytes:
    host = b.proxy.url.removeprefix("http://")
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        f"Authorization: Bearer {b.key}",
        "Content-Type: application/json",
    ]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize(
    "extra",
    [
        ("Transfer-Encoding: chunked",),
        ("Content-Length: 5",),
        ("Transfer-Encoding: chunked", "Transfer-Encoding: identity"),
    ],
    ids=["CL and TE", "duplicate CL", "CL and two TE"],
)
async def test_conflicting_framing_headers_are_refused(billed: BilledFactory, extra: tuple[str, ...]) -> None:
    b = await billed()
    before = await b.balance()
    (resp,) = await raw_exchange(b.proxy.url, request_bytes(b, chat(), *extra))
    # Refused by the HTTP parser, before routing: a plain 400 (no dialect exists yet).
    assert resp.status == 400
    await nothing_moved(b, before)


async def test_hop_by_hop_and_proxy_headers_are_not_forwarded(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    data = request_bytes(
        b,
        chat(),
        "Connection: keep-alive, X-Secret-Hop, X-Other-Hop",
        "X-Secret-Hop: do-not-forward",
        "X-Other-Hop: nor-this",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Proxy-Authorization: Basic c2VjcmV0",
        "X-Forwarded-For: 10.9.9.9",
        "X-Real-IP: 10.9.9.9",
        "Forwarded: for=10.9.9.9",
        "X-Forwarded-Host: evil.example",
        "X-Kept: yes",
    )
    (resp,) = await raw_exchange(b.proxy.url, data)
    assert resp.status == 200
    seen = b.upstream.requests[-1].headers
    for name in (
        "x-secret-hop",
        "x-other-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "x-forwarded-host",
    ):
        assert name not in seen, name
    assert seen["x-kept"] == "yes"
    assert b.key not in orjson.dumps(seen).decode()  # the client's key never goes upstream
    await billed_exactly(b, before, resp.body)


async def test_spoofed_forwarded_for_is_not_trusted(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    clear, digest, _ = generate_key()
    await b.store.create_key(b.user, digest, name="lan-only", ips=("10.0.0.0/8",))
    data = request_bytes(b, chat(), "X-Forwarded-For: 10.1.2.3", "X-Real-IP: 10.1.2.3", "Forwarded: for=10.1.2.3")
    data = data.replace(b.key.encode(), clear.encode())
    (resp,) = await raw_exchange(b.proxy.url, data)
    assert resp.status == 403 and assert_shape(OPENAI, 403, resp.body) == "ip_not_allowed"
    await nothing_moved(b, before)
