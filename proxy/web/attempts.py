"""Sign-in attempts limited per client address (admin token and API-key sign-ins alike).

In memory, per process: a guesser spread over N workers gets N times the budget, which
against a token of at least 16 random characters changes nothing that matters; what the
limit stops is a script hammering one process.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

__all__ = ["SignInLimiter"]


class SignInLimiter:
    """At most `limit` failed sign-ins per address within `window` seconds; the next one is
    refused until the oldest failure leaves the window. Bounded to `max_addresses` entries
    (the least recently failing address is forgotten first)."""

    def __init__(self, limit: int = 10, window: float = 300.0, max_addresses: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str, now: float | None = None) -> float:
        """0 when `address` may try now, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - now)

    def failed(self, address: str, now: float | None = None) -> None:
        """Count a failed attempt from `address`."""
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        if times is None:
            times = self._failures[address] = deque()
        times.append(now)
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        """Forget `address`'s failures after a good sign-in."""
        self._failures.pop(address, None)
