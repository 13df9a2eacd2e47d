"""`python -m bench.store_micro [--backend sqlite|redis]`: hold+capture latency and throughput.

`--concurrency` callers (32 by default) share one store object, as the request handlers of
one proxy process do, and each runs hold → capture in a loop until `--ops` pairs are done.
Reported: p50 and p99 of the hold+capture pair and of each operation alone (the billing
plugin awaits `hold` on the request path and `capture` after the response), and holds per
second over the whole run. `--pause-ms` makes each caller wait between pairs, as a proxy's
request handlers do while the upstream answers: latency without a saturated store.
The SQLite file lives in a temporary directory; a Redis run uses a throw-away prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from plugins.billing.store.base import Hold, LogDetails, Store

LOG = LogDetails(end_reason="completed", usage_source="upstream", upstream="bench", model="m")


@dataclass(frozen=True, slots=True)
class MicroResult:
    """One run's figures."""

    backend: str
    concurrency: int
    pairs: int
    p50_ms: float
    p99_ms: float
    holds_per_s: float
    hold_p50_ms: float
    hold_p99_ms: float
    capture_p50_ms: float
    capture_p99_ms: float


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _ms(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (seconds, sorted in place) in milliseconds."""
    values.sort()
    return round(_quantile(values, q) * 1000, 3)


async def _prepare(store: Store) -> list[str]:
    """One funded user with four keys: every caller bills the same wallet, as in production
    where one user's concurrent requests contend for one balance."""
    await store.create_user("bench")
    await store.credit("bench", 10**15, "bench funds")
    await store.heartbeat("bench-1")
    return [(await store.create_key("bench", f"bench-{uuid.uuid4().hex}-{i}")).id for i in range(4)]


async def measure(store: Store, backend: str, concurrency: int, pairs: int, pause: float = 0.0) -> MicroResult:
    """Run `pairs` hold+capture pairs through `concurrency` callers on an opened store,
    each caller sleeping `pause` seconds after every pair."""
    keys = await _prepare(store)
    latencies: list[float] = []
    holds: list[float] = []
    captures: list[float] = []
    counter = iter(range(pairs))

    async def caller(slot: int) -> None:
        for n in counter:
            rid = f"b{n}"
            started = time.perf_counter()
            held = await store.hold(rid, "bench", keys[slot % len(keys)], 100, None, "pv", 600, "bench-1", "m")
            if not isinstance(held, Hold):
                raise RuntimeError(f"bench hold refused: {held}")
            held_at = time.perf_counter()
            await store.capture(rid, 90, LOG)
            done = time.perf_counter()
            latencies.append(done - started)
            holds.append(held_at - started)
            captures.append(done - held_at)
            if pause:
                await asyncio.sleep(pause)

    began = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    report = await store.audit(time.time(), 3600)
    if report.mismatches:
        raise RuntimeError(f"ledger mismatch after the bench: {report.mismatches[:3]}")
    return MicroResult(
        backend=backend,
        concurrency=concurrency,
        pairs=pairs,
        p50_ms=round(statistics.median(latencies) * 1000, 3),
        p99_ms=round(_quantile(latencies, 0.99) * 1000, 3),
        holds_per_s=round(pairs / elapsed, 1),
        hold_p50_ms=_ms(holds, 0.5),
        hold_p99_ms=_ms(holds, 0.99),
        capture_p50_ms=_ms(captures, 0.5),
        capture_p99_ms=_ms(captures, 0.99),
    )


async def run(backend: str, concurrency: int, pairs: int, redis_url: str, pause: float = 0.0) -> MicroResult:
    """Build the store, measure, and clean up."""
    with tempfile.TemporaryDirectory(prefix="weir-bench-") as tmp:
        store: Store
        if backend == "sqlite":
            from plugins.billing.store.sqlite.store import SQLiteStore

            store = SQLiteStore(str(Path(tmp) / "bench.db"))
        else:
            from plugins.billing.store.redis.store import RedisStore

            store = RedisStore(redis_url, prefix=f"weirbench:{uuid.uuid4().hex}")
        await store.open()
        try:
            return await measure(store, backend, concurrency, pairs, pause)
        finally:
            drop = getattr(store, "drop_all", None)
            if drop is not None:
                await drop()
            await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints a line of figures (or JSON with --json)."""
    parser = argparse.ArgumentParser(prog="python -m bench.store_micro", description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--ops", type=int, default=5000, help="hold+capture pairs in total")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pause-ms", type=float, default=0.0, help="each caller's pause between pairs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.backend, args.concurrency, args.ops, args.redis_url, args.pause_ms / 1000))
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"{result.backend}: {result.pairs} hold+capture pairs, {result.concurrency} callers: "
            f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, {result.holds_per_s} holds/s; "
            f"hold p50 {result.hold_p50_ms} / p99 {result.hold_p99_ms} ms, "
            f"capture p50 {result.capture_p50_ms} / p99 {result.capture_p99_ms} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
