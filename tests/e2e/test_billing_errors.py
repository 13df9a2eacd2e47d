"""Refusals in the dialect's shape, none of which holds or moves any money."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import aiohttp
import orjson
import pytest

from plugins.billing.apikeys import generate_key
from tests.e2e.conftest import Billed, BilledFactory

CHAT = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def post(
    b: Billed,
    key: str | None,
    body: dict[str, Any] = CHAT,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    h = dict(headers or {})
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    async with aiohttp.ClientSession() as s:
        async with s.post(b.proxy.url + path, json=body, headers=h) as r:
            return r.status, orjson.loads(await r.read())


async def unchanged(b: Billed, before: tuple[int, int]) -> None:
    await b.proxy.settled()
    user = await b.store.get_user(b.user)
    assert user is not None and (user.balance, user.reserved) == before
    assert await b.store.open_holds() == []
    assert b.upstream.requests == []


async def snapshot(b: Billed) -> tuple[int, int]:
    user = await b.store.get_user(b.user)
    assert user is not None
    return user.balance, user.reserved


async def test_invalid_and_missing_key_401(billed: BilledFactory) -> None:
    b = await billed()
    before = await snapshot(b)
    for key in (None, "wk-not-a-real-key"):
        status, body = await post(b, key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = await post(b, "nope", {"model": "mock-claude", "max_tokens": 5, "messages": []}, "/v1/messages")
    assert status == 401 and body["type"] == "error" and body["error"]["type"] == "authentication_error"
    await unchanged(b, before)


async def test_disabled_expired_and_allowlists_403(billed: BilledFactory) -> None:
    b = await billed()
    before = await snapshot(b)
    cases = []
    clear, digest, _ = generate_key()
    k = await b.store.create_key(b.user, digest, name="off")
    await b.store.set_key_status(k.id, "disabled")
    cases.append((clear, "key_disabled"))
    clear, digest, _ = generate_key()
    await b.store.create_key(b.user, digest, name="old", expires_at=time.time() + 0.05)
    await asyncio.sleep(0.1)
    cases.append((clear, "key_expired"))
    clear, digest, _ = generate_key()
    await b.store.create_key(b.user, digest, name="claude-only", models=("mock-claude*",))
    cases.append((clear, "model_not_allowed"))
    clear, digest, _ = generate_key()
    await b.store.create_key(b.user, digest, name="lan", ips=("10.0.0.0/8",))
    cases.append((clear, "ip_not_allowed"))
    for key, code in cases:
        status, body = await post(b, key)
        assert (status, body["error"]["code"]) == (403, code)
    # X-Forwarded-For is not trusted: spoofing a LAN address does not pass the allowlist.
    status, body = await post(b, cases[-1][0], headers={"X-Forwarded-For": "10.1.2.3"})
    assert body["error"]["code"] == "ip_not_allowed"
    await unchanged(b, before)


async def test_insufficient_quota_402_names_balance_and_estimate(billed: BilledFactory) -> None:
    b = await billed(quota=10)
    before = await snapshot(b)
    status, body = await post(b, b.key, {**CHAT, "max_tokens": 100000})
    assert status == 402 and body["error"]["code"] == "insufficient_quota"
    msg = body["error"]["message"]
    assert "available $0.00002" in msg and "estimated at up to $" in msg
    await unchanged(b, before)


async def test_model_not_priced_400(billed: BilledFactory) -> None:
    b = await billed()
    before = await snapshot(b)
    status, body = await post(b, b.key, {**CHAT, "model": "mock-unpriced"})
    assert status == 400 and body["error"]["code"] == "model_not_priced"
    await unchanged(b, before)


@pytest.mark.parametrize(
    "field,value", [("max_tokens", -1), ("max_tokens", 1.5), ("max_tokens", 10**12), ("n", 0), ("n", "2")]
)
async def test_hostile_numbers_400(billed: BilledFactory, field: str, value: Any) -> None:
    b = await billed()
    before = await snapshot(b)
    status, body = await post(b, b.key, {**CHAT, field: value})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    await unchanged(b, before)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # Redis outages: tests/reliability
async def test_store_unavailable_503_admits_nothing(billed: BilledFactory, tmp_path: Any) -> None:
    b = await billed(store_overrides={"busy_timeout_ms": 50})
    before = await snapshot(b)
    locker = sqlite3.connect(str(tmp_path / "weir.db"), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        status, body = await post(b, b.key)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert status == 503 and body["error"]["code"] == "store_unavailable"
    await unchanged(b, before)


async def test_models_and_count_tokens_are_free_but_authenticated(billed: BilledFactory) -> None:
    b = await billed()
    before = await snapshot(b)
    async with aiohttp.ClientSession() as s:
        async with s.get(b.proxy.url + "/v1/models") as r:
            assert r.status == 401
        async with s.get(b.proxy.url + "/v1/models", headers={"Authorization": f"Bearer {b.key}"}) as r:
            assert r.status == 200 and "mock-gpt" in {m["id"] for m in (await r.json())["data"]}
    status, body = await post(
        b, b.key, {"model": "mock-claude", "messages": [{"role": "user", "content": "x"}]}, "/v1/messages/count_tokens"
    )
    assert status == 200 and body["input_tokens"] > 0
    await b.proxy.settled()
    assert await snapshot(b) == before


async def test_revocation_applies_at_once_despite_the_key_cache(billed: BilledFactory) -> None:
    b = await billed()
    status, _ = await post(b, b.key, {**CHAT, "stream": False})
    assert status == 200  # the key is now in the plugin's short-lived cache
    await b.proxy.settled()
    before = await snapshot(b)
    calls = len(b.upstream.requests)
    (key,) = await b.store.list_keys(b.user)
    await b.store.set_key_status(key.id, "revoked")
    status, body = await post(b, b.key, {**CHAT, "stream": False})
    assert (status, body["error"]["code"]) == (403, "key_disabled")
    await b.proxy.settled()
    assert await snapshot(b) == before and len(b.upstream.requests) == calls
    assert await b.store.open_holds() == []
