"""The `rate_limit` example plugin, through a real Weir in front of the loopback upstream."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from plugins.examples.rate_limit import RateLimitConfig, RateLimitPlugin
from proxy.config import PluginSpec
from proxy.dataclass_builder import ConfigError
from proxy.loader import load_plugins

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(clock: Clock, rpm: int, burst: int | None = None) -> RateLimitPlugin:
    return RateLimitPlugin(RateLimitConfig(requests_per_minute=rpm, burst=burst), clock=clock)


async def chat(
    session: aiohttp.ClientSession, url: str, key: str | None = "sk-alice"
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with session.post(url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
        return r.status, await r.json(), r


async def test_refuses_the_request_after_the_limit_in_openai_shape(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = await make_proxy(plugins=[limiter(Clock(), rpm=3)])
    async with aiohttp.ClientSession() as s:
        statuses = [(await chat(s, proxy.url))[0] for _ in range(3)]
        status, body, resp = await chat(s, proxy.url)
    assert statuses == [200, 200, 200]
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "rate_limit_error"
    assert "3 requests per minute" in body["error"]["message"]
    # Three per minute: the next token comes 20 s after the bucket emptied.
    assert resp.headers["Retry-After"] == "20"
    assert resp.headers["x-request-id"]


async def test_refused_request_never_reaches_the_upstream(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = await make_proxy(plugins=[limiter(Clock(), rpm=60, burst=2)])
    async with aiohttp.ClientSession() as s:
        await chat(s, proxy.url)
        await chat(s, proxy.url)
        assert len(fake_upstream.requests) == 2
        status, _, _ = await chat(s, proxy.url)
    assert status == 429
    assert len(fake_upstream.requests) == 2


async def test_success_reports_remaining_requests(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = await make_proxy(plugins=[limiter(Clock(), rpm=10, burst=4)])
    async with aiohttp.ClientSession() as s:
        remaining = []
        for _ in range(4):
            _, _, resp = await chat(s, proxy.url)
            remaining.append(resp.headers["x-ratelimit-remaining-requests"])
            assert resp.headers["x-ratelimit-limit-requests"] == "10"
    assert remaining == ["3", "2", "1", "0"]


async def test_each_key_has_its_own_bucket(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = await make_proxy(plugins=[limiter(Clock(), rpm=60, burst=1)])
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, proxy.url, "sk-alice"))[0] == 200
        assert (await chat(s, proxy.url, "sk-alice"))[0] == 429
        assert (await chat(s, proxy.url, "sk-bob"))[0] == 200
        assert (await chat(s, proxy.url, "sk-bob"))[0] == 429
        # A request without a key is not charged to any key's bucket.
        assert (await chat(s, proxy.url, None))[0] == 200


async def test_bucket_refills_as_time_passes(make_proxy: Any, fake_upstream: Any) -> None:
    clock = Clock()
    proxy = await make_proxy(plugins=[limiter(clock, rpm=6, burst=2)])
    async with aiohttp.ClientSession() as s:
        assert [(await chat(s, proxy.url))[0] for _ in range(3)] == [200, 200, 429]
        clock.advance(9.5)
        status, _, resp = await chat(s, proxy.url)
        assert (status, resp.headers["Retry-After"]) == (429, "1")
        clock.advance(0.5)
        assert (await chat(s, proxy.url))[0] == 200
        assert (await chat(s, proxy.url))[0] == 429
        # A long rest refills up to the burst size, not beyond it.
        clock.advance(3600)
        assert [(await chat(s, proxy.url))[0] for _ in range(3)] == [200, 200, 429]


async def test_a_token_due_now_is_usable_despite_float_rounding(make_proxy: Any, fake_upstream: Any) -> None:
    clock = Clock()
    proxy = await make_proxy(plugins=[limiter(clock, rpm=7, burst=1)])
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, proxy.url))[0] == 200
        # One token takes 60/7 s; seven steps of a seventh add up to a hair under 1.0 in floats.
        for _ in range(6):
            clock.advance(60 / 7 / 7)
            assert (await chat(s, proxy.url))[0] == 429
        clock.advance(60 / 7 / 7)
        assert (await chat(s, proxy.url))[0] == 200


async def test_anonymous_requests_share_one_bucket_per_client_ip(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = await make_proxy(plugins=[limiter(Clock(), rpm=60, burst=2)])
    async with aiohttp.ClientSession() as first, aiohttp.ClientSession() as second:
        # Two separate clients (separate connections) from the same address share a bucket.
        assert (await chat(first, proxy.url, None))[0] == 200
        assert (await chat(second, proxy.url, None))[0] == 200
        assert (await chat(first, proxy.url, None))[0] == 429
        assert (await chat(second, proxy.url, None))[0] == 429
        # A keyed request from that same address is unaffected.
        assert (await chat(first, proxy.url, "sk-carol"))[0] == 200
    # Linux routes all of 127.0.0.0/8 to loopback, so 127.0.0.2 is another client address.
    other_ip = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=other_ip) as third:
        try:
            assert (await chat(third, proxy.url, None))[0] == 200
        except aiohttp.ClientConnectorError as exc:
            pytest.skip(f"cannot bind 127.0.0.2 here: {exc}")


async def test_idle_buckets_are_forgotten(make_proxy: Any, fake_upstream: Any) -> None:
    clock = Clock()
    plugin = limiter(clock, rpm=60, burst=5)
    proxy = await make_proxy(plugins=[plugin])
    async with aiohttp.ClientSession() as s:
        for i in range(150):
            assert (await chat(s, proxy.url, f"sk-{i}"))[0] == 200
        assert plugin.tracked_clients == 150
        clock.advance(2)
        assert (await chat(s, proxy.url, "sk-0"))[0] == 200
        # Not yet refilled (5 tokens at 1/s): nobody may be forgotten.
        assert plugin.tracked_clients == 150
        clock.advance(4)
        assert (await chat(s, proxy.url, "sk-new"))[0] == 200
    # Everyone untouched for the 5 s a refill takes was forgotten; sk-0 (4 s) was not.
    assert plugin.tracked_clients == 2


async def test_clear_keys_are_not_kept(make_proxy: Any, fake_upstream: Any) -> None:
    plugin = limiter(Clock(), rpm=60)
    proxy = await make_proxy(plugins=[plugin])
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, proxy.url, "sk-secret-value-123"))[0] == 200
    assert plugin.tracked_clients == 1
    assert "sk-secret-value-123" not in repr(vars(plugin))
    assert b"sk-secret-value-123" not in b"".join(plugin._buckets)


async def test_anthropic_endpoint_gets_anthropic_error_shape(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = await make_proxy(plugins=[limiter(Clock(), rpm=60, burst=1)])
    body = {"model": "claude-3-5-haiku", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s:
        for expected in (200, 429):
            async with s.post(proxy.url + "/v1/messages", json=body, headers={"x-api-key": "sk-ant"}) as r:
                assert r.status == expected
                payload = await r.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "rate_limit_error"
    assert payload["error"]["code"] == "rate_limit_exceeded"
    assert r.headers["Retry-After"] == "1"


def test_loads_by_entry_point_name() -> None:
    (plugin,) = load_plugins((PluginSpec(use="rate_limit", config={"requests_per_minute": 30, "burst": 5}),))
    assert isinstance(plugin, RateLimitPlugin)
    assert plugin.config == RateLimitConfig(requests_per_minute=30, burst=5)


def test_loads_by_import_path() -> None:
    spec = PluginSpec(use="plugins.examples.rate_limit:RateLimitPlugin", config={"requests_per_minute": "30"})
    (plugin,) = load_plugins((spec,))
    assert isinstance(plugin, RateLimitPlugin)
    assert plugin.config.capacity == 30


@pytest.mark.parametrize(
    ("config", "path", "words"),
    [
        ({"requests_per_minute": "lots"}, "plugins[0].config.requests_per_minute", "expected an integer"),
        ({}, "plugins[0].config.requests_per_minute", "required key is missing"),
        ({"requests_per_minute": 5, "rpm": 5}, "plugins[0].config.rpm", "unknown key"),
        ({"requests_per_minute": 5, "burst": "x"}, "plugins[0].config.burst", "expected an integer"),
        ({"requests_per_minute": 0}, "plugins[0].config", "requests_per_minute must be at least 1"),
        ({"requests_per_minute": 5, "burst": 0}, "plugins[0].config", "burst must be at least 1"),
    ],
)
def test_bad_config_names_the_yaml_path(config: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_plugins((PluginSpec(use="rate_limit", config=config),))
    assert info.value.path == path
    assert str(info.value).startswith(path + ": ")
    assert words in str(info.value)
