"""`rate_limit`: a per-client requests-per-minute limiter (a token bucket per credential).

Each client credential gets a bucket that holds up to `burst` tokens (default: one
minute's worth) and refills at `requests_per_minute / 60` tokens a second. A request takes
one token; with none left it is refused with 429 and a `Retry-After` header, before it
reaches the upstream. Requests without a credential share one bucket per client IP.

The buckets live on the plugin instance, in memory: the limit is per Weir process. List
this plugin after the plugin that authenticates clients, so made-up keys are refused
before they can create buckets.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from proxy.plugin import Plugin, Reject, RequestContext

__all__ = ["RateLimitConfig", "RateLimitPlugin"]


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """The `config:` block of `use: rate_limit`.

    `requests_per_minute` is the sustained rate per client; `burst` is how many requests a
    rested client may send at once (default: `requests_per_minute`).
    """

    requests_per_minute: int
    burst: int | None = None

    def __post_init__(self) -> None:
        if self.requests_per_minute < 1:
            raise ValueError(f"requests_per_minute must be at least 1, got {self.requests_per_minute}")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")

    @property
    def capacity(self) -> int:
        """The most tokens a bucket holds."""
        return self.burst if self.burst is not None else self.requests_per_minute


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimitPlugin(Plugin):
    """Refuses a client's requests beyond `requests_per_minute` with 429 and `Retry-After`.

    `clock` returns monotonic seconds; tests pass their own to move time forward.
    """

    name: ClassVar[str] = "rate_limit"
    Config: ClassVar[type[RateLimitConfig]] = RateLimitConfig

    def __init__(self, config: RateLimitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config)
        self.config: RateLimitConfig = config
        self._clock = clock
        self._capacity = float(config.capacity)
        self._rate = config.requests_per_minute / 60.0
        # After this long untouched, a bucket is full again, i.e. the same as a new one.
        self._idle_after = self._capacity / self._rate
        # A per-instance secret: the table holds keyed digests, never a client's key, and
        # the digests are useless to anyone who reads them from memory.
        self._salt = secrets.token_bytes(16)
        # Least recently used first, so pruning only ever looks at the front.
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()

    @property
    def tracked_clients(self) -> int:
        """How many buckets are held (clients seen within the last refill period)."""
        return len(self._buckets)

    async def on_request(self, ctx: RequestContext) -> None:
        """Take one token from the client's bucket, or refuse the request with 429."""
        now = self._clock()
        self._prune(now)
        remaining = self._take(self._bucket_id(ctx), now)
        ctx.response_headers["x-ratelimit-limit-requests"] = str(self.config.requests_per_minute)
        ctx.response_headers["x-ratelimit-remaining-requests"] = str(remaining)

    def _take(self, bucket_id: bytes, now: float) -> int:
        """Spend a token and return how many whole tokens are left; raise Reject if none."""
        bucket = self._buckets.pop(bucket_id, None)
        if bucket is None:
            bucket = _Bucket(self._capacity, now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self._capacity, bucket.tokens + elapsed * self._rate)
            bucket.updated = now
        self._buckets[bucket_id] = bucket
        # The tolerance absorbs float drift, so a token refilled "exactly now" is usable.
        if bucket.tokens < 1.0 - 1e-9:
            wait = math.ceil((1.0 - bucket.tokens) / self._rate)
            raise Reject(
                429,
                "rate_limit_exceeded",
                f"rate limit of {self.config.requests_per_minute} requests per minute exceeded; retry in {wait}s",
                headers={"Retry-After": str(wait)},
            )
        bucket.tokens = max(0.0, bucket.tokens - 1.0)
        return int(bucket.tokens)

    def _bucket_id(self, ctx: RequestContext) -> bytes:
        # Separate namespaces so a key can never share a bucket with an IP address.
        if ctx.api_key:
            material = b"key\x00" + ctx.api_key.encode("utf-8", "surrogateescape")
        else:
            material = b"ip\x00" + ctx.client_ip.encode("utf-8", "surrogateescape")
        return hashlib.blake2b(material, digest_size=16, key=self._salt).digest()

    def _prune(self, now: float) -> None:
        """Forget buckets idle long enough to be full: a new bucket would be identical."""
        buckets = self._buckets
        while buckets:
            oldest_id = next(iter(buckets))
            if now - buckets[oldest_id].updated < self._idle_after:
                break
            del buckets[oldest_id]
