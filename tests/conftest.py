"""Shared test helpers. The plugin-author fixtures (fake_upstream, make_proxy, read_sse)
come from Weir's own pytest11 harness, `proxy.testing`."""

from __future__ import annotations

import os

import pytest


def redis_available(url: str = "redis://127.0.0.1:6379/0") -> bool:
    """True when a Redis server answers PING at `url`."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        ok = bool(client.ping())
        client.close()
        return ok
    except Exception:
        return False


def require_redis() -> None:
    """Skip (or, with WEIR_REQUIRE_REDIS=1, fail) when Redis is absent."""
    if redis_available():
        return
    if os.environ.get("WEIR_REQUIRE_REDIS") == "1":
        pytest.fail("Redis on 127.0.0.1:6379 is required (WEIR_REQUIRE_REDIS=1) but not reachable")
    pytest.skip("Redis on 127.0.0.1:6379 is not reachable")
