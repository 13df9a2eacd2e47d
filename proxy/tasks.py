"""Tracked background tasks that shutdown drains.

Settlement (terminal hooks) runs in tracked tasks so that a client disconnect or a
cancelled handler never interrupts a store write halfway, and shutdown waits for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class TaskTracker:
    """Owns background tasks; `drain()` waits for all of them at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._services: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Start `coro` as a tracked task and return it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def spawn_service(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Start a long-running loop whose owner stops it before shutdown drains; `idle()`
        does not wait for services."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._services.add(task)
        task.add_done_callback(self._services.discard)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until no tracked task is running (tests use it to await settlement)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"{len(self._tasks)} background tasks still running")
            await asyncio.wait(set(self._tasks), timeout=left)

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait up to `timeout` seconds for every tracked task, then cancel the rest, and
        stop the services still running.

        A task cut short is an error worth a log line (a settlement that did not finish).
        A service is a loop meant to run until stopped; one whose owner stops it later in
        the shutdown (a plugin's, torn down after this drain so that settlement can use
        it) is stopped here without alarm."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=left)
        for task in list(self._tasks):
            log.error("cancelling background task %s at shutdown", task.get_name())
            task.cancel()
        for task in list(self._services):
            log.debug("stopping service %s at shutdown", task.get_name())
            task.cancel()
        if self._tasks or self._services:
            await asyncio.wait(self._tasks | self._services, timeout=1.0)
