"""`Slots`: at most N commands of a `RedisStore` in flight at once; the others wait their turn.

What `asyncio.Semaphore` does, with a fast path that is plain Python attribute arithmetic:
every store command takes a slot and gives it back, and the semaphore's `locked()`,
`acquire()` and `release()` (Python methods, a coroutine among them) cost several thousand
instructions per command on the request path. A slot given back while commands wait goes
straight to the oldest of them (first come, first served, as the semaphore does).
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Slots"]


class Slots:
    """`limit` slots; `take()` one at once when free, else `wait()` for one; `release()` it.
    `acquire()`/`release()` spell it as `asyncio.Semaphore` does."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, limit: int) -> None:
        """`limit` free slots, nobody waiting."""
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a free slot now (True), unless none is free or others wait for one (False)."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> bool:
        """Take a slot, waiting as long as it takes."""
        if not self.take():
            await self.wait(None)
        return True

    async def wait(self, timeout: float | None) -> None:
        """Wait for a slot, at most `timeout` seconds (then TimeoutError, holding none)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except BaseException:
            if fut.done() and not fut.cancelled():  # handed a slot as the wait ended: pass it on
                self.release()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give a slot back: to the oldest waiter still waiting, else to the free ones."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1
