"""`weir serve --workers 2` as a real process tree, on SQLite and on Redis: two workers bill
one account exactly (200 concurrent requests against funds for 37: exactly 37 admitted); a
SIGKILLed worker is restarted while the port keeps answering, its holds are resolved by the
orphan rule and the other worker's live streams are not touched; SIGTERM to the supervisor
drains both workers' streams to their end and exits 0. Every test ends with `weir audit`.

A per-request price (1000 quota units) makes a hold equal to its charge, so how many
requests fit is a property of the funds, whatever the timing on a busy machine. Which
worker serves a request is the kernel's choice (SO_REUSEPORT hashes each new connection);
the tests open one connection per request and read the instance of each hold. Under a burst
on SQLite one worker may take every hold before the other gets the write lock (SQLite's lock
is not handed out in turn between processes), so the burst test checks the count, and
that both workers answer on the port, not how the holds split.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from plugins.billing.apikeys import generate_key
from plugins.billing.store.base import HoldState
from plugins.billing.store.factory import make_store
from proxy.config import load_config
from proxy.mock.upstream import MockBehaviour, MockUpstream
from proxy.testing import unique_prefix
from tests.reliability.procs import (
    WeirConfig,
    WeirProcess,
    audit_json,
    billing_plugin,
    chat,
    chat_body,
    killer_plugin,
    wait_for,
)

pytestmark = pytest.mark.slow

PRICE = 1000  # quota units per request: $0.002 at 500,000 quota per USD
ORPHAN_AFTER = 1.5
HEARTBEAT = 0.2
_WORKER = re.compile(r"worker (\d+): pid (\d+), instance (\S+)")


@dataclass(slots=True)
class Tree:
    """One supervisor with two workers on a shared store, and the test's own store connection."""

    proc: WeirProcess
    store: Any
    key: str = ""

    def workers(self) -> dict[str, tuple[int, int]]:
        """Every worker process the log announced so far: instance id -> (worker number, pid)."""
        return {m[3]: (int(m[1]), int(m[2])) for m in _WORKER.finditer(self.proc.output())}

    async def fund(self, quota: int) -> None:
        """User alice with `quota` units and one key."""
        await self.store.create_user("alice")
        await self.store.credit("alice", quota, note="workers test funding")
        clear, digest, hint = generate_key()
        await self.store.create_key("alice", digest, name="w", hint=hint)
        self.key = clear

    async def audit(self) -> None:
        """`weir audit --json` exits 0 and reports nothing wrong."""
        code, report = audit_json(self.proc.config)
        assert code == 0 and report["ok"], report


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each test runs on both stores."""
    return str(request.param)


@pytest_asyncio.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    """The upstream both workers use; tests set its pace."""
    upstream = MockUpstream(MockBehaviour())
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.stop()


@pytest_asyncio.fixture
async def tree(backend: str, mock: MockUpstream, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Tree]:
    """`weir serve --workers 2` on `backend`, started and announced; killed afterwards."""
    timing = {"orphan_after": ORPHAN_AFTER, "heartbeat_every": HEARTBEAT}
    if backend == "redis":
        store_cfg = {
            "backend": "redis",
            "url": request.getfixturevalue("redis_url"),
            "prefix": unique_prefix(),
            **timing,
        }
    else:
        store_cfg = {"backend": "sqlite", "path": str(tmp_path / "weir.db"), **timing}
    plugin = billing_plugin(pricing={"models": {"mock-gpt*": {"per_request": 0.002}}})
    cfg = WeirConfig(mock.url, store_cfg, (plugin,), server={"shutdown_grace": 15.0})
    path = cfg.write(tmp_path / "weir")
    proc = WeirProcess(path, cfg.port, args=("--workers", "2"))
    store = make_store(load_config(path))
    try:
        await proc.start(timeout=60)
        await wait_for(lambda: "with 2 workers" in proc.output(), 60, "both workers to serve", every=0.1)
        await store.open()
        yield Tree(proc, store)
    finally:
        proc.kill()
        drop = getattr(store, "drop_all", None)
        try:
            if drop is not None:
                await drop()
        finally:
            await store.close()


async def test_two_workers_admit_exactly_what_the_funds_cover(tree: Tree, mock: MockUpstream) -> None:
    await tree.fund(37 * PRICE)
    assert await _instances_answering(tree) == set(tree.workers())
    mock.behaviour.pace = 0.01  # streams overlap, so both workers hold against the balance at once
    answers = await asyncio.gather(*(chat(tree.proc.url, tree.key, chat_body(f"n{i}")) for i in range(200)))
    admitted = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert len(admitted) == 37 and all(a.done for a in admitted)
    assert {(a.status, (a.error or {}).get("code")) for a in refused} == {(402, "insufficient_quota")}
    await wait_for(_no_open_holds(tree), 30, "the captures to land", every=0.05)  # they follow the response
    holds = [await tree.store.get_hold(a.request_id) for a in admitted]
    assert {h.state for h in holds} == {HoldState.CAPTURED}
    assert {h.instance_id for h in holds} <= set(tree.workers())
    user = await tree.store.get_user("alice")
    assert (user.balance, user.reserved, user.used) == (0, 0, 37 * PRICE)
    assert len(await tree.store.query_logs(user="alice", limit=1000)) == 37
    await tree.audit()


async def _instances_answering(tree: Tree) -> set[str]:
    """The instances that answer /healthz on the port, one new connection per request,
    until both workers have (the kernel spreads connections: a few tries suffice)."""
    seen: set[str] = set()
    for _ in range(100):
        async with aiohttp.ClientSession() as s, s.get(tree.proc.url + "/healthz") as r:
            seen.add((await r.json())["instance"])
        if len(seen) == 2:
            break
    return seen


async def _streams_on_both(tree: Tree, tasks: list[asyncio.Task[Any]]) -> dict[str, list[str]]:
    """Open streams one connection each until both workers hold at least one; the open
    holds' request ids by instance."""
    deadline = time.monotonic() + 60
    while True:
        tasks.append(asyncio.create_task(chat(tree.proc.url, tree.key, chat_body(f"s{len(tasks)}"), timeout=60)))
        want = len(tasks)

        async def all_held(want: int = want) -> bool:
            logged = await tree.store.query_logs(user="alice", limit=1000)
            return len(await tree.store.open_holds()) + len(logged) == want

        await wait_for(all_held, 30, f"{want} holds", every=0.05)
        by_instance: dict[str, list[str]] = {}
        for hold in await tree.store.open_holds():
            by_instance.setdefault(hold.instance_id, []).append(hold.request_id)
        if len(by_instance) == 2:
            return by_instance
        assert time.monotonic() < deadline and want < 40, "every stream went to one worker"


async def test_a_killed_worker_is_restarted_and_its_holds_are_orphans(tree: Tree, mock: MockUpstream) -> None:
    await tree.fund(100 * PRICE)
    mock.behaviour.pace, mock.behaviour.words = 0.1, 60  # ~6 s a stream: longer than ORPHAN_AFTER
    tasks: list[asyncio.Task[Any]] = []
    by_instance = await _streams_on_both(tree, tasks)
    workers = tree.workers()
    victim, survivor = sorted(by_instance, key=lambda i: workers[i][0])
    number, pid = workers[victim]
    assert tree.proc.proc is not None
    os.kill(pid, signal.SIGKILL)  # the worker alone; the supervisor is left running
    await wait_for(
        lambda: f"worker {number} (pid {pid}) was killed by SIGKILL" in tree.proc.output(),
        30,
        "the supervisor to see the worker die",
    )
    # The survivor answers alone while the worker restarts: each check is a new connection.
    for _ in range(10):
        async with aiohttp.ClientSession() as s, s.get(tree.proc.url + "/healthz") as r:
            assert r.status == 200
    await wait_for(
        lambda: any(n == number and p != pid for n, p in tree.workers().values()),
        60,
        f"worker {number} to be restarted with a new pid",
    )
    answers = {a.request_id: a for a in await asyncio.gather(*tasks)}
    await wait_for(_no_open_holds(tree), ORPHAN_AFTER + 30, "every hold to be resolved", every=0.1)
    # The survivor's streams ran to their end and were charged in full, though they outlived
    # ORPHAN_AFTER: no worker resolved another live worker's holds.
    for request_id in by_instance[survivor]:
        assert answers[request_id].done, answers[request_id]
        hold = await tree.store.get_hold(request_id)
        assert (hold.state, hold.instance_id) == (HoldState.CAPTURED, survivor)
    # The dead worker's holds were orphans: a live worker resolved them, once each.
    for request_id in by_instance[victim]:
        assert not answers[request_id].done
        assert (await tree.store.get_hold(request_id)).state is not HoldState.OPEN
    rows = await tree.store.query_logs(user="alice", limit=1000)
    assert len(rows) == len(tasks)
    user = await tree.store.get_user("alice")
    assert (user.reserved, user.used) == (0, sum(r.charge for r in rows))
    assert sum(r.charge for r in rows if r.request_id in by_instance[survivor]) == PRICE * len(by_instance[survivor])
    await tree.audit()


async def test_sigterm_drains_both_workers(tree: Tree, mock: MockUpstream) -> None:
    await tree.fund(100 * PRICE)
    mock.behaviour.pace, mock.behaviour.words = 0.1, 60  # ~6 s a stream, well inside shutdown_grace
    tasks: list[asyncio.Task[Any]] = []
    by_instance = await _streams_on_both(tree, tasks)
    assert tree.proc.proc is not None
    tree.proc.proc.send_signal(signal.SIGTERM)  # the supervisor only, as systemd's KillMode=mixed does
    answers = await asyncio.gather(*tasks)
    assert all(a.status == 200 and a.done for a in answers), answers
    assert await tree.proc.wait_dead(timeout=60) == 0, tree.proc.output()
    assert "SIGTERM received: stopping 2 worker(s)" in tree.proc.output()
    held = [r for ids in by_instance.values() for r in ids]
    for request_id in held:
        assert (await tree.store.get_hold(request_id)).state is HoldState.CAPTURED
    user = await tree.store.get_user("alice")
    assert (user.reserved, user.used) == (0, PRICE * len(held))
    await tree.audit()


def _no_open_holds(tree: Tree) -> Any:
    async def check() -> bool:
        return not await tree.store.open_holds()

    return check


async def test_a_crash_loop_backs_off(mock: MockUpstream, tmp_path: Path) -> None:
    # Every worker kills itself on its first request: each restart waits twice as long.
    store_cfg = {"backend": "sqlite", "path": str(tmp_path / "weir.db")}
    cfg = WeirConfig(mock.url, store_cfg, (killer_plugin("on_request"),))
    proc = WeirProcess(cfg.write(tmp_path / "weir"), cfg.port, args=("--workers", "2"))
    killed = re.compile(r"worker (\d) \(pid \d+\) was killed by SIGKILL after [\d.]+ s; restarting it in ([\d.]+) s")
    kills = 0
    try:
        await proc.start(timeout=60)

        async def third_restart() -> bool:
            nonlocal kills
            try:
                async with aiohttp.ClientSession() as s:
                    await s.post(
                        proc.url + "/v1/chat/completions",
                        json=chat_body(stream=False),
                        timeout=aiohttp.ClientTimeout(total=10),
                    )
            except aiohttp.ClientConnectorError:
                pass  # both workers were down: nothing listened
            except aiohttp.ClientError:
                kills += 1  # the worker that took it killed itself
            return max(Counter(n for n, _ in killed.findall(proc.output())).values(), default=0) >= 3

        await wait_for(third_restart, 120, "a worker's third restart", every=0.2)
        # Every kill is logged before the stop, so that the stop finds only live workers.
        await wait_for(lambda: len(killed.findall(proc.output())) == kills, 30, f"{kills} kills in the log")
        for number in "12":
            seen = [d for n, d in killed.findall(proc.output()) if n == number]
            assert seen == ["0.5", "1.0", "2.0", "4.0", "8.0"][: len(seen)], seen
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        assert await proc.wait_dead(timeout=60) == 0, proc.output()
    finally:
        proc.kill()
