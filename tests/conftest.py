"""Shared test helpers. The plugin-author fixtures (fake_upstream, make_proxy, read_sse)
come from Weir's own pytest11 harness, `proxy.testing`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import suite_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL (database 0) of the Redis every test shares: a private `redis-server` started
    once for the session (or the one WEIR_TEST_REDIS_URL names). Tests keep apart by key
    prefix. Skips without `redis-server`, unless WEIR_REQUIRE_REDIS=1 (then it fails)."""
    with suite_redis(lambda: tmp_path_factory.mktemp("redis")) as url:
        yield url
