"""Each upstream's recent health as billing sees it: the outcome of its last requests.

The core does not (yet) offer plugins an upstream health signal, so billing keeps its own:
its terminal hooks already know, for every billed request, the upstream it went to and
whether the upstream failed it. The pricing page's "available channels" view shows it.
Per instance and in memory: a fresh instance says `unknown` until traffic flows.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from proxy.plugin import EndReason, Outcome, ProxyError, RequestContext

Health = Literal["ok", "failing", "unknown"]

#: Outcomes kept per upstream; more than half of them failed means `failing`.
WINDOW = 20


class ChannelHealth:
    """Recent outcomes per upstream name (bounded: one small ring per configured upstream)."""

    __slots__ = ("_recent", "_limit")

    def __init__(self, limit: int = 64) -> None:
        """`limit`: at most this many upstream names are tracked (names come from config)."""
        self._recent: dict[str, deque[bool]] = {}
        self._limit = limit

    def record(self, upstream: str, ok: bool) -> None:
        """Note one request's outcome on `upstream` (True: the upstream answered it)."""
        ring = self._recent.get(upstream)
        if ring is None:
            if len(self._recent) >= self._limit:
                return
            ring = self._recent[upstream] = deque(maxlen=WINDOW)
        ring.append(ok)

    def status(self, upstream: str) -> Health:
        """`ok`, `failing` (more than half of the last requests failed) or `unknown`."""
        ring = self._recent.get(upstream)
        if not ring:
            return "unknown"
        failed = len(ring) - sum(ring)
        return "failing" if failed * 2 > len(ring) else "ok"


_BROKEN = frozenset({EndReason.UPSTREAM_ERROR, EndReason.UPSTREAM_TRUNCATED})


def completed(health: ChannelHealth, ctx: RequestContext, outcome: Outcome) -> None:
    """Record a started response: the upstream failed it if it broke or sent an error event."""
    if ctx.upstream is not None:
        health.record(ctx.upstream.name, outcome.reason not in _BROKEN)


def failed(health: ChannelHealth, ctx: RequestContext, error: ProxyError) -> None:
    """Record a request that delivered nothing: the upstream's fault when it could not be
    reached or answered 5xx or 429 (a 4xx is the request's fault, not the channel's)."""
    if ctx.upstream is None or error.reason is not EndReason.UPSTREAM_ERROR:
        return
    status = error.upstream_status
    health.record(ctx.upstream.name, status is not None and status < 500 and status != 429)
