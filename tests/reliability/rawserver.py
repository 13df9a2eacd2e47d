"""Raw-socket helpers for byte-exact misbehaviour.

* `RawUpstream`: a loopback HTTP/1.1 "upstream" built on `asyncio.start_server`. It reads
  each request (head and Content-Length body), records it, and hands the connection to a
  script that writes whatever bytes the test wants: broken SSE, a bad chunk, gzip, a stall
  or a stream that never ends. `sent` counts the bytes the script got the kernel to accept,
  so a test can see backpressure.
* `raw_exchange` / `read_response`: a raw-socket client, for what aiohttp's client would
  never send (conflicting framing headers, pipelining, a trickled body).
* `WeirProcess`: `weir serve` in its own process group, with its output captured.
* Billing checks shared by the reliability tests: `fetch` (keeps the bytes a client got
  even when its stream is cut), `log_rows`, `money_moved`, `quota` (the §4 charge computed
  independently of the plugin), `tokens`, `prompt_estimate`, `use_upstreams`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from plugins.billing.store.base import LogRow
    from proxy.config import UpstreamConfig
    from proxy.context import Endpoint, SSEEvent
    from tests.e2e.conftest import Billed

__all__ = [
    "Fetched",
    "RawConn",
    "RawResponse",
    "RawUpstream",
    "Script",
    "WeirProcess",
    "chat_text",
    "chunk",
    "chunked",
    "events",
    "fetch",
    "gzip_bytes",
    "log_rows",
    "money_moved",
    "prompt_estimate",
    "quota",
    "raw_exchange",
    "read_response",
    "script_of",
    "sse_head",
    "tokens",
    "usage_chunk",
    "use_upstreams",
]


@dataclass(slots=True)
class RawConn:
    """One accepted connection, as a script sees it."""

    head: bytes
    body: bytes
    writer: asyncio.StreamWriter
    upstream: RawUpstream

    async def send(self, data: bytes) -> None:
        """Write `data` and wait until the kernel has taken it (backpressure applies)."""
        self.writer.write(data)
        await self.writer.drain()
        self.upstream.sent += len(data)


Script = Callable[[RawConn], Awaitable[None]]


class RawUpstream:
    """A loopback server answering every request with `script`'s exact bytes.

    The connection is closed after the script returns (so a body without framing ends at
    EOF). `requests` holds (head, body) of each request; `sent` the bytes written so far.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[bytes, bytes]] = []
        self.sent = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        """Listen on a free loopback port; return the base URL."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    @property
    def url(self) -> str:
        """The base URL of a started server."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        """Close the listener and abort every open connection."""
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            self.requests.append((head, body))
            await self.script(RawConn(head, body, writer, self))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the proxy hung up: that is what several tests provoke
        finally:
            self._conns.discard(writer)
            writer.close()


def sse_head(extra: str = "", status: str = "200 OK") -> bytes:
    """A response head for an unframed SSE body (it ends when the connection closes)."""
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/event-stream\r\nConnection: close\r\n{extra}\r\n").encode()


def chunked(*pieces: bytes) -> bytes:
    """`pieces` in HTTP/1.1 chunked framing, with the terminating zero chunk."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n\r\n"


def gzip_bytes(data: bytes) -> bytes:
    """`data` gzip-compressed (deterministic: mtime 0)."""
    return gzip.compress(data, mtime=0)


@dataclass(slots=True)
class RawResponse:
    """One HTTP/1.1 response read off a raw socket."""

    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """Read one response: Content-Length, chunked, or until EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return RawResponse(status, headers, body)


async def raw_exchange(url: str, data: bytes, responses: int = 1, timeout: float = 10.0) -> list[RawResponse]:
    """Send raw `data` to `url`'s host and read `responses` responses off the connection."""
    host, _, port = url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return [await read_response(reader) for _ in range(responses)]
    finally:
        writer.close()


@dataclass(slots=True)
class WeirProcess:
    """`weir serve --config FILE` in its own process group; stdout and stderr go to files."""

    config: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    out: Path | None = None
    err: Path | None = None

    def start(self, url: str, timeout: float = 20.0) -> None:
        """Start the server and wait until `url`/healthz answers."""
        import urllib.request

        self.out = self.config.with_suffix(".stdout")
        self.err = self.config.with_suffix(".stderr")
        env = {**os.environ, **self.env}
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weir serve exited: {self.logs()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError(f"weir serve did not become healthy: {self.logs()}")

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        """The resident set size from /proc/<pid>/status, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def logs(self) -> str:
        """Everything the server printed so far (stdout then stderr)."""
        parts: Sequence[Path | None] = (self.out, self.err)
        return "".join(p.read_text(errors="replace") for p in parts if p is not None and p.exists())

    def wait_log(self, pattern: str, timeout: float = 15.0) -> str:
        """The logs once `pattern` (a regex) appears in them; fails after `timeout` seconds.
        Access-log lines are written once a second, so a running server's line can lag."""
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs()
            if re.search(pattern, logs) or time.monotonic() > deadline:
                assert re.search(pattern, logs), f"{pattern!r} not in the logs after {timeout} s:\n{logs[-3000:]}"
                return logs
            time.sleep(0.05)


# ---- billed-request helpers shared by the reliability tests -----------------------------


@dataclass(slots=True)
class Fetched:
    """What a client got: status, headers, the body bytes it received, and whether the
    connection broke before the body ended."""

    status: int
    headers: dict[str, str]
    body: bytes
    broken: bool


async def fetch(
    url: str, body: bytes | Mapping[str, Any], headers: dict[str, str] | None = None, timeout: float = 30.0
) -> Fetched:
    """POST `body` (JSON when a dict) with aiohttp and keep every byte received, even when
    the connection is cut before the end of the response."""
    import aiohttp

    data = orjson.dumps(body) if isinstance(body, Mapping) else body
    h = {"Content-Type": "application/json", **(headers or {})}
    got: list[bytes] = []
    broken = False
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), auto_decompress=False) as s:
        async with s.post(url, data=data, headers=h) as r:
            try:
                async for chunk in r.content.iter_any():
                    got.append(chunk)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                broken = True
            return Fetched(r.status, {k.lower(): v for k, v in r.headers.items()}, b"".join(got), broken)


def quota(price: dict[str, float], input: int = 0, output: int = 0, cache_read: int = 0) -> int:
    """The §4 charge for token counts at `price` ($/1M), quota_per_usd 500 000, multiplier 1:
    ROUND_HALF_UP once, at least 1 for non-zero usage. Independent of the plugin's code."""
    from decimal import ROUND_HALF_UP, Decimal

    per_m = (
        Decimal(input) * Decimal(str(price["input"]))
        + Decimal(output) * Decimal(str(price["output"]))
        + Decimal(cache_read) * Decimal(str(price.get("cache_read", price["input"])))
    )
    q = int((per_m / 1_000_000 * 500_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return max(q, 1) if per_m else 0


def tokens(text: str, model: str) -> int:
    """The billing tokenizer's count of `text` for `model` (what `estimated` usage uses)."""
    from plugins.billing.tokenizer import Tokenizer

    return Tokenizer().count(text, model) if text else 0


async def log_rows(b: Billed, n: int = 1, timeout: float = 5.0) -> list[LogRow]:
    """Wait for the consume log to hold `n` rows for `b.user`; assert it holds exactly `n`."""
    deadline = time.monotonic() + timeout
    while True:
        await b.proxy.settled()
        rows = await b.store.query_logs(user=b.user, limit=n + 5)
        if len(rows) >= n or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(rows) == n, [(r.request_id, r.details.end_reason) for r in rows]
    return rows


async def money_moved(b: Billed, before: int, charge: int) -> None:
    """The wallet moved by exactly `charge`; no hold is left open; the ledger audits clean."""
    await b.proxy.settled()
    user = await b.store.get_user(b.user)
    assert user is not None
    assert (user.balance, user.reserved) == (before - charge, 0)
    assert await b.store.open_holds() == []
    report = await b.store.audit(time.time(), 30)
    assert report.ok, report


def prompt_estimate(b: Billed, endpoint: Endpoint, body: Mapping[str, Any], model: str) -> int:
    """The prompt tokens the billing plugin estimated for `body` (the `estimated` input)."""
    from proxy import keys

    plugin = b.proxy.app[keys.PIPELINE].plugins[0]
    return int(plugin.estimator.prompt_tokens(endpoint, body, model))  # type: ignore[attr-defined]


def use_upstreams(b: Billed, *configs: UpstreamConfig) -> None:
    """Point the running proxy at these upstreams instead of its configured one."""
    from proxy import keys
    from proxy.upstream import Upstream

    pool = b.proxy.app[keys.UPSTREAMS]
    pool.upstreams[:] = [Upstream(c, c.base_url) for c in configs]


# ---- OpenAI chat stream bytes --------------------------------------------------------------


def events(body: bytes) -> list[SSEEvent]:
    """The SSE events in a whole body (comments and unfinished blocks dropped)."""
    from proxy.context import SSEEvent
    from proxy.sse import SSEParser

    return [i for i in SSEParser().feed(body) if isinstance(i, SSEEvent)]


def chat_text(body: bytes) -> str:
    """The content text of an OpenAI chat stream as the client received it."""
    text = ""
    for ev in events(body):
        payload = ev.json
        if isinstance(payload, dict) and payload.get("choices"):
            text += payload["choices"][0].get("delta", {}).get("content") or ""
    return text


def chunk(text: str) -> bytes:
    """One chat.completion.chunk frame carrying `text`."""
    payload = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "mock-gpt",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def usage_chunk(prompt: int, completion: int) -> bytes:
    """The usage-only chunk OpenAI sends last when include_usage is on."""
    payload = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "mock-gpt",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def script_of(*parts: bytes, head: bytes | None = None) -> Script:
    """A script that sends `head` (an unframed SSE head by default), then each part."""

    async def script(conn: RawConn) -> None:
        await conn.send(sse_head() if head is None else head)
        for p in parts:
            await conn.send(p)
            await asyncio.sleep(0.01)

    return script
