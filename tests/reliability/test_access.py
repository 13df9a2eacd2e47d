"""Access control through a real Weir with billing.

* Keys that must not work (unknown, revoked, disabled, expired, outside their model or IP
  allowlist) are refused in the dialect's shape with no hold and no money moved; a key
  bills only its own user.
* Keys are never stored or shown in clear: after real traffic, the SQLite file (and its
  -wal/-shm), every Redis value under the prefix, the logs of a `weir serve` process (access
  log on, `PROXY_TRACE_PLUGINS=1`) and `/metrics` hold neither a client key nor the
  upstream key.
* Keys are compared in constant time (`hmac.compare_digest`, checked on the code itself).
* Admin surfaces: without `admin.token` the console and the admin API answer 404, and
  accounts are managed with the `weir` CLI, which needs read/write access to the config file
  and the store: whoever can run it already owns the data. /metrics names no user and no
  key. (With a token, tests/web covers the console's and admin API's access rules.)
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import yaml

from plugins.billing.apikeys import generate_key, hash_key
from plugins.billing.store.factory import make_store
from proxy.config import parse_config
from proxy.dialects import ANTHROPIC_ROUTES, OPENAI_ROUTES
from proxy.mock.upstream import MockUpstream
from proxy.task_apis import task_routes
from tests.e2e.conftest import PRICES, Billed, BilledFactory, backend, billed  # noqa: F401  (fixtures)
from tests.reliability.rawserver import WeirProcess, fetch, log_rows, money_moved

CHAT = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC = {"model": "mock-claude", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


async def new_key(b: Billed, user: str | None = None, **kw: Any) -> tuple[str, str]:
    """(clear key, key id) of a fresh key for `user` (default: the test user)."""
    clear, digest, hint = generate_key()
    key = await b.store.create_key(user or b.user, digest, name=f"k{time.monotonic_ns()}", hint=hint, **kw)
    return clear, key.id


async def call(b: Billed, key: str, dialect: str = "openai") -> tuple[int, dict[str, Any]]:
    """One non-streamed request in `dialect` with `key`; (status, parsed body)."""
    if dialect == "anthropic":
        got = await fetch(b.proxy.url + "/v1/messages", ANTHROPIC, {"x-api-key": key})
    elif dialect == "gemini":
        got = await fetch(b.proxy.url + f"/v1beta/models/mock-gemini:generateContent?key={key}", GEMINI)
    else:
        got = await fetch(b.proxy.url + "/v1/chat/completions", CHAT, {"Authorization": f"Bearer {key}"})
    return got.status, orjson.loads(got.body)


def code_of(dialect: str, body: dict[str, Any]) -> str:
    """Weir's error code, read from the dialect's own error shape."""
    if dialect == "anthropic":
        assert body["type"] == "error"
        return str(body["error"]["code"])
    if dialect == "gemini":
        return str(body["error"]["details"][0]["reason"])
    return str(body["error"]["code"])


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "gemini"])
async def test_keys_that_must_not_work(billed: BilledFactory, dialect: str) -> None:
    b = await billed()
    before = await b.balance()
    revoked, rid = await new_key(b)
    await b.store.set_key_status(rid, "revoked")
    disabled, did = await new_key(b)
    await b.store.set_key_status(did, "disabled")
    expired, _ = await new_key(b, expires_at=time.time() - 1)
    other_models, _ = await new_key(b, models=("other-*",))
    other_ips, _ = await new_key(b, ips=("10.0.0.0/8", "192.168.0.0/16"))
    cases = [
        ("wk-" + "x" * 40, 401, "invalid_api_key"),
        (b.key + "x", 401, "invalid_api_key"),
        (b.key[:-1], 401, "invalid_api_key"),
        (revoked, 403, "key_disabled"),
        (disabled, 403, "key_disabled"),
        (expired, 403, "key_expired"),
        (other_models, 403, "model_not_allowed"),
        (other_ips, 403, "ip_not_allowed"),
    ]
    for key, status, code in cases:
        got_status, body = await call(b, key, dialect)
        assert (got_status, code_of(dialect, body)) == (status, code), (key[:8], body)
    await money_moved(b, before, 0)
    assert await b.store.query_logs(user=b.user) == [] and b.upstream.requests == []


async def test_allowlists_admit_what_they_list(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    key, _ = await new_key(b, models=("mock-g*",), ips=("10.0.0.0/8", "127.0.0.0/8"))
    status, body = await call(b, key)
    assert status == 200, body
    (row,) = await log_rows(b)
    assert row.charge > 0
    await money_moved(b, before, row.charge)


async def test_a_key_bills_only_its_own_user(billed: BilledFactory) -> None:
    b = await billed()
    await b.store.create_user("bob")
    await b.store.credit("bob", 100_000, note="test")
    bobs_key, bobs_id = await new_key(b, user="bob")
    alice_before = await b.balance()
    status, body = await call(b, bobs_key)
    assert status == 200, body
    await b.proxy.settled()
    (row,) = await b.store.query_logs(user="bob")
    assert row.key_id == bobs_id and row.charge > 0
    bob = await b.store.get_user("bob")
    assert bob is not None and (bob.balance, bob.reserved) == (100_000 - row.charge, 0)
    await money_moved(b, alice_before, 0)  # alice untouched
    assert await b.store.query_logs(user=b.user) == []


# ---- constant-time comparison and the route table -------------------------------------------


def test_keys_are_compared_in_constant_time() -> None:
    from plugins.billing import apikeys, auth

    names = apikeys.matches.__code__.co_names
    assert "hmac" in names and "compare_digest" in names
    assert "matches" in auth.authenticate.__code__.co_names
    # Lookup goes by digest, never by a comparison of clear text.
    assert "find_key" in auth.authenticate.__code__.co_names and "hash_key" in auth.authenticate.__code__.co_names
    clear, digest, _ = apikeys.generate_key()
    assert apikeys.matches(clear, digest) and not apikeys.matches(clear + "x", digest)


async def test_only_api_health_and_metrics_routes_exist(billed: BilledFactory) -> None:
    """Without `admin.token`, nothing beyond the proxied APIs, /healthz, /metrics and the
    pages answers a request that could move money: every admin route is a 404."""
    b = await billed()
    found = set()
    for route in b.proxy.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        found.add((route.method, info.get("path") or info.get("formatter") or info.get("prefix")))
    expected = {("POST", p) for p in {**OPENAI_ROUTES, **ANTHROPIC_ROUTES}}
    expected |= {
        ("GET", "/v1/models"),
        ("HEAD", "/v1/models"),
        ("POST", "/v1/audio/{tail}"),
        ("POST", "/v1beta/models/{target}"),
        ("POST", "/v1/models/{target}"),
        ("GET", "/v1/models/{model}"),
        ("HEAD", "/v1/models/{model}"),
        ("GET", "/healthz"),
        ("HEAD", "/healthz"),
        ("GET", "/metrics"),
        ("HEAD", "/metrics"),
        ("*", "/{tail}"),
    }  # the catch-all: it only answers 404 or 405 (proxy/respond.py)
    expected |= {(method, path) for method, path, _ in task_routes(())}  # /v1/videos (docs/tasks.md)
    assert expected <= found
    # The rest is the web shell and plugins' pages and APIs (docs/console.md).
    pages = ("/", "/admin", "/api/", "/dashboard", "/pricing", "/static/")
    assert all(path == "/" or path.startswith(pages[1:]) for _, path in found - expected), found - expected
    before = await b.balance()
    for path in (
        "/admin",
        "/admin/login",
        "/api/admin/users",
        f"/api/admin/users/{b.user}/topup",
        "/v1/users",
        "/v1/keys",
        "/debug",
        "/v1/admin/topup",
    ):
        got = await fetch(b.proxy.url + path, {"user": b.user, "quota": 10**9}, {"Authorization": f"Bearer {b.key}"})
        assert got.status in (404, 405), path
    await money_moved(b, before, 0)


# ---- keys never in clear --------------------------------------------------------------------


UPSTREAM_KEY = "sk-upstream-Sup3rSecretValue-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


async def traffic(url: str, good: list[str], bad: list[str]) -> None:
    """Successful calls with every credential style, plus refused ones."""
    for key in good:
        assert (await fetch(url + "/v1/chat/completions", CHAT, {"Authorization": f"Bearer {key}"})).status == 200
        assert (await fetch(url + "/v1/messages", ANTHROPIC, {"x-api-key": key})).status == 200
        got = await fetch(url + f"/v1beta/models/mock-gemini:generateContent?key={key}", GEMINI)
        assert got.status == 200
        stream = {**CHAT, "stream": True}
        assert (await fetch(url + "/v1/chat/completions", stream, {"x-goog-api-key": key})).status == 200
    for key in bad:
        assert (await fetch(url + "/v1/chat/completions", CHAT, {"Authorization": f"Bearer {key}"})).status in (
            401,
            403,
        )
        assert (await fetch(url + f"/v1beta/models/mock-gemini:generateContent?key={key}", GEMINI)).status in (401, 403)


def assert_absent(where: str, data: bytes, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret.encode() not in data, f"{secret[:6]}… found in {where}"


async def test_no_key_in_clear_in_sqlite_logs_or_metrics(tmp_path: Path, fake_upstream: MockUpstream) -> None:
    fake_upstream.behaviour.require_key = UPSTREAM_KEY  # Weir must send it, and only there
    port = free_port()
    db = tmp_path / "weir.db"
    cfg = {
        "server": {"port": port, "shutdown_grace": 1, "access_log": True},
        "store": {"backend": "sqlite", "path": str(db)},
        "upstreams": [{"name": "up", "type": "mock", "base_url": fake_upstream.url, "api_key": "${UP_KEY}"}],
        "plugins": [{"use": "billing", "config": {"pricing": {"models": PRICES}}}],
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    store = make_store(parse_config(cfg, env={"UP_KEY": UPSTREAM_KEY}))
    await store.open()
    good, bad = [], ["wk-" + "q" * 40]
    for name in ("carol-the-customer", "dave-the-customer"):
        await store.create_user(name)
        await store.credit(name, 1_000_000, note="test")
        clear, digest, hint = generate_key()
        await store.create_key(name, digest, name="main", hint=hint)
        good.append(clear)
    clear, digest, hint = generate_key()
    off = await store.create_key("carol-the-customer", digest, name="off", hint=hint)
    await store.set_key_status(off.id, "disabled")
    bad.append(clear)
    await store.close()
    weir = WeirProcess(path, env={"UP_KEY": UPSTREAM_KEY, "PROXY_TRACE_PLUGINS": "1"})
    try:
        await asyncio.to_thread(weir.start, f"http://127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}"
        await traffic(url, good, bad)
        metrics = await asyncio.to_thread(get_text, url + "/metrics")
    finally:
        await asyncio.to_thread(weir.stop)
    assert all(r.key == UPSTREAM_KEY for r in fake_upstream.requests)
    assert all(k not in str(r.headers) + str(r.query) for r in fake_upstream.requests for k in good)
    secrets = [*good, *bad, UPSTREAM_KEY]
    logs = weir.logs()
    assert "request_id=" in logs and "hook=on_request" in logs  # access log and trace were on
    assert_absent("the logs", logs.encode(), secrets)
    assert_absent("/metrics", metrics.encode(), [*secrets, "carol-the-customer", "dave-the-customer", "main"])
    stored = b"".join(f.read_bytes() for f in tmp_path.glob("weir.db*"))
    assert hash_key(good[0]).encode() in stored  # the scan does see the key records
    for f in tmp_path.glob("weir.db*"):
        assert_absent(f.name, f.read_bytes(), secrets)


@pytest.mark.parametrize("backend", ["redis"])  # the SQLite file is covered by the serve test
async def test_no_key_in_clear_in_redis(billed: BilledFactory, backend: str, redis_url: str) -> None:
    b = await billed()
    assert type(b.store).__name__ == "RedisStore"
    other, _ = await new_key(b)
    for key in (b.key, other):
        assert (await call(b, key))[0] == 200
        assert (await call(b, key, "gemini"))[0] == 200
    assert (await call(b, "wk-" + "z" * 40))[0] == 401
    await b.proxy.settled()
    prefix = b.store._k.prefix  # type: ignore[attr-defined]
    client: Any = aioredis.Redis.from_url(redis_url)
    readers = {
        "string": "get",
        "hash": "hgetall",
        "list": "lrange",
        "set": "smembers",
        "zset": "zrange",
        "stream": "xrange",
    }
    try:
        blob = bytearray()
        names = [k async for k in client.scan_iter(match=prefix + ":*")]
        assert names, "nothing stored under the prefix"
        for name in names:
            kind = (await client.type(name)).decode()
            if kind == "none":  # removed since the scan: the orphan resolver drops empty marks
                continue
            method = getattr(client, readers[kind])
            value = await (method(name, 0, -1) if kind in ("list", "zset") else method(name))
            # repr() keeps ASCII bytes readable, so a clear key would show as itself.
            blob += name + (await client.dump(name) or b"") + repr(value).encode()
        assert hash_key(b.key).encode() in blob  # the scan did reach the key records
        assert_absent("Redis", bytes(blob), [b.key, other, "wk-" + "z" * 40])
    finally:
        await client.aclose()
