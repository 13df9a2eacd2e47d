"""Fixtures for the backend-neutral store contract suite.

`store` is parametrised over every backend. The Redis backend runs on the suite's private
`redis-server` (the session fixture `redis_url`); it skips (with the reason) when
`plugins.billing.store.redis.store` does not import or no `redis-server` is installed, unless
`WEIR_REQUIRE_REDIS=1`, which turns that into a failure. Every test that uses `store` ends
with an audit: the ledger must balance and no orphaned hold may be left.

`backend.tamper(user, delta)` changes a wallet total behind the store's back (it is the only
way to prove that `audit()` can fail); `backend.make()` builds a second store on the same data
so races are real; `backend.spec` describes the backend to a child process.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from plugins.billing.store.base import ApiKey, Hold, HoldRefusal, LogDetails, Preference, Resolution, Store
from plugins.billing.store.sqlite.store import SQLiteStore
from tests.redis_server import redis_missing

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z
AUDIT_ORPHAN_AFTER = 30.0
DONE = LogDetails(end_reason="completed", usage_source="upstream")


class FakeClock:
    """A settable clock: `clock()` for stores, `clock.now` and `clock.advance(s)` for tests."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@dataclass
class Backend:
    """One backend under test: how to build stores on the same data, and tamper with it."""

    name: str
    make: Callable[[FakeClock], Store]
    tamper_wallet: Callable[[str, int], Awaitable[None]]
    spec: list[str]
    broken: Callable[[], Store]
    stores: list[Store] = field(default_factory=list)

    async def open_peer(self, clock: FakeClock) -> Store:
        """Another opened store sharing this backend's data (closed at teardown)."""
        peer = self.make(clock)
        await peer.open()
        self.stores.append(peer)
        return peer


def _redis_store_unimportable() -> str | None:
    try:
        import plugins.billing.store.redis.store  # noqa: F401
    except Exception as exc:  # any import failure means the backend is not there yet
        return f"plugins.billing.store.redis.store does not import: {exc!r}"
    return None


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = str(tmp_path / "weir.db")

    async def tamper(user: str, delta: int) -> None:
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE users SET balance = balance + ? WHERE name = ?", (delta, user))

    return Backend(
        name="sqlite",
        make=lambda clock: SQLiteStore(path, clock=clock),
        tamper_wallet=tamper,
        spec=["sqlite", path],
        broken=lambda: SQLiteStore(str(tmp_path / "missing" / "dir" / "weir.db")),
    )


def _redis_backend(url: str) -> Backend:
    from plugins.billing.store.redis.store import RedisStore

    prefix = f"weirtest:{uuid.uuid4().hex}"

    async def tamper(user: str, delta: int) -> None:
        await _tamper_redis_wallet(url, prefix, user, delta)

    return Backend(
        name="redis",
        make=lambda clock: RedisStore(url=url, prefix=prefix, clock=clock),
        tamper_wallet=tamper,
        spec=["redis", url, prefix],
        broken=lambda: RedisStore(url="redis://127.0.0.1:1/0", prefix=prefix),
    )


async def _tamper_redis_wallet(url: str, prefix: str, user: str, delta: int) -> None:
    """Bump the `balance` field of the user's hash: the one hash under the prefix with
    `balance` and `preference` fields that names the user (by key suffix or `name` field)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        async for key in client.scan_iter(match=f"{prefix}*", count=500):
            if await client.type(key) != "hash":
                continue
            record = await client.hgetall(key)
            names_user = key.endswith(f":{user}") or record.get("name") == user
            if names_user and "balance" in record and "preference" in record:
                await client.hincrby(key, "balance", delta)
                return
    finally:
        await client.aclose()
    pytest.fail(
        f"tamper: no user hash for {user!r} under {prefix}; teach tests/plugins/billing/store/conftest.py the layout"
    )


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at START."""
    return FakeClock()


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The backend under test; closes (and for Redis drops) every store built on it."""
    if request.param == "redis":
        reason = _redis_store_unimportable()
        if reason is not None:
            redis_missing(reason)
        chosen = _redis_backend(request.getfixturevalue("redis_url"))
    else:
        chosen = _sqlite_backend(tmp_path)
    yield chosen
    if not chosen.stores:
        return
    first, *peers = chosen.stores
    for peer in peers:
        await peer.close()
    drop = getattr(first, "drop_all", None)
    if drop is not None:
        await drop()
    await first.close()


@pytest.fixture
async def store(backend: Backend, clock: FakeClock) -> AsyncIterator[Store]:
    """An opened store on a fresh backend; the test fails if the final audit is not clean."""
    opened = await backend.open_peer(clock)
    yield opened
    report = await opened.audit(clock.now, AUDIT_ORPHAN_AFTER)
    assert report.ok, f"final audit failed: {report}"


@dataclass
class World:
    """Shorthands for the contract tests: users with keys, holds with defaults."""

    store: Store
    clock: FakeClock
    instance: str = "i1"

    async def user(
        self,
        name: str = "alice",
        balance: int = 0,
        *,
        quota: int | None = None,
        preference: Preference = Preference.SUBSCRIPTION_FIRST,
        expires_at: float | None = None,
    ) -> ApiKey:
        """Create `name` with `balance` in the wallet and one key; returns the key."""
        await self.store.create_user(name, preference=preference)
        if balance:
            await self.store.credit(name, balance, "test top-up")
        return await self.store.create_key(
            name, f"hash-{name}-{uuid.uuid4().hex}", name=f"{name}-key", quota=quota, expires_at=expires_at
        )

    async def hold(
        self,
        rid: str,
        key: ApiKey,
        amount: int,
        *,
        preference: Preference | None = None,
        ttl: float = 3600,
        model: str = "gpt-4o",
        instance: str | None = None,
    ) -> Hold | HoldRefusal:
        """A hold with test defaults."""
        return await self.store.hold(
            rid, key.user, key.id, amount, preference, "pv1", ttl, instance or self.instance, model
        )

    async def held(self, rid: str, key: ApiKey, amount: int, **kw: object) -> Hold:
        """A hold that must succeed."""
        result = await self.hold(rid, key, amount, **kw)  # type: ignore[arg-type]
        assert isinstance(result, Hold), result
        return result

    async def capture(self, rid: str, actual: int, upstream: str = "") -> Resolution:
        """Capture with a plain completed log."""
        return await self.store.capture(
            rid, actual, LogDetails(end_reason="completed", usage_source="upstream", upstream=upstream)
        )

    async def tick(self, seconds: float, instances: Sequence[str] = ("i1",)) -> None:
        """Advance the clock and keep the named instances alive."""
        self.clock.advance(seconds)
        for instance in instances:
            await self.store.heartbeat(instance)


@pytest.fixture
async def world(store: Store, clock: FakeClock) -> World:
    """A World on the store, with instance i1 alive."""
    await store.heartbeat("i1")
    return World(store, clock)
