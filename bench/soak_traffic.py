"""The soak's traffic: request kinds (healthy and faulty), one request each, and the load loops.

Each request's kind is drawn from a seeded `random.Random`, so a run is reproducible in its
mix (not in its timing). Faults on the upstream side are chosen per request by model name:
Weir routes `soak-e500`, `soak-trunc`, ... to mock upstreams that always misbehave that way
(`fault_behaviours`), served by one helper process (`serve_fault_mocks`).

The open loop interleaves a baseline: between two proxied requests, one healthy request
goes straight to the healthy mock upstream, so whatever slows the machine slows both and
the judge can compare Weir's latency with the direct latency of the same minute.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import random
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import orjson

from proxy.mock.upstream import MockBehaviour, MockUpstream

__all__ = [
    "FAULTS",
    "HEALTHY",
    "Kind",
    "Load",
    "Shot",
    "Target",
    "choose_kind",
    "closed_loop",
    "expected_outcomes",
    "fault_behaviours",
    "fire",
    "open_loop",
    "serve_fault_mocks",
]

#: Weir's `server.max_body_bytes` in the soak config; one hostile body is just above it.
MAX_BODY = 256 * 1024


class Kind(StrEnum):
    """What one request is meant to be."""

    OK_JSON = "ok_json"
    OK_STREAM = "ok_stream"
    OK_STREAM_USAGE = "ok_stream_usage"  # the client asks for the usage chunk itself
    DISCONNECT = "client_disconnect"  # reads two events of a paced stream, then hangs up
    E500 = "upstream_500"
    TRUNCATE = "upstream_truncate"  # clean EOF after three frames, no [DONE]
    RESET = "upstream_reset"  # TCP RST after three frames
    ERROR_EVENT = "upstream_error_event"
    HOSTILE = "hostile_body"
    UNKNOWN_KEY = "unknown_key"


HEALTHY = (Kind.OK_JSON, Kind.OK_STREAM, Kind.OK_STREAM_USAGE)
FAULTS = (Kind.DISCONNECT, Kind.E500, Kind.TRUNCATE, Kind.RESET, Kind.ERROR_EVENT, Kind.HOSTILE, Kind.UNKNOWN_KEY)
_MODEL = {
    Kind.DISCONNECT: "soak-slow",
    Kind.E500: "soak-e500",
    Kind.TRUNCATE: "soak-trunc",
    Kind.RESET: "soak-reset",
    Kind.ERROR_EVENT: "soak-errev",
}


def fault_behaviours() -> dict[str, MockBehaviour]:
    """The misbehaving mocks, by upstream name (fresh objects: the mock mutates them)."""
    return {
        "slow": MockBehaviour(pace=0.02, words=40),
        "e500": MockBehaviour(fail_status=500),
        "trunc": MockBehaviour(truncate_after=3),
        "reset": MockBehaviour(reset_after=3),
        "errev": MockBehaviour(error_event_after=3),
    }


def expected_outcomes(kind: Kind) -> frozenset[str]:
    """The client-side outcomes that are correct for `kind`; anything else is a defect."""
    if kind in HEALTHY:
        return frozenset({"ok"})
    return {
        Kind.DISCONNECT: frozenset({"disconnected"}),
        # The upstream's 500 relayed, or, once `routing.breaker.failures` of them came in a
        # row, Weir's own 503 while that upstream's circuit breaker is open.
        Kind.E500: frozenset({"http_500", "http_503"}),
        Kind.TRUNCATE: frozenset({"incomplete"}),
        Kind.RESET: frozenset({"broken"}),
        Kind.ERROR_EVENT: frozenset({"incomplete", "broken"}),
        Kind.HOSTILE: frozenset({"http_400", "http_404", "http_413", "http_415"}),
        Kind.UNKNOWN_KEY: frozenset({"http_401"}),
    }[kind]


def choose_kind(rng: random.Random, fault_rate: float) -> Kind:
    """A healthy kind, or with probability `fault_rate` one of the fault kinds (uniformly)."""
    if rng.random() < fault_rate:
        return rng.choice(FAULTS)
    return rng.choice(HEALTHY)


@dataclass(frozen=True, slots=True)
class Target:
    """Where and as whom the traffic goes."""

    url: str  # Weir's base URL, no /v1
    key: str
    direct: str = ""  # the healthy mock upstream's base URL: the baseline goes there


@dataclass(slots=True)
class Shot:
    """One request as the client saw it. `started` is seconds since the soak began."""

    kind: Kind
    started: float
    latency: float = 0.0
    outcome: str = ""
    request_id: str = ""
    usage: dict[str, Any] | None = None
    detail: str = ""


@dataclass(slots=True)
class _Reader:
    """What a streamed body carried: whether it finished, and its usage chunk if any."""

    done: bool = False
    usage: dict[str, Any] | None = None
    events: int = 0
    buf: bytes = field(default=b"")

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while b"\n\n" in self.buf:
            frame, self.buf = self.buf.split(b"\n\n", 1)
            self.events += 1
            if frame == b"data: [DONE]":
                self.done = True
            elif b'"usage"' in frame and frame.startswith(b"data: "):
                usage = orjson.loads(frame[6:]).get("usage")
                self.usage = usage if isinstance(usage, dict) else self.usage


def _chat(model: str, rng: random.Random, stream: bool, usage: bool = False) -> bytes:
    words = " ".join(rng.choice(("river", "weir", "flow", "token", "gauge", "dam")) for _ in range(rng.randint(1, 12)))
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": words}], "max_tokens": 64}
    if stream:
        body["stream"] = True
        if usage:
            body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def _hostile(rng: random.Random) -> tuple[bytes, str]:
    """A body Weir must refuse with a 4xx (before or instead of billing anything)."""
    ok = orjson.loads(_chat("soak-ok", rng, False))
    choices: list[tuple[bytes, str]] = [
        (b'{"model": "soak-ok", "messages": [', "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"[" * 5000 + b"]" * 5000, "application/json"),
        (orjson.dumps({**ok, "stream": "yes"}), "application/json"),
        (orjson.dumps({**ok, "model": 12345}), "application/json"),
        (orjson.dumps({**ok, "model": "no-such-model"}), "application/json"),
        (orjson.dumps(ok), "text/html"),
        (orjson.dumps({**ok, "pad": "x" * (MAX_BODY + 1024)}), "application/json"),
        (orjson.dumps({**ok, "max_tokens": "lots"}), "application/json"),
        (orjson.dumps({**ok, "messages": "not a list"}), "application/json"),
    ]
    return rng.choice(choices)


async def fire(session: aiohttp.ClientSession, target: Target, kind: Kind, rng: random.Random, t0: float) -> Shot:
    """Send one request of `kind` and classify how it ended (never raises for HTTP trouble)."""
    shot = Shot(kind, time.monotonic() - t0)
    key = "wk-" + "%032x" % rng.getrandbits(128) if kind is Kind.UNKNOWN_KEY else target.key
    if kind is Kind.HOSTILE:
        body, ctype = _hostile(rng)
    else:
        model = _MODEL.get(kind, "soak-ok")
        body, ctype = _chat(model, rng, kind is not Kind.OK_JSON, kind is Kind.OK_STREAM_USAGE), "application/json"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": ctype}
    start = time.monotonic()
    try:
        async with session.post(target.url + "/v1/chat/completions", data=body, headers=headers) as resp:
            shot.request_id = resp.headers.get("x-request-id", "")
            await _read(resp, kind, shot)
    except aiohttp.ClientPayloadError as exc:
        shot.outcome, shot.detail = "broken", type(exc).__name__
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        shot.outcome, shot.detail = "client_error", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # e.g. a 200 whose body is not JSON: recorded, never lost
        shot.outcome, shot.detail = "driver_error", f"{type(exc).__name__}: {exc}"
    shot.latency = time.monotonic() - start
    return shot


async def _read(resp: aiohttp.ClientResponse, kind: Kind, shot: Shot) -> None:
    if resp.status != 200:
        await resp.read()
        shot.outcome = f"http_{resp.status}"
        return
    if resp.content_type != "text/event-stream":
        payload = orjson.loads(await resp.read())
        shot.usage = payload.get("usage") if isinstance(payload, dict) else None
        shot.outcome = "ok"
        return
    reader = _Reader()
    async for chunk in resp.content.iter_any():
        reader.feed(chunk)
        if kind is Kind.DISCONNECT and reader.events >= 2:
            resp.close()  # hang up mid-stream: closes the connection, not just this response
            shot.outcome = "disconnected"
            return
    shot.usage = reader.usage
    shot.outcome = "ok" if reader.done else "incomplete"


def _session(limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def closed_loop(target: Target, clients: int, seconds: float, seed: int, fault_rate: float = 0.0) -> int:
    """`clients` back-to-back requesters for `seconds`, `fault_rate` of their requests
    faults; returns how many requests ended (whatever their outcome)."""
    rng = random.Random(seed)
    done = 0
    t0 = time.monotonic()
    deadline = t0 + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await fire(session, target, choose_kind(rng, fault_rate), rng, t0)
            done += 1

    async with _session(clients) as session:
        await asyncio.gather(*(client() for _ in range(clients)))
    return done


@dataclass(slots=True)
class Load:
    """What an open loop sent: the proxied shots, the direct baseline shots (healthy
    requests sent straight to the mock upstream) and how many starts were shed."""

    shots: list[Shot] = field(default_factory=list)
    direct: list[Shot] = field(default_factory=list)
    shed: int = 0


async def open_loop(
    target: Target, rate: float, seconds: float, seed: int, fault_rate: float, max_inflight: int
) -> Load:
    """Start proxied requests at a fixed `rate` for `seconds`, whatever the latency (open
    loop, so a slow proxy cannot slow the offered load); with `target.direct`, start a
    healthy request to the mock upstream halfway between each two (the baseline). Starts
    are shed (counted, not sent) while `max_inflight` requests are open (0 on a healthy run)."""
    rng, direct_rng = random.Random(seed), random.Random(seed + 1)
    load = Load()
    pending: set[asyncio.Task[Shot]] = set()
    # Start with a collected, frozen heap: in a test process the first full collection can
    # meet a gigabyte of garbage from earlier tests (stopped apps), a pause of ~1 s that let
    # starts pile up past max_inflight at 876 req/s (seen in make test).
    gc.collect()
    gc.freeze()
    t0 = time.monotonic()
    half, n = 0.5 / rate, 0
    frozen_at = t0
    baseline = Target(target.direct, "sk-direct-baseline")
    async with _session(max_inflight) as session:
        while (due := t0 + n * half) < t0 + seconds:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            direct, n = n % 2 == 1, n + 1
            if due - frozen_at >= 5.0:
                # The driver keeps every shot; without this, its own full GC passes grow with
                # the run and show up as client-side latency that Weir never caused.
                gc.freeze()
                frozen_at = due
            if direct and not target.direct:
                continue
            kind = choose_kind(direct_rng, 0.0) if direct else choose_kind(rng, fault_rate)
            if len(pending) >= max_inflight:
                load.shed += 1
                continue
            seeded = random.Random((direct_rng if direct else rng).getrandbits(64))
            task = asyncio.create_task(fire(session, baseline if direct else target, kind, seeded, t0))
            pending.add(task)
            out = load.direct if direct else load.shots
            task.add_done_callback(functools.partial(_collect, pending=pending, shots=out))
        if pending:
            await asyncio.wait(pending, timeout=90)
    for task in pending:
        task.cancel()
    return load


def _collect(task: asyncio.Task[Shot], pending: set[asyncio.Task[Shot]], shots: list[Shot]) -> None:
    pending.discard(task)
    if not task.cancelled() and task.exception() is None:
        shots.append(task.result())


async def serve_fault_mocks(ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """Serve each misbehaving mock of `fault_behaviours()` on its port until cancelled."""
    behaviours = fault_behaviours()
    mocks = [MockUpstream(behaviours[name], keep_requests=100) for name in ports]
    try:
        for mock, port in zip(mocks, ports.values()):
            await mock.start(host, port)
        print("fault mocks ready", flush=True)
        await asyncio.Event().wait()
    finally:
        for mock in mocks:
            await mock.stop()
