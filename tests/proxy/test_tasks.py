"""TaskTracker.drain at shutdown: unfinished work is an error, a running service is not."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.tasks import TaskTracker


async def test_drain_cancels_what_is_left_and_logs_only_unfinished_work(caplog: pytest.LogCaptureFixture) -> None:
    tracker = TaskTracker()
    finished = tracker.spawn(asyncio.sleep(0.01), name="settle:quick")
    stuck = tracker.spawn(asyncio.sleep(3600), name="settle:stuck")
    service = tracker.spawn_service(asyncio.sleep(3600), name="replay-loop")
    with caplog.at_level(logging.DEBUG, logger="proxy.tasks"):
        await tracker.drain(timeout=0.2)
    assert finished.done() and not finished.cancelled()
    assert stuck.cancelled() and service.cancelled()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["cancelling background task settle:stuck at shutdown"]
    assert any("replay-loop" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
