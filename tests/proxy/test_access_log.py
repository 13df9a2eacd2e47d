"""The access log: the same lines as a `logging` line per request would give, written in
batches, and nothing lost at a clean shutdown."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import aiohttp
import pytest

from proxy.access_log import AccessLog, Entry
from proxy.mock.upstream import MockUpstream
from proxy.testing import proxy_config, start_proxy

AT = 1_765_116_600.25  # a fixed instant with milliseconds


def entry(rid: str, ttft: float | None = 1.93) -> Entry:
    return (
        AT,
        rid,
        "198.51.100.7",
        "POST",
        "/v1/chat/completions",
        "mock-gpt",
        "fake",
        200,
        True,
        "completed",
        15,
        3.14159,
        ttft,
    )


class CountingStream(io.StringIO):
    """A stream that counts its writes."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_match_the_logging_format() -> None:
    """Each line is what `logging`'s "%(asctime)s %(levelname)s %(name)s: %(message)s" makes
    of the same message at the same instant."""
    out = CountingStream()
    log = AccessLog(lambda: out)
    log.add(entry("r1"))
    log.add(entry("r2", ttft=None))
    log.flush()
    record = logging.LogRecord("weir.access", logging.INFO, __file__, 0, "request_id=r1", None, None)
    record.created, record.msecs = AT, 250.0
    stamp = logging.Formatter().formatTime(record)
    assert out.getvalue().splitlines() == [
        f"{stamp} INFO weir.access: request_id=r1 client=198.51.100.7 method=POST path=/v1/chat/completions "
        "model=mock-gpt upstream=fake status=200 stream=True outcome=completed events=15 ms=3.1 ttft_ms=1.9",
        f"{stamp} INFO weir.access: request_id=r2 client=198.51.100.7 method=POST path=/v1/chat/completions "
        "model=mock-gpt upstream=fake status=200 stream=True outcome=completed events=15 ms=3.1 ttft_ms=-",
    ]


def test_lines_wait_for_the_batch() -> None:
    """Nothing is written per request; a flush writes every waiting line in one write, and
    MAX_PENDING waiting lines are written at once."""
    out = CountingStream()
    log = AccessLog(lambda: out)
    for i in range(3):
        log.add(entry(f"r{i}"))
    assert out.writes == 0
    log.flush()
    log.flush()  # nothing left: no write
    assert out.writes == 1 and len(out.getvalue().splitlines()) == 3
    for i in range(AccessLog.MAX_PENDING):
        log.add(entry(f"s{i}"))
    assert out.writes == 2 and len(out.getvalue().splitlines()) == 3 + AccessLog.MAX_PENDING


async def test_a_clean_stop_writes_every_line(
    fake_upstream: MockUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Five requests, then the proxy stops before a second has passed: all five lines are
    on stderr, each with its request id."""
    proxy = await start_proxy(proxy_config(fake_upstream.url, tmp_path, server={"access_log": True}))
    ids = []
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(proxy.openai_base + "/chat/completions", json=body) as r:
                assert r.status == 200
                ids.append(r.headers["x-request-id"])
    await proxy.stop()
    lines = [line for line in capsys.readouterr().err.splitlines() if " weir.access: " in line]
    assert [line.split("request_id=")[1].split()[0] for line in lines] == ids
