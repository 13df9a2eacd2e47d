"""Clients that stop reading without closing, through a real `weir serve` (billing, SQLite).

The upstream is a raw-socket firehose (a 256 MiB answer written as fast as it is read), so
a client that stops reading soon fills the kernel's buffers and Weir's `write()` to it
blocks; the firehose's `sent` counter then stops moving (backpressure), which is how these
tests know a relay is blocked (quiet for 2 s), rather than by sleeping a fixed time. Client sockets shrink SO_RCVBUF so
that happens after a few MB, not tens. Every wait is for a condition, with a generous
timeout, so a busy 2-vCPU machine only makes the tests slower.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from plugins.billing.apikeys import generate_key
from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from plugins.billing.store.base import LogRow, Store
from plugins.billing.store.factory import make_store
from proxy.config import parse_config
from proxy.context import Endpoint
from tests.e2e.conftest import PRICES
from tests.reliability.procs import audit_json, free_port, wait_for
from tests.reliability.rawserver import RawUpstream, WeirProcess, chat_text, quota, tokens
from tests.reliability.test_client_faults import firehose

GPT = PRICES["mock-gpt*"]
BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "tell me about weirs"}], "stream": True}
#: Large enough that a hold covers everything Weir can relay into full kernel buffers.
RESERVE = 2_000_000


@dataclass(slots=True)
class Served:
    """A `weir serve` in front of the firehose, its store (the test's own connection), a key."""

    weir: WeirProcess
    raw: RawUpstream
    url: str
    key: str
    store: Store
    config: Path

    async def rows(self, n: int, timeout: float = 60.0) -> list[LogRow]:
        """Wait until the consume log holds `n` rows; return them."""
        rows: list[LogRow] = []

        async def enough() -> bool:
            nonlocal rows
            rows = await self.store.query_logs(user="alice", limit=100)
            return len(rows) >= n

        await wait_for(enough, timeout, f"{n} consume-log rows", every=0.1)
        assert len(rows) == n, rows
        return rows

    async def blocked(self, timeout: float = 60.0) -> int:
        """Wait until the upstream has sent nothing for 2 s (every relay blocked on its
        client: Weir reads whenever it can write, so a quiet upstream means full buffers);
        return its `sent`."""
        last = [-1, time.monotonic()]

        def still() -> bool:
            if self.raw.sent != last[0]:
                last[:] = [self.raw.sent, time.monotonic()]
            return time.monotonic() - last[1] >= 2.0

        await wait_for(still, timeout, "the upstream to be blocked by backpressure", every=0.1)
        return self.raw.sent


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """Factory: `await served(server={...}, billing={...})` starts Weir on the firehose."""
    started: list[tuple[WeirProcess, RawUpstream, Store]] = []

    async def start(server: dict[str, Any] | None = None, billing: dict[str, Any] | None = None) -> Served:
        raw = RawUpstream(firehose)
        await raw.start()
        port = free_port()
        cfg = {
            "server": {"port": port, "shutdown_grace": 2, "access_log": True, **(server or {})},
            "store": {"backend": "sqlite", "path": str(tmp_path / "weir.db")},
            "upstreams": [{"name": "raw", "type": "openai", "base_url": raw.url + "/v1", "api_key": "sk-up"}],
            "plugins": [
                {
                    "use": "billing",
                    "config": {"pricing": {"models": PRICES}, "default_output_reserve": RESERVE, **(billing or {})},
                }
            ],
        }
        path = tmp_path / "proxy.yaml"
        path.write_text(yaml.safe_dump(cfg))
        store = make_store(parse_config(cfg, env={}))
        await store.open()
        await store.create_user("alice")
        await store.credit("alice", 10**12, note="test")
        clear, digest, hint = generate_key()
        await store.create_key("alice", digest, name="k", hint=hint)
        weir = WeirProcess(path)
        started.append((weir, raw, store))
        await asyncio.to_thread(weir.start, f"http://127.0.0.1:{port}")
        return Served(weir, raw, f"http://127.0.0.1:{port}", clear, store, path)

    try:
        yield start
    finally:
        for weir, raw, store in started:
            await asyncio.to_thread(weir.stop)
            await raw.stop()
            await store.close()


@dataclass(slots=True)
class StalledClient:
    """A raw-socket client that read a few KB of a stream, then stopped reading (not closed)."""

    sock: socket.socket
    request_id: str
    received: bytes

    def text(self) -> str:
        """The content text of the whole events it received (chunk framing removed)."""
        body = self.received.split(b"\r\n\r\n", 1)[1]
        return chat_text(re.sub(rb"\r\n[0-9a-f]+\r\n", b"", b"\r\n" + body))

    def read_to_end(self, timeout: float = 60.0) -> bool:
        """Read what is left; True when the connection ended without the chunked body's end
        (an abort), False when the response ended cleanly."""
        self.sock.settimeout(timeout)
        tail = b""
        try:
            while chunk := self.sock.recv(1 << 16):
                tail = (tail + chunk)[-16:]
        except ConnectionResetError:
            return True
        return not tail.endswith(b"0\r\n\r\n")


def open_stalled(url: str, key: str, read: int = 4096) -> StalledClient:
    """Send a streamed chat request, read `read` bytes of the answer, stop reading."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(60)
    sock.connect((host, int(port)))
    body = orjson.dumps(BODY)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    got = b""
    while len(got) < read or b"\r\n\r\n" not in got:
        chunk = sock.recv(read)
        assert chunk, f"the stream ended early: {got[:300]!r}"
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got[:300]
    rid = re.search(rb"(?i)\r\nx-request-id: ([0-9a-f]+)\r\n", got)
    assert rid is not None, got[:300]
    return StalledClient(sock, rid.group(1).decode(), got)


def assert_partial(row: LogRow, client: StalledClient, reason: str) -> None:
    """`row` bills `client`'s stream by the partial rule: the estimated prompt plus the
    relayed output, which covers at least what the client read, and stays within the hold."""
    prompt = BillingPlugin(BillingConfig(pricing={"models": PRICES})).estimator.prompt_tokens(
        Endpoint.CHAT, BODY, "mock-gpt"
    )
    d = row.details
    assert (d.end_reason, d.usage_source, d.input) == (reason, "partial", prompt), row
    assert d.output >= tokens(client.text(), "mock-gpt") > 0, row
    assert row.charge == quota(GPT, prompt, d.output), row
    assert 0 < row.charge <= row.estimate, row


async def test_sigterm_settles_streams_blocked_on_clients_that_stopped_reading(
    served: Callable[..., Awaitable[Served]],
) -> None:
    """SIGTERM while three clients have stopped reading (Weir's writes to them blocked):
    the process exits on its own within `shutdown_grace` (2 s) plus a margin far below an
    unbounded wait, and before exiting it settles every stream as `shutdown` with the
    partial charge (each hold resolved, none left open), logs `outcome=shutdown` for each,
    and aborts each client's connection; `weir audit` exits 0 afterwards."""
    s = await served()
    clients = [await asyncio.to_thread(open_stalled, s.url, s.key) for _ in range(3)]
    await s.blocked()
    assert len(await s.store.open_holds()) == 3  # every relay is still running, blocked
    assert s.weir.proc is not None
    started = time.monotonic()
    os.killpg(s.weir.proc.pid, signal.SIGTERM)
    code = await asyncio.to_thread(s.weir.proc.wait, 60)
    took = time.monotonic() - started
    assert code == 0, s.weir.logs()
    assert took < 2 + 10, (took, s.weir.logs())
    rows = {r.request_id: r for r in await s.rows(3, timeout=5)}
    for client in clients:
        assert_partial(rows[client.request_id], client, "shutdown")
        assert re.search(rf"request_id={client.request_id} .* outcome=shutdown ", s.weir.logs())
        assert await asyncio.to_thread(client.read_to_end), "the client's stream must end as broken"
    assert await s.store.open_holds() == []
    code, report = audit_json(s.config)
    assert code == 0 and report["ok"], report


async def test_a_stalled_client_is_cut_off_and_billed_partially(served: Callable[..., Awaitable[Served]]) -> None:
    """In normal operation, a client that accepts nothing for `client_write_timeout` (1 s)
    is cut off: its connection is aborted, the stream settles as `client_stalled` with the
    partial charge, its hold is resolved, the audit is clean, and Weir keeps serving."""
    s = await served(server={"client_write_timeout": 1})
    client = await asyncio.to_thread(open_stalled, s.url, s.key)
    (row,) = await s.rows(1)
    assert_partial(row, client, "client_stalled")
    assert await asyncio.to_thread(client.read_to_end), "the client's stream must end as broken"
    assert await s.store.open_holds() == []
    await asyncio.to_thread(s.weir.wait_log, rf"request_id={client.request_id} .* outcome=client_stalled ")
    assert s.weir.proc is not None and s.weir.proc.poll() is None
    code, report = audit_json(s.config)
    assert code == 0 and report["ok"], report


async def test_checkpoints_are_written_while_a_relay_is_blocked(served: Callable[..., Awaitable[Served]]) -> None:
    """With `checkpoint_every` 0.5 s, billing checkpoints a stream whose relay is blocked on
    a client that stopped reading: once the upstream is blocked (no event reaches billing
    any more), the test overwrites the hold's checkpoint with 0, and the timer writes the
    charge so far back while the upstream stays blocked, so no event can have caused it.
    That value is exactly what the stream is charged when the client then hangs up
    (policy `partial`: nothing more was metered)."""
    s = await served(billing={"checkpoint_every": 0.5, "on_client_disconnect": "partial"})
    client = await asyncio.to_thread(open_stalled, s.url, s.key)
    sent = await s.blocked()
    assert await s.store.checkpoint(client.request_id, 0)

    async def rewritten() -> bool:
        hold = await s.store.get_hold(client.request_id)
        assert hold is not None and hold.state.value == "open"
        return (hold.checkpoint or 0) > 0

    await wait_for(rewritten, 60, "the timer to write the checkpoint again", every=0.1)
    assert s.raw.sent == sent, "the relay must have stayed blocked"
    hold = await s.store.get_hold(client.request_id)
    assert hold is not None and hold.checkpoint is not None
    client.sock.close()  # with unread data: a reset, which ends the blocked write
    (row,) = await s.rows(1)
    assert_partial(row, client, "client_disconnected")
    assert row.charge == hold.checkpoint
