"""Upstream health through a real Weir: failed attempts (5xx, failover) and first-byte times
reach `Host.upstreams()`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from proxy.host import host_of
from proxy.mock.upstream import MockUpstream
from proxy.testing import ProxyHandle
from proxy.upstream_health import UpstreamHealth, is_failure

CHAT = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def test_what_counts_against_an_upstream() -> None:
    assert [is_failure(r) for r in ("200", "400", "404", "429", "500", "503", "timeout", "unreachable")] == [
        False,
        False,
        False,
        True,
        True,
        True,
        True,
        True,
    ]
    assert UpstreamHealth().snapshot() == []


async def test_errors_and_first_byte_times_are_reported(
    make_proxy: Callable[..., Awaitable[ProxyHandle]], fake_upstream: MockUpstream
) -> None:
    proxy = await make_proxy()
    [status] = host_of(proxy.app).upstreams()
    assert (status.name, status.healthy, status.recent_attempts, status.p50_ms) == ("fake", True, 0, None)
    async with aiohttp.ClientSession() as s:
        fake_upstream.behaviour.fail_status = 503
        fake_upstream.behaviour.fail_times = 1
        async with s.post(proxy.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 503  # one upstream: nothing to fail over to
            await r.read()
        [status] = host_of(proxy.app).upstreams()
        assert (status.healthy, status.recent_errors, status.last_error) == (False, 1, "503")
        async with s.post(proxy.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200
            await r.read()
    await proxy.settled()
    [status] = host_of(proxy.app).upstreams()
    assert status.healthy and status.recent_errors == 1 and status.recent_attempts == 2
    assert status.p50_ms is not None and status.p50_ms >= 0


async def test_an_open_breaker_makes_the_upstream_unhealthy(
    make_proxy: Callable[..., Awaitable[ProxyHandle]], fake_upstream: MockUpstream
) -> None:
    proxy = await make_proxy(routing={"breaker": {"failures": 2, "cooldown_s": 60}})
    fake_upstream.behaviour.fail_status = 503
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(proxy.url + "/v1/chat/completions", json=CHAT) as r:
                await r.read()
    await proxy.settled()
    [status] = host_of(proxy.app).upstreams()
    assert status.breaker_open and not status.healthy and status.recent_errors == 2
