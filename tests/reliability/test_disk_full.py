"""The disk fills up under the default layout (issue 14): a real `weir serve` whose SQLite
database and outbox live beside its proxy.yaml on a small tmpfs that becomes full while ten
streams run, and is freed afterwards.

The captures fail (SQLite: `database or disk is full`), and so does the outbox's write
(ENOSPC). The settlements must wait in memory (the pending gauge shows them, the outbox
failure is logged once, no `.tmp` is left) and land exactly once each when space returns:
every request charged the usage its client saw, no hold open, `weir audit` clean.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from proxy.mock.upstream import MockUpstream
from tests.reliability.procs import WeirConfig, WeirProcess, World, billing_plugin, chat, chat_body, wait_for
from tests.reliability.test_store_faults import charge_of

pytestmark = pytest.mark.slow

STREAMS = 10
PENDING = "weir_billing_pending_settlements"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs at tmp_path/disk (skipped where mounting one is not permitted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True, timeout=30
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in this sandbox: {res.stderr.strip() or res.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


@pytest_asyncio.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    """The mock upstream, paced so that the streams are still running when the disk fills."""
    upstream = MockUpstream()
    upstream.behaviour.pace, upstream.behaviour.words = 0.1, 40  # about 4 s a stream
    await upstream.start()
    yield upstream
    await upstream.stop()


def fill_disk(db: Path, filler: Path) -> None:
    """Fill the database's filesystem with `filler`, its WAL cut to 0 bytes first.

    A commit must then find new space: a WAL that merely restarted after a checkpoint reuses
    its pages, and small commits would still fit. If a commit (a heartbeat) slipped in
    between the cut and the fill, start over."""
    wal = Path(f"{db}-wal")
    for _ in range(10):
        conn = sqlite3.connect(db, timeout=5)
        try:
            busy, _frames, _copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        if not busy and wal.stat().st_size == 0:
            fill(filler)
            if wal.stat().st_size == 0:
                return
            filler.unlink()
        time.sleep(0.05)
    raise AssertionError("could not fill the disk behind an empty WAL")


def fill(path: Path) -> None:
    """Write zeros to `path` until the filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = bytes(64 * 1024)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return
                raise
    finally:
        os.close(fd)


async def metric(url: str, name: str) -> float:
    """The value of the unlabelled metric `name` on /metrics."""
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    [value] = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


async def start_weir(world: World, tmp: Path) -> WeirProcess:
    """`weir serve` on `world.tmp/a/proxy.yaml` (database and outbox beside it), logging to
    `tmp` (off the small disk, so the log survives it filling up); funds the world's key."""
    store = {"backend": "sqlite", "path": str(world.tmp / "weir.db"), "heartbeat_every": 5, "orphan_after": 120}
    cfg = WeirConfig(world.mock.url, store, (billing_plugin(),))
    path = cfg.write(world.tmp / "a")
    weir = WeirProcess(path, cfg.port)
    weir.log = tmp / "weir.log"
    world.procs.append(weir)
    await weir.start()
    await world._fund(path)
    return weir


async def test_disk_full_during_streams_then_freed(tmp_path: Path, small_disk: Path, mock: MockUpstream) -> None:
    """Ten streams; the disk fills while they run; they end and their captures cannot be
    written anywhere; the disk is freed; each lands once, exactly as the client's usage."""
    world = World(small_disk, mock, {})
    try:
        weir = await start_weir(world, tmp_path)
        # A bounded max_tokens: ten holds at the default output reserve would exceed the funds.
        bodies = [{**chat_body(f"stream {i}"), "max_tokens": 200} for i in range(STREAMS)]
        streams = [asyncio.create_task(chat(weir.url, world.key, body)) for body in bodies]
        await wait_for(lambda: len(mock.requests) == STREAMS, 15, "every stream to be held and sent upstream")
        filler = small_disk / "filler"
        await asyncio.to_thread(fill_disk, small_disk / "weir.db", filler)
        assert not any(t.done() for t in streams), "the streams ended before the disk was full"
        answers = await asyncio.gather(*streams)
        assert all(a.status == 200 and a.done for a in answers), answers

        async def all_pending() -> bool:
            return await metric(weir.url, PENDING) == STREAMS

        await wait_for(all_pending, 20, f"{STREAMS} settlements pending", every=0.2)
        outbox = small_disk / "a" / "weir-outbox"
        assert not outbox.exists() or list(outbox.iterdir()) == [], "a .tmp or partial outbox file was left"
        assert len(await world.store.open_holds()) == STREAMS
        assert await world.store.query_logs(user="alice", limit=100) == []
        log = weir.output()
        assert log.count("cannot write the outbox") == 1 and "No space left on device" in log, log

        filler.unlink()

        async def none_pending() -> bool:
            return await metric(weir.url, PENDING) == 0

        await wait_for(none_pending, 30, "the pending settlements to land", every=0.2)
        await world.no_open_holds(10)
        total = 0
        for ans in answers:
            row = await world.row(ans.request_id)
            assert (row.details.end_reason, row.details.usage_source, row.charge) == (
                "completed",
                "upstream",
                charge_of(ans),
            )
            total += row.charge
        await world.assert_wallet(total, STREAMS)
        await world.assert_audit("a")
        assert not outbox.exists() or list(outbox.iterdir()) == []
        assert "writable again" in weir.output()
    finally:
        await world.close()
