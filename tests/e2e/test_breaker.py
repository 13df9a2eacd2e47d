"""The circuit breaker on a real Weir with billing: a dead upstream stops costing attempts,
comes back through one probe, and a request with every upstream cooling is refused at once
(released, audit clean). Counts, not timings: cooldowns are either far longer than the test
(600 s) or waited for by polling with a generous deadline."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.mock.upstream import MockUpstream
from tests.e2e.conftest import Billed, BilledFactory

MSG = [{"role": "user", "content": "hello"}]


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there now: connections are refused
    return url


def mock(name: str, url: str, priority: int = 0) -> dict[str, Any]:
    return {"name": name, "type": "mock", "base_url": url, "models": ["*"], "priority": priority}


async def metrics(b: Billed) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as s:
        async with s.get(b.proxy.url + "/metrics") as resp:
            text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def chat(b: Billed) -> None:
    await b.openai().chat.completions.create(model="mock-gpt", messages=MSG)  # type: ignore[arg-type]


@pytest.mark.parametrize(("failures", "tried"), [(5, 5), (0, 40)])
async def test_a_dead_upstream_among_two_is_tried_at_most_n_times(
    billed: BilledFactory, fake_upstream: MockUpstream, failures: int, tried: int
) -> None:
    # The dead upstream comes first (priority 0), so without a breaker every request tries it.
    b = await billed(
        upstreams=[mock("dead", closed_port_url()), mock("good", fake_upstream.url, priority=1)],
        routing={"breaker": {"failures": failures, "cooldown_s": 600}},
    )
    before = await b.balance()
    for _ in range(40):
        await chat(b)
    found = await metrics(b)
    assert value(found, "weir_upstream_attempts_total", upstream="dead", result="unreachable") == tried
    assert value(found, "weir_upstream_attempts_total", upstream="good", result="200") == 40
    assert value(found, "weir_upstream_breaker_open", upstream="dead") == (1 if failures else 0)
    assert value(found, "weir_upstream_breaker_trips_total", upstream="dead") == (1 if failures else 0)
    assert value(found, "weir_upstream_breaker_open", upstream="good") == 0
    await b.proxy.settled()
    logs = await b.store.query_logs(user=b.user, limit=100)
    assert len(logs) == 40 and {r.details.upstream for r in logs} == {"good"}
    assert await b.balance() == before - sum(r.charge for r in logs)  # each billed once


async def test_half_open_probe_closes_on_success_and_reopens_on_failure(
    billed: BilledFactory, fake_upstream: MockUpstream
) -> None:
    flaky = MockUpstream()
    flaky.behaviour.fail_status = 503
    await flaky.start()
    try:
        b = await billed(
            upstreams=[mock("flaky", flaky.url), mock("good", fake_upstream.url, priority=1)],
            routing={"breaker": {"failures": 3, "cooldown_s": 0.3}},
        )
        for _ in range(3):
            await chat(b)  # 503 from flaky, then failover to good
        assert len(flaky.requests) == 3
        found = await metrics(b)
        assert value(found, "weir_upstream_breaker_open", upstream="flaky") == 1
        flaky.behaviour.fail_status = None  # it recovers; the breaker lets one probe find out
        await until_tried(b, flaky, 4)
        found = await metrics(b)
        assert value(found, "weir_upstream_breaker_open", upstream="flaky") == 0
        await chat(b)
        assert len(flaky.requests) == 5  # closed again: priority 0 serves
        flaky.behaviour.fail_status = 500
        for _ in range(3):
            await chat(b)
        assert len(flaky.requests) == 8
        await until_tried(b, flaky, 9)  # the probe fails: open for another cooldown
        found = await metrics(b)
        assert value(found, "weir_upstream_breaker_trips_total", upstream="flaky") == 3
        assert value(found, "weir_upstream_breaker_open", upstream="flaky") == 1
    finally:
        await flaky.stop()


async def until_tried(b: Billed, upstream: MockUpstream, count: int) -> None:
    """Send requests until `upstream` has received `count` (the cooldown ends meanwhile)."""
    deadline = time.monotonic() + 30
    while len(upstream.requests) < count:
        assert time.monotonic() < deadline, "the breaker never let a probe through"
        await chat(b)
        await asyncio.sleep(0.05)
    assert len(upstream.requests) == count


async def test_every_upstream_cooling_is_refused_at_once_and_released(billed: BilledFactory) -> None:
    b = await billed(
        upstreams=[mock("dead", closed_port_url())], routing={"breaker": {"failures": 2, "cooldown_s": 600}}
    )
    before = await b.balance()
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as err:
            await chat(b)
        assert err.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as err:
        await chat(b)
    assert err.value.status_code == 503
    assert isinstance(err.value.body, dict) and err.value.body["code"] == "upstream_unavailable"
    assert "skipped for a cooling period" in err.value.body["message"]
    found = await metrics(b)
    assert value(found, "weir_upstream_attempts_total", upstream="dead", result="unreachable") == 2
    await b.proxy.settled()
    logs = await b.store.query_logs(user=b.user, limit=10)
    assert [r.charge for r in logs] == [0, 0, 0] and await b.balance() == before
