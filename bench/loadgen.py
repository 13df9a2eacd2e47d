"""The benchmark's load generator: N concurrent aiohttp clients with keep-alive.

It always runs in its own process, away from the proxy under test. Two ways to use it:

* one shot: `python -m bench.loadgen --url http://127.0.0.1:8080 --clients 32 --duration 5`
  prints a summary (latency percentiles, throughput, and for `--stream` time to first byte,
  events and the longest gap between events);
* as a worker (`--worker`), driven by `bench.report` through `LoadgenWorker`: one JSON `Job`
  per stdin line, one JSON `Result` per stdout line. One long-lived worker serves a whole
  interleaved run, so no run pays for interpreter start-up.

Per request it records the latency (request sent to last body byte), the time to first byte
(first body byte for streams, response headers otherwise), the number of SSE events, and the
gaps between arrivals of consecutive events.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.upstreams import child_env, stop_process

__all__ = ["Job", "LoadgenWorker", "job_from_json", "Result", "percentile", "request_body", "run_job", "main"]


@dataclass(frozen=True, slots=True)
class Job:
    """One measured run against one endpoint.

    `requests` > 0 bounds the run by a total request count (shared by the clients), otherwise
    `duration` seconds bound it. Each client first sends `warmup` uncounted requests, so
    connections are open and warm before timing starts.
    """

    url: str
    model: str
    stream: bool = False
    clients: int = 1
    requests: int = 0
    duration: float = 0.0
    warmup: int = 2
    max_tokens: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    stall_after: float = 0.2
    timeout: float = 60.0


@dataclass(slots=True)
class Result:
    """What a job measured. Times are in seconds; `latencies`/`ttfbs` hold one entry per request."""

    ok: int = 0
    errors: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    events: int = 0
    max_gap: float = 0.0
    stalls: int = 0
    incomplete: int = 0
    first_error: str = ""

    @property
    def throughput(self) -> float:
        """Completed requests per second of wall time."""
        return self.ok / self.wall if self.wall > 0 else 0.0

    def merged(self, other: Result) -> Result:
        """Two runs' results as one: counts add up, the worst gap wins."""
        return Result(
            ok=self.ok + other.ok,
            errors=self.errors + other.errors,
            wall=self.wall + other.wall,
            latencies=self.latencies + other.latencies,
            ttfbs=self.ttfbs + other.ttfbs,
            events=self.events + other.events,
            max_gap=max(self.max_gap, other.max_gap),
            stalls=self.stalls + other.stalls,
            incomplete=self.incomplete + other.incomplete,
            first_error=self.first_error or other.first_error,
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def request_body(job: Job) -> bytes:
    """The chat-completions request body a job sends, serialised once."""
    body: dict[str, Any] = {"model": job.model, "messages": [{"role": "user", "content": "bench"}]}
    if job.stream:
        body["stream"] = True
    if job.max_tokens is not None:
        body["max_tokens"] = job.max_tokens
    return json.dumps(body).encode()


class _Run:
    """Shared state of one job: the request budget and the accumulating result."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.body = request_body(job)
        self.headers = {"Content-Type": "application/json", **dict(job.headers)}
        self.result = Result()
        self.left = job.requests
        self.deadline = 0.0

    def take(self) -> bool:
        """Claim the next request of the budget; False when the run is over."""
        if self.job.requests > 0:
            if self.left <= 0:
                return False
            self.left -= 1
            return True
        return time.perf_counter() < self.deadline

    async def one(self, session: aiohttp.ClientSession, record: bool) -> None:
        """Send one request and, if `record`, add its measurements to the result."""
        t0 = time.perf_counter()
        try:
            async with session.post(self.job.url, data=self.body, headers=self.headers) as resp:
                if resp.status != 200:
                    text = (await resp.read())[:200].decode(errors="replace")
                    raise RuntimeError(f"HTTP {resp.status}: {text}")
                if self.job.stream:
                    ttfb, events, gaps, done = await _read_stream(resp)
                else:
                    ttfb = time.perf_counter() - t0
                    await resp.read()
                    events, gaps, done = 0, [], True
            t1 = time.perf_counter()
        except (TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
            if record:
                self.result.errors += 1
                self.result.first_error = self.result.first_error or f"{type(exc).__name__}: {exc}"
            return
        if not record:
            return
        r = self.result
        r.ok += 1
        r.latencies.append(t1 - t0)
        r.ttfbs.append(ttfb if not self.job.stream else ttfb - t0)
        r.events += events
        r.incomplete += 0 if done else 1
        if gaps:
            r.max_gap = max(r.max_gap, max(gaps))
            r.stalls += sum(1 for g in gaps if g > self.job.stall_after)

    async def client(self, session: aiohttp.ClientSession) -> None:
        """One client: requests back to back on its keep-alive connection."""
        while self.take():
            await self.one(session, record=True)


async def _read_stream(resp: aiohttp.ClientResponse) -> tuple[float, int, list[float], bool]:
    """Read an SSE body: (first byte time, events, gaps between event arrivals, saw [DONE])."""
    first = 0.0
    last = 0.0
    events = 0
    gaps: list[float] = []
    tail = b""
    async for chunk in resp.content.iter_any():
        now = time.perf_counter()
        if not first:
            first = now
        # An event ends at a blank line; the last byte of the previous read joins a split "\n\n".
        n = (tail[-1:] + chunk).count(b"\n\n")
        if n:
            if last:
                gaps.append(now - last)
            last = now
            events += n
        tail = (tail + chunk)[-32:]
    return first, events, gaps, b"[DONE]" in tail


async def run_job(job: Job) -> Result:
    """Run one job to completion (bounded by `job.timeout`) and return its measurements."""
    run = _Run(job)
    timeout = aiohttp.ClientTimeout(total=job.timeout)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm = [run.one(session, record=False) for _ in range(job.clients) for _ in range(job.warmup)]
        for i in range(0, len(warm), job.clients):
            await asyncio.gather(*warm[i : i + job.clients])
        start = time.perf_counter()
        run.deadline = start + job.duration
        clients = [run.client(session) for _ in range(job.clients)]
        try:
            await asyncio.wait_for(asyncio.gather(*clients), timeout=job.timeout)
        except TimeoutError:
            run.result.first_error = run.result.first_error or f"job exceeded {job.timeout} s"
            run.result.errors += 1
        run.result.wall = time.perf_counter() - start
    return run.result


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (Weir uses it too), so the client's own cost stays small."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def job_from_json(data: dict[str, Any]) -> Job:
    """Rebuild a `Job` from its JSON form (lists back into tuples)."""
    headers = tuple((str(k), str(v)) for k, v in data.get("headers", ()))
    return Job(**{**data, "headers": headers})


def _worker() -> int:
    """Serve jobs from stdin, one JSON object per line, until EOF."""
    loop = _new_loop()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            job = job_from_json(json.loads(line))
            result = loop.run_until_complete(run_job(job))
            sys.stdout.write(json.dumps(dataclasses.asdict(result)) + "\n")
            sys.stdout.flush()
    finally:
        loop.close()
    return 0


class LoadgenWorker:
    """A `python -m bench.loadgen --worker` child process, driven one job at a time."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, stack: ExitStack, log: Path) -> LoadgenWorker:
        """Start a worker whose stderr goes to `log`; `stack` closes its stdin and stops it."""
        err = log.open("wb")
        stack.callback(err.close)
        proc = subprocess.Popen(cls.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=child_env())
        stack.callback(stop_process, proc)
        # Runs first on unwinding: EOF on stdin lets the worker finish its job and exit cleanly.
        if proc.stdin is not None:
            stack.callback(proc.stdin.close)
        return cls(proc)

    @staticmethod
    def argv() -> list[str]:
        """The command line that starts a worker."""
        return [sys.executable, "-m", "bench.loadgen", "--worker"]

    def run(self, job: Job) -> Result:
        """Send `job`, wait (at most its timeout plus a margin) and return its result."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(dataclasses.asdict(job)).encode() + b"\n")
        self.proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout=job.timeout + job.warmup * 10 + 10):
                raise TimeoutError(f"load generator gave no answer for {job.url}")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited with {self.proc.poll()}")
        return Result(**json.loads(line))


def _summary(job: Job, r: Result) -> str:
    ms = 1000.0
    lines = [
        f"requests ok={r.ok} errors={r.errors} wall={r.wall:.2f}s throughput={r.throughput:.1f} req/s",
        f"latency ms p50={percentile(r.latencies, 50) * ms:.3f} p99={percentile(r.latencies, 99) * ms:.3f}",
        f"ttfb ms    p50={percentile(r.ttfbs, 50) * ms:.3f} p99={percentile(r.ttfbs, 99) * ms:.3f}",
    ]
    if job.stream:
        lines.append(f"events={r.events} max_gap={r.max_gap * ms:.1f}ms stalls={r.stalls} incomplete={r.incomplete}")
    if r.first_error:
        lines.append(f"first error: {r.first_error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.loadgen`: one run with a printed summary, or `--worker` mode."""
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help="serve JSON jobs on stdin (used by bench.report)")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="base URL (no /v1)")
    p.add_argument("--model", default="instant-bench")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--requests", type=int, default=0, help="total requests (0: use --duration)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--header", action="append", default=[], help="extra header NAME:VALUE")
    args = p.parse_args(argv)
    if args.worker:
        return _worker()
    headers = tuple((k.strip(), v.strip()) for k, v in (h.split(":", 1) for h in args.header))
    job = Job(
        url=args.url.rstrip("/") + "/v1/chat/completions",
        model=args.model,
        stream=args.stream,
        clients=args.clients,
        requests=args.requests,
        duration=args.duration,
        max_tokens=args.max_tokens,
        headers=headers,
    )
    loop = _new_loop()
    try:
        result = loop.run_until_complete(run_job(job))
    finally:
        loop.close()
    print(_summary(job, result))
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
