"""The Settler keeps every settlement until the store answers, whatever the outbox's disk does,
never charges twice, and makes definitive refusals loud (log line, counter, hold left open).

A real SQLite store sits behind `FaultyStore`, which fails on demand; the outbox's disk
"fills up" by making its fsync raise ENOSPC, as the operator's full disk did.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from plugins.billing.outbox import Outbox, Settler
from plugins.billing.pending import SettlementMetrics, pending_summary, report_pending
from plugins.billing.store.base import Hold, HoldState, LogDetails, Resolution, StoreError, StoreUnavailable
from plugins.billing.store.sqlite.store import SQLiteStore
from tests.reliability.procs import wait_for

DETAILS = LogDetails(end_reason="completed", usage_source="upstream")
FUNDS = 10_000


class FaultyStore:
    """A real store whose capture/release fail while `down` (StoreUnavailable) or `refusal`
    is set (that error); `lose_acks` captures land and then report StoreUnavailable."""

    def __init__(self, real: SQLiteStore) -> None:
        self.real = real
        self.down = False
        self.refusal: StoreError | None = None
        self.lose_acks = 0
        self.calls: list[str] = []

    def _fail(self, op: str) -> None:
        self.calls.append(op)
        if self.down:
            raise StoreUnavailable("sqlite: database or disk is full")
        if self.refusal is not None:
            raise self.refusal

    async def capture(self, request_id: str, actual: int, log: LogDetails) -> Resolution:
        """As the real store's, unless failing."""
        self._fail("capture")
        result = await self.real.capture(request_id, actual, log)
        if self.lose_acks:
            self.lose_acks -= 1
            raise StoreUnavailable("connection lost after the commit")
        return result

    async def release(self, request_id: str, log: LogDetails) -> Resolution:
        """As the real store's, unless failing."""
        self._fail("release")
        return await self.real.release(request_id, log)


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaultyStore]:
    """A funded user "u" with key "k" and an open hold "r1" of 500 on a real SQLite store."""
    real = SQLiteStore(str(tmp_path / "w.db"))
    await real.open()
    await real.create_user("u")
    await real.credit("u", FUNDS)
    key = await real.create_key("u", "0" * 64, name="k")
    assert isinstance(await real.hold("r1", "u", key.id, 500, None, "v1", 3600, "me"), Hold)
    yield FaultyStore(real)
    await real.close()


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """While `state["full"]`, the outbox's fsync fails with ENOSPC (after its .tmp was created)."""
    state = {"full": True}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return state


def settler_for(store: FaultyStore, directory: Path) -> Settler:
    """A Settler with fast retries and an outbox in `directory`."""
    return Settler(store, Outbox(directory, "me"), first_delay=0.01, max_delay=0.05)  # type: ignore[arg-type]


def lines(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.ERROR) -> list[str]:
    """The captured messages at `level` containing `text`."""
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


async def assert_charged_once(store: FaultyStore, charge: int) -> None:
    """Hold r1 captured `charge` once: one log row, the wallet moved by exactly that."""
    rows = await store.real.query_logs(user="u")
    assert [(r.request_id, r.charge) for r in rows] == [("r1", charge)]
    user = await store.real.get_user("u")
    assert user is not None and (user.balance, user.reserved) == (FUNDS - charge, 0)
    assert (await store.real.audit(time.time(), 3600)).ok


async def test_unwritable_outbox_still_retried_and_applied_once(
    store: FaultyStore, tmp_path: Path, disk_full: dict[str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    """The outbox's disk is full: nothing escapes, the capture waits in memory, is retried
    with the error logged once, and lands exactly once when the store answers again."""
    outdir = tmp_path / "outbox"
    settler = settler_for(store, outdir)
    store.down = True
    task = asyncio.create_task(settler.capture("r1", 700, DETAILS))
    await wait_for(lambda: len(store.calls) >= 5, 10, "several retries")
    assert settler.pending() == 1 and not task.done()
    assert list(outdir.glob("*")) == [], "a .tmp or a partial outbox file was left behind"
    assert len(lines(caplog, "cannot write the outbox")) == 1, "logged once per streak, not per retry"
    disk_full["full"] = False
    await wait_for(lambda: any(outdir.glob("*.jsonl")), 10, "the outbox to catch up once writable")
    store.down = False
    result = await asyncio.wait_for(task, 10)
    assert (result.state, result.charged, result.first) == (HoldState.CAPTURED, 700, True)
    assert settler.pending() == 0 and list(outdir.glob("*")) == []
    assert lines(caplog, "writable again", logging.WARNING)
    await assert_charged_once(store, 700)


async def test_outbox_remove_never_raises(store: FaultyStore, tmp_path: Path, disk_full: dict[str, bool]) -> None:
    """Adding and removing entries on a full disk report failure instead of raising; once
    the last entry is gone the (absent) file is current again, as unlinking needs no space."""
    outbox = Outbox(tmp_path / "outbox", "me")
    for rid in ("x", "y"):
        assert outbox.add({"op": "capture", "request_id": rid, "amount": 1, "log": {}}) is False
    outbox.remove("x")
    outbox.remove("never-added")
    assert not outbox.durable and list((tmp_path / "outbox").glob("*")) == []
    outbox.remove("y")
    assert outbox.durable and list((tmp_path / "outbox").glob("*")) == []


async def test_lost_acknowledgement_is_not_charged_twice(store: FaultyStore, tmp_path: Path) -> None:
    """The capture commits but its answer is lost: the retry finds it resolved (idempotent
    per request id) and reports the first resolution; one row, one charge."""
    settler = settler_for(store, tmp_path / "outbox")
    store.lose_acks = 1
    result = await asyncio.wait_for(settler.capture("r1", 700, DETAILS), 10)
    assert store.calls == ["capture", "capture"]
    assert (result.state, result.charged, result.first) == (HoldState.CAPTURED, 700, False)
    await assert_charged_once(store, 700)


@pytest.mark.parametrize("first", ["refused", "unavailable_then_refused"])
async def test_definitive_refusal_is_loud_and_leaves_the_hold_open(
    store: FaultyStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, first: str
) -> None:
    """A definitive StoreError: raised, logged at ERROR with request id, op, amount and the
    error, counted in weir_billing_settlement_failures_total; the hold stays open (no
    release) and the entry does not linger in the outbox."""
    outdir = tmp_path / "outbox"
    settler = settler_for(store, outdir)
    registry = CollectorRegistry()
    registry.register(SettlementMetrics(settler))
    if first == "refused":
        store.refusal = StoreError("constraint violated: boom")
    else:
        store.down = True
    task = asyncio.create_task(settler.capture("r1", 700, DETAILS))
    if first != "refused":
        await wait_for(lambda: any(outdir.glob("*.jsonl")), 10, "the capture in the outbox")
        store.down, store.refusal = False, StoreError("constraint violated: boom")
    with pytest.raises(StoreError, match="boom"):
        await asyncio.wait_for(task, 10)
    [line] = lines(caplog, "refused")
    assert all(part in line for part in ("capture", "r1", "700", "boom", "weir audit")), line
    assert registry.get_sample_value("weir_billing_settlement_failures_total", {"op": "capture"}) == 1
    assert registry.get_sample_value("weir_billing_settlement_failures_total", {"op": "release"}) == 0
    assert "release" not in store.calls
    hold = await store.real.get_hold("r1")
    assert hold is not None and hold.state is HoldState.OPEN
    assert list(outdir.glob("*")) == [] and settler.pending() == 0


async def test_release_of_a_hold_never_written_is_quiet(
    store: FaultyStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`release_if_held` (after a failed hold call): no hold is not a failure, retried or not."""
    settler = settler_for(store, tmp_path / "outbox")
    assert await settler.release_if_held("never-held", DETAILS) is None
    store.down = True
    task = asyncio.create_task(settler.release_if_held("never-held-2", DETAILS))
    await wait_for(lambda: len(store.calls) >= 3, 10, "a retry")
    store.down = False
    assert await asyncio.wait_for(task, 10) is None
    assert settler.failures == {"capture": 0, "release": 0}
    assert lines(caplog, "refused") == [] and list((tmp_path / "outbox").glob("*")) == []


async def test_pending_gauge_and_minute_report(
    store: FaultyStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While a capture waits, the gauge counts it, its age grows, and the report logs it."""
    now = [1000.0]
    settler = Settler(
        store,
        Outbox(tmp_path / "outbox", "me"),
        clock=lambda: now[0],  # type: ignore[arg-type]
        first_delay=0.01,
        max_delay=0.05,
    )
    registry = CollectorRegistry()
    registry.register(SettlementMetrics(settler))
    assert pending_summary(settler) is None
    assert registry.get_sample_value("weir_billing_pending_settlements") == 0
    store.down = True
    task = asyncio.create_task(settler.capture("r1", 700, DETAILS))
    await wait_for(lambda: settler.pending() == 1, 10, "the capture to be pending")
    now[0] += 90
    assert registry.get_sample_value("weir_billing_pending_settlements") == 1
    assert registry.get_sample_value("weir_billing_pending_oldest_seconds") == 90
    assert pending_summary(settler) == "billing: 1 settlements pending for the store; oldest 90 s"
    reporter = asyncio.create_task(report_pending(settler, every=0.01))
    await wait_for(lambda: bool(lines(caplog, "pending for the store", logging.WARNING)), 10, "the report")
    reporter.cancel()
    store.down = False
    await asyncio.wait_for(task, 10)
    assert registry.get_sample_value("weir_billing_pending_settlements") == 0
    await assert_charged_once(store, 700)


async def test_cancelled_while_unwritable_says_so(
    store: FaultyStore, tmp_path: Path, disk_full: dict[str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    """Shutdown cancels a retry whose outbox could not be written: an ERROR says the hold is
    left to the orphan rule (nothing else is lost silently)."""
    settler = settler_for(store, tmp_path / "outbox")
    store.down = True
    task: asyncio.Task[Any] = asyncio.create_task(settler.capture("r1", 700, DETAILS))
    await wait_for(lambda: len(store.calls) >= 2, 10, "a retry")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lines(caplog, "the outbox could not be written") and settler.pending() == 0


async def test_replay_goes_on_when_the_outbox_cannot_be_rewritten(
    store: FaultyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead instance's outbox on a full disk: every entry is still applied (none is skipped
    because its line could not be dropped), and a second replay is a no-op."""
    key = (await store.real.list_keys("u"))[0]
    assert isinstance(await store.real.hold("r2", "u", key.id, 500, None, "v1", 3600, "dead"), Hold)
    outdir = tmp_path / "outbox"
    dead = Outbox(outdir, "dead")
    for rid, amount in (("r1", 300), ("r2", 400)):
        dead.add({"op": "capture", "request_id": rid, "amount": amount, "log": DETAILS._asdict()})

    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    settler = settler_for(store, outdir)
    assert await settler.replay() == 2
    assert lines(caplog, "replayed again")
    assert await settler.replay() == 2  # the lines are still there: applied again, no-ops
    rows = await store.real.query_logs(user="u")
    assert sorted((r.request_id, r.charge) for r in rows) == [("r1", 300), ("r2", 400)]
    user = await store.real.get_user("u")
    assert user is not None and (user.balance, user.reserved) == (FUNDS - 700, 0)
