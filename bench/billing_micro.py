"""`python -m bench.billing_micro [--backend sqlite|redis|instant|none]`: billing's CPU per request, in-process.

The billing plugin's hooks run through a real `Pipeline`, as the handler drives them for a
non-streamed chat request (`on_request` → `on_body` → `on_complete`, the last in a tracked
task), or with `--events N` a streamed one (`on_request` → N × `on_event` → `on_complete`; the
last three events are a finish chunk, a usage chunk and `[DONE]`, as OpenAI ends a stream),
for `--concurrency` requests at a time, against a real store: no HTTP, no upstream,
no load generator. What is left is what billing itself costs the proxy's event loop.

Streamed events are passed as `proxy.relay`'s loop passes them: not at all when no plugin
has `on_event`, by the plugins without a call when their `EventFilter`s let them, through
`on_event` otherwise. `--relay` relays them through that loop itself instead (SSE parsing,
end and error detection, writes to a client that accepts everything at once): its
`--backend none` figure is the no-plugin relay's own cost per event. `--usage-asked`: the
client asks for the usage chunk itself, so billing has none to hide.

Backends: `sqlite` and `redis` (127.0.0.1:6379, a throw-away key prefix) are the real
stores; `instant` answers holds and captures at once without storing anything (the hooks
and the pipeline alone); `none` runs the same driver with no plugin (the driver's own
cost, to subtract).

Printed per round: process CPU time and wall time per request. Both move with whatever
else the machine is doing. For figures that repeat to within a percent, count instructions
instead: run it under callgrind with instrumentation off, and `--callgrind` switches it on
for the measured round only (it calls `callgrind_control` on its own pid)::

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cg.out \\
        python -m bench.billing_micro --backend sqlite --requests 640 --rounds 1 --callgrind
    grep ^totals /tmp/cg.out          # instructions; divide by --requests

The redis-server process is not measured here (see `bench.store_micro`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from plugins.billing.apikeys import hash_key
from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from plugins.billing.store.base import FundingSource, Hold, HoldState, LogDetails, Resolution, Store
from plugins.billing.store.redis.store import RedisStore
from plugins.billing.store.sqlite.store import SQLiteStore
from proxy.context import Dialect, Endpoint, EndReason, Outcome, RequestContext, SSEEvent, UpstreamInfo
from proxy.dataclass_builder import build
from proxy.event_filter import ANY_RAW, EVERY_EVENT
from proxy.handler import RequestIds
from proxy.pipeline import Pipeline, Run
from proxy.plugin import Plugin
from proxy.relay import Relaying, StreamState
from proxy.relay import _relay_loop as relay_loop
from proxy.tasks import TaskTracker
from proxy.testing import host_app

MODEL = "instant-bench"
BODY = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "bench"}], "max_tokens": 16})
#: The same request from a client that asks for the usage chunk itself (billing then hides none).
USAGE_ASKED = orjson.dumps({**orjson.loads(BODY), "stream_options": {"include_usage": True}})
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 16}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 16, "total_tokens": 25},
    }
)
CHUNK = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}],
    }
)
#: How a streamed answer ends, as OpenAI ends one asked for usage (billing asks for it).
TAIL = (
    orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "model": MODEL,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
    ),
    orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 97, "total_tokens": 106},
        }
    ),
    b"[DONE]",
)
BILLING = {"quota_per_usd": 500_000, "pricing": {"fallback": "none", "models": {"*-bench": {"input": 1, "output": 2}}}}


class InstantStore(SQLiteStore):
    """A SQLite store whose holds and captures answer at once and store nothing."""

    async def hold(
        self,
        request_id: str,
        user: str,
        key_id: str,
        amount: int,
        preference: Any,
        price_version: str,
        ttl: float,
        instance_id: str,
        model: str = "",
    ) -> Hold:
        """An open wallet hold, not recorded."""
        return Hold(
            request_id,
            user,
            key_id,
            FundingSource.WALLET,
            None,
            amount,
            0,
            price_version,
            instance_id,
            0.0,
            ttl,
            HoldState.OPEN,
        )

    async def capture(self, request_id: str, actual: int, log: LogDetails) -> Resolution:
        """A capture, not recorded."""
        return Resolution(request_id, HoldState.CAPTURED, actual, 0, True)


def _store(backend: str, workdir: str) -> Store:
    if backend == "redis":
        return RedisStore("redis://127.0.0.1:6379/0", prefix=f"weirmicro:{uuid.uuid4().hex[:8]}")
    cls = InstantStore if backend == "instant" else SQLiteStore
    return cls(os.path.join(workdir, "weir.db"))


@asynccontextmanager
async def _billed(backend: str) -> AsyncIterator[tuple[Pipeline, str, TaskTracker]]:
    """A pipeline (with the billing plugin unless `none`), a funded user's key, the tracker."""
    with tempfile.TemporaryDirectory() as workdir:
        store = _store(backend, workdir)
        tracker = TaskTracker()
        plugins: list[Plugin] = []
        life = None
        cwd = os.getcwd()
        try:
            if backend == "none":
                await store.open()
            else:
                # The plugin's lifespan opens the store; its outbox goes to the working directory.
                plugin = BillingPlugin(build(BillingConfig, BILLING, "config"), store=store)
                app = host_app(instance_id="bench-" + uuid.uuid4().hex[:8], tracker=tracker)
                os.chdir(workdir)
                life = plugin.lifespan(app)
                await life.__anext__()
                os.chdir(cwd)
                plugins.append(plugin)
            await store.create_user("bench")
            await store.credit("bench", 10**15)
            clear = "sk-bench-" + uuid.uuid4().hex
            await store.create_key("bench", hash_key(clear))
            yield Pipeline(plugins, tracker), clear, tracker
        finally:
            os.chdir(cwd)
            await tracker.idle(30)
            if isinstance(store, RedisStore):
                await store.drop_all()
            if life is not None:  # the plugin's teardown (after its `yield`) closes the store
                with contextlib.suppress(StopAsyncIteration):
                    await life.__anext__()
                await asyncio.sleep(0.05)
            else:
                await store.close()
            await tracker.drain(30)


def _stream(events: int) -> list[bytes]:
    """`events` raw SSE events: content chunks, then a finish, a usage chunk and [DONE]."""
    return [
        b"data: " + (CHUNK if i < events - len(TAIL) else TAIL[i - events + len(TAIL)]) + b"\n\n" for i in range(events)
    ]


async def _events(run: Run, events: int) -> None:
    """Pass `events` fresh events (`json` is parsed at most once per event) to the plugins,
    as `proxy.relay`'s loop does: by them when their `EventFilter`s let it, through them
    otherwise, and not at all when no plugin has `on_event`."""
    dispatch = run.open_stream() if run.event_hooks else run.event
    filtering = run.filters is not None
    gate, needle, keep, room = run.passing() if filtering else (EVERY_EVENT, None, None, 0)
    for raw in _stream(events):
        item = SSEEvent(raw[6:-2].decode(), raw=raw)
        if not run.event_hooks:
            continue
        if (
            gate is not EVERY_EVENT
            and room > 0
            and (
                gate is None
                or (needle is not None and needle not in item.data)
                or (gate is not ANY_RAW and gate(item.raw) is None)
            )
        ):
            room -= 1
            if keep is not None:
                keep(item.raw)
            continue
        await dispatch(item)
        if filtering:
            gate, needle, keep, room = run.passing()


class _Upstream:
    """An upstream response whose body is one chunk per event, already received."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.content = self
        self._chunks = iter(chunks)

    async def readany(self) -> bytes:
        """The next chunk (b"" at the end)."""
        return next(self._chunks, b"")

    def close(self) -> None:
        """Nothing to close."""


class _Client:
    """The client's side: an open transport, and a response whose writes return at once."""

    transport = None

    def is_closing(self) -> bool:
        """Never: the client reads everything."""
        return False

    async def write(self, data: bytes) -> None:
        """Accepted at once."""


async def _relay(ctx: RequestContext, run: Run, events: int) -> None:
    """Relay `events` events through `proxy.relay`'s loop itself (SSE parsing, end and
    error detection, the plugins, writes to a client that accepts at once)."""
    client = _Client()
    client.transport = client  # type: ignore[assignment]
    upstream = _Upstream(_stream(events))
    relaying = Relaying(upstream, None)  # type: ignore[arg-type]
    await relay_loop(client, client, upstream, ctx, run, StreamState(), None, relaying)  # type: ignore[arg-type]


async def _rounds(
    backend: str,
    requests: int,
    concurrency: int,
    rounds: int,
    callgrind: bool,
    events: int = 0,
    relay: bool = False,
    usage_asked: bool = False,
) -> list[tuple[float, float]]:
    body = USAGE_ASKED if usage_asked else BODY
    async with _billed(backend) as (pipeline, clear, tracker):
        ids = RequestIds()
        headers = CIMultiDictProxy(
            CIMultiDict({"authorization": f"Bearer {clear}", "content-type": "application/json"})
        )
        query: MultiDictProxy[str] = MultiDictProxy(MultiDict())

        async def one() -> None:
            ctx = RequestContext(
                ids.next(),
                Dialect.OPENAI,
                Endpoint.CHAT,
                "POST",
                "/v1/chat/completions",
                query,
                headers,
                "127.0.0.1",
                body,
                orjson.loads(body),
                MODEL,
                events > 0,
                api_key=clear,
            )
            run = pipeline.start(ctx)
            await run.request()
            await asyncio.sleep(0)  # the upstream's answer is a loop turn or two away
            await asyncio.sleep(0)
            ctx.upstream, ctx.status = UpstreamInfo("instant", MODEL, 1), 200
            if events and relay:
                await _relay(ctx, run, events)
            elif events:
                await _events(run, events)
            else:
                await run.body(ANSWER)
            run.complete(Outcome(EndReason.COMPLETED, 200, events))

        async def client(n: int) -> None:
            for _ in range(n):
                await one()

        async def wave(total: int) -> None:
            await asyncio.gather(*(client(total // concurrency) for _ in range(concurrency)))
            await tracker.idle(60)

        await wave(2 * concurrency)  # warm: caches, the first hold's lookups
        results = []
        for _ in range(rounds):
            gc.collect()
            _instrument(callgrind, "on")
            cpu, wall = time.process_time(), time.perf_counter()
            await wave(requests)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            _instrument(callgrind, "off")
            results.append((cpu / requests * 1e6, wall / requests * 1e6))
        return results


def _instrument(callgrind: bool, state: str) -> None:
    if callgrind:
        subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True, capture_output=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run, print one line per round."""
    p = argparse.ArgumentParser(prog="python -m bench.billing_micro", description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("sqlite", "redis", "instant", "none"), default="sqlite")
    p.add_argument("--requests", type=int, default=3200, help="requests per round (default 3200)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--callgrind", action="store_true", help="switch callgrind's instrumentation on for each round")
    p.add_argument("--events", type=int, default=0, help="stream N events per request (default 0: not streamed)")
    p.add_argument("--relay", action="store_true", help="relay the events through proxy.relay's loop (with --events)")
    p.add_argument(
        "--usage-asked", action="store_true", help="the client asks for the usage chunk (billing hides none)"
    )
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    results = runner(
        _rounds(
            args.backend,
            args.requests,
            args.concurrency,
            args.rounds,
            args.callgrind,
            args.events,
            args.relay,
            args.usage_asked,
        )
    )
    for i, (cpu, wall) in enumerate(results):
        print(f"{args.backend} round {i + 1}: {cpu:.1f} us CPU per request, {wall:.1f} us wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
