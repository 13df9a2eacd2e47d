"""A circuit breaker per upstream: skip an upstream that keeps failing, for a while.

Closed (the normal state), it counts consecutive failed attempts (no connection, a timeout
before the headers, a 5xx); any other answer resets the count. After `failures` in a row it
opens: the upstream is skipped for `cooldown_s` seconds, so requests go straight to the other
candidates instead of paying a connect error or a timeout each. Once the cooldown is over it
is half-open: the next request that would use it is let through as the one probe (others
keep skipping it); the probe's success closes the breaker, its failure opens it for another
cooldown. A probe that never reports (its request was cancelled) is given up after one
cooldown, so a lost probe cannot keep an upstream out for ever.

State changes are reported to `on_change(name, is_open, tripped)` (the metrics); the
request path costs one attribute test per attempt while the breaker is closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.config import BreakerConfig

__all__ = ["Breaker", "BreakerListener"]

#: Called with (upstream name, now open, a new trip).
BreakerListener = Callable[[str, bool, bool], None]


def _ignore(name: str, is_open: bool, tripped: bool) -> None:
    """The listener of a breaker nobody watches."""


class Breaker:
    """One upstream's breaker. `failures` 0 turns it off (never opens)."""

    __slots__ = ("name", "failures", "cooldown", "_clock", "_on_change", "_count", "_open_until", "_probe_at")

    def __init__(
        self,
        name: str = "",
        failures: int = 0,
        cooldown: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: BreakerListener = _ignore,
    ) -> None:
        self.name = name
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._count = 0
        self._open_until: float | None = None  # None: closed
        self._probe_at: float | None = None  # when the half-open probe was let through

    @classmethod
    def from_config(
        cls,
        name: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: BreakerListener = _ignore,
    ) -> Breaker:
        """A breaker with `config`'s thresholds."""
        return cls(name, config.failures, config.cooldown_s, clock=clock, on_change=on_change)

    @property
    def is_open(self) -> bool:
        """True from a trip until a probe succeeds (cooling down or half-open)."""
        return self._open_until is not None

    def retry_in(self) -> float:
        """Seconds until the cooldown ends (0 when closed or already half-open)."""
        if self._open_until is None:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def admits(self) -> bool:
        """Whether a request may plan to use this upstream now (claims nothing)."""
        if self._open_until is None:
            return True
        now = self._clock()
        return now >= self._open_until and not self._probing(now)

    def acquire(self) -> bool:
        """Right before an attempt: True to go ahead. Half-open, the first caller becomes
        the probe and the others are refused until it reports."""
        if self._open_until is None:
            return True
        now = self._clock()
        if now < self._open_until or self._probing(now):
            return False
        self._probe_at = now
        return True

    def success(self) -> None:
        """The upstream answered (anything but a 5xx): closed, count reset."""
        if self._count:
            self._count = 0
        if self._open_until is not None:
            self._open_until = self._probe_at = None
            self._on_change(self.name, False, False)

    def failure(self) -> None:
        """An attempt failed: count it; trip at the threshold; a failed probe re-opens."""
        if self.failures <= 0:
            return
        if self._open_until is not None:
            if self._probe_at is not None:  # the probe failed: another cooldown
                self._trip()
            return  # a late failure of a request that started before the trip
        self._count += 1
        if self._count >= self.failures:
            self._trip()

    def _trip(self) -> None:
        self._count = 0
        self._probe_at = None
        self._open_until = self._clock() + self.cooldown
        self._on_change(self.name, True, True)

    def _probing(self, now: float) -> bool:
        return self._probe_at is not None and now - self._probe_at < self.cooldown
