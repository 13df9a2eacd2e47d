"""The connection under `RedisStore`: lifecycle, error translation, scripts, typed commands.

For one server over plain TCP or a unix socket, the client is Weir's lean pipelined RESP
connection (`plugins.billing.store.redis.resp_commands`: redis-py cost ~130 µs of CPU per round trip on the
request path); for TLS urls or url options it is `redis.asyncio.Redis`, and with
`cluster=True` it is `redis.asyncio.cluster.RedisCluster`. Nothing above this module needs
to know which: every script call and
every single-key command is routed by its (first) key, which carries the user's hash tag;
`batch` is a non-transactional pipeline, which RedisCluster splits per node (replies come
back in call order, and calls on one key keep their order); `SCRIPT LOAD` after a
`NOSCRIPT` goes to every primary, and `SCAN` walks every primary. Cluster trouble that
redis-py could not ride out (cluster down, a slot not covered, redirections that never
settle, no reachable node) is `StoreUnavailable`, like a lost connection.

Concurrency is bounded here, not by the pool: redis-py's pools (100 connections by
default, per node on a cluster) raise "Too many connections" instead of waiting once they
are all busy, which turned a burst of 256 concurrent requests into 503s. Every command goes
through `RedisCore`, which lets `max_connections` of them run at once and queues the rest
(a wait longer than the timeout is StoreUnavailable); the client's pool is sized to match.

redis-py's command methods are typed for both bytes and str replies and for both sync and
async clients; the client here always decodes to str, so the few commands the store uses
are wrapped with precise types once, and the rest of the store stays strictly typed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url

from plugins.billing.store.base import StoreError, StoreUnavailable
from plugins.billing.store.redis.layout import SCRIPTS, load_script
from plugins.billing.store.redis.resp_commands import LeanRedis, Script, lean_target, reply_error
from plugins.billing.store.redis.slots import Slots

_P = ParamSpec("_P")
_T = TypeVar("_T")

Call = tuple[str, Sequence[Any]]
"""One command for `RedisCore.batch`: (method name, arguments)."""

_CLUSTER_TROUBLE = (rexc.ClusterError, rexc.TryAgainError, rexc.RedisClusterException)
"""Raised by RedisCluster once its own retries are spent: ClusterError covers CLUSTERDOWN,
MASTERDOWN and "TTL exhausted" (a MOVED storm); RedisClusterException covers no reachable
node and a slot no node serves."""

_TRY_AGAIN_REPLIES = (rexc.OutOfMemoryError, rexc.ReadOnlyError)
"""Error replies redis-py parses into their own class, dropping the code from the message
(LOADING is a ConnectionError there): "not now", like `redis_lean.TRY_AGAIN_CODES`."""


def _translated(exc: BaseException) -> StoreError | None:
    """The store's error for a redis-py error (None: not one of redis-py's)."""
    if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError)):
        return StoreUnavailable(f"redis unavailable: {exc}")
    if isinstance(exc, _CLUSTER_TROUBLE):
        return StoreUnavailable(f"redis cluster unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, rexc.AskError):
        # RedisCluster follows MOVED and ASK itself, so one that escapes reached a
        # single-server client talking to a cluster node.
        return StoreUnavailable(
            f"redis answered {type(exc).__name__} {exc}: store.url is a Redis Cluster node, set store.cluster: true"
        )
    if isinstance(exc, _TRY_AGAIN_REPLIES):
        return StoreUnavailable(f"redis answered {type(exc).__name__}: {exc}")
    if isinstance(exc, rexc.ResponseError):
        return reply_error(str(exc))
    return None


class translate:  # noqa: N801 - used like the function-style context manager it replaced
    """`with translate():` redis-py errors become the store's: unreachable → StoreUnavailable,
    else StoreError. Scripts fail with `weir: <message>` for the caller's mistakes (unknown
    user, revoked key). A class, not @contextmanager: it wraps every store call on the
    request path, and a generator per use cost ~1 µs there."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None:
            mapped = _translated(exc)
            if mapped is not None:
                raise mapped from exc


_TRANSLATE = translate()


def guarded(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Decorate a store method so that redis-py errors surface as store errors."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with _TRANSLATE:
            return await fn(*args, **kwargs)

    return wrapper


def redact(url: str) -> str:
    """`url` without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _new_client(url: str, timeout: float, cluster: bool, max_connections: int) -> Any:
    """An unconnected client for `url`: one server, or a cluster seeded from that node."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # One spare per node for what RedisCluster runs on its own (topology refreshes).
        "max_connections": max_connections + 1,
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


_CLUSTER_SLOTS = 16384
"""Hash slots in a Redis Cluster; a usable cluster has a node for each."""


class RedisCore:
    """One client (a connection pool, or one pool per cluster node) with Weir's scripts."""

    def __init__(self, url: str, timeout: float, *, cluster: bool = False, max_connections: int = 64) -> None:
        """Configure; nothing connects until `open()`. `cluster` selects RedisCluster;
        at most `max_connections` commands (or pipelines) are in flight at once."""
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.url = url
        self.cluster = cluster
        #: Every script must keep its keys in one slot (true on a Cluster). On one server
        #: a settlement script also writes the global log index, saving a round trip.
        self.one_slot_scripts = cluster
        self._timeout = timeout
        self._limit = max_connections
        self._slots = Slots(max_connections)
        self._client: Any = None
        self._lean: LeanRedis | None = None
        self._scripts: dict[str, Any] = {}

    @property
    def client(self) -> Any:
        """The redis.asyncio client (typed loosely: see the module docstring)."""
        if self._client is None:
            raise StoreUnavailable("the Redis store is not open")
        return self._client

    @property
    def lean(self) -> bool:
        """True when the lean RESP connection (not redis-py) carries the commands."""
        return self._lean is not None

    def _lean_for_url(self) -> LeanRedis | None:
        if self.cluster:
            return None
        try:
            target = lean_target(parse_url(self.url))
        except ValueError as exc:
            raise StoreUnavailable(f"store.url: cannot use {redact(self.url)} for redis: {exc}") from exc
        if target is None:
            return None
        scripts = {name: Script.of(name, load_script(name)) for name in SCRIPTS}
        return LeanRedis(target, self._timeout, scripts)

    async def open(self) -> None:
        """Connect, check that Redis answers and register the scripts."""
        lean = self._lean_for_url()
        if lean is not None:
            try:
                await lean.open()
            except StoreUnavailable as exc:
                raise StoreUnavailable(f"store.url: cannot reach redis at {redact(self.url)}: {exc}") from exc
            self._lean, self._scripts = lean, lean.scripts
            self._slots = Slots(self._limit)
            return
        what = "redis cluster" if self.cluster else "redis"
        try:
            client = _new_client(self.url, self._timeout, self.cluster, self._limit)
        except (ValueError, rexc.RedisClusterException) as exc:  # a malformed url, or a db other than 0
            raise StoreUnavailable(f"store.url: cannot use {redact(self.url)} for {what}: {exc}") from exc
        try:
            # On a cluster this also discovers the nodes and slots (CLUSTER SLOTS).
            await client.ping()
        except (rexc.RedisError, rexc.RedisClusterException, OSError) as exc:
            await client.aclose()
            raise StoreUnavailable(f"store.url: cannot reach {what} at {redact(self.url)}: {exc}") from exc
        self._client = client
        self._slots = Slots(self._limit)  # bound to this open's event loop
        # register_script runs EVALSHA and, on NOSCRIPT (after SCRIPT FLUSH, a failover or,
        # on a cluster, a node that never saw the script), loads the source and retries once.
        self._scripts = {name: client.register_script(load_script(name)) for name in SCRIPTS}

    async def close(self) -> None:
        """Close the pool (idempotent)."""
        lean, self._lean = self._lean, None
        if lean is not None:
            await lean.close()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> bool:
        """True when the store is usable (what `/healthz` reports).

        One server: it answers PING. A cluster: PING proves nothing there, since a node
        answers it while no slot is served (the store's commands then fail with
        CLUSTERDOWN), so every primary the client knows must report `cluster_state:ok`
        with all 16384 slots assigned: then every user's hash slot has a node.
        """
        if self._lean is not None:
            return await self._lean.ping()
        try:
            if self.cluster:
                return await self._cluster_serves_every_slot()
            return bool(await self.client.ping())
        except (StoreError, rexc.RedisError, rexc.RedisClusterException, OSError):
            return False

    async def _cluster_serves_every_slot(self) -> bool:
        """`CLUSTER INFO` on every known primary, at once: all say ok and all slots assigned."""
        client = self.client
        infos = await asyncio.gather(
            *(client.execute_command("CLUSTER INFO", target_nodes=node) for node in client.get_primaries()),
            return_exceptions=True,  # an unreachable primary is an answer here, not an error
        )
        return bool(infos) and all(
            isinstance(info, dict)
            and info.get("cluster_state") == "ok"
            and int(info.get("cluster_slots_assigned", 0)) == _CLUSTER_SLOTS
            for info in infos
        )

    async def _wait(self) -> None:
        """Wait for one of the `max_connections` slots, at most the timeout (callers try
        `self._slots.take()` first: a free slot needs no wait)."""
        try:
            await self._slots.wait(self._timeout)
        except TimeoutError:
            raise StoreUnavailable(
                f"redis: no connection free within {self._timeout:g} s ({self._limit} commands in flight)"
            ) from None

    async def run(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run script `name` by SHA with `keys` and `args` (reloading it after NOSCRIPT)."""
        lean = self._lean
        if not self._slots.take():
            await self._wait()
        try:
            if lean is not None:
                return await lean.run(name, keys, args)
            return await self._scripts[name](keys=list(keys), args=list(args), client=self.client)
        finally:
            self._slots.release()

    async def call(self, name: str, *args: Any) -> Any:
        """Any single command, by its redis-py method name."""
        lean = self._lean
        if not self._slots.take():
            await self._wait()
        try:
            if lean is not None:
                return await lean.call(name, *args)
            return await getattr(self.client, name)(*args)
        finally:
            self._slots.release()

    async def hget(self, key: str, field: str) -> str | None:
        """HGET."""
        value: str | None = await self.call("hget", key, field)
        return value

    async def hgetall(self, key: str) -> dict[str, str]:
        """HGETALL."""
        value: dict[str, str] = await self.call("hgetall", key)
        return value

    async def smembers(self, key: str) -> set[str]:
        """SMEMBERS."""
        value: set[str] = await self.call("smembers", key)
        return value

    async def lrange(self, key: str) -> list[str]:
        """The whole list at `key`."""
        value: list[str] = await self.call("lrange", key, 0, -1)
        return value

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Several commands in one round trip per node (a pipeline without MULTI: slots may differ)."""
        if not calls:
            return []
        lean = self._lean
        if not self._slots.take():
            await self._wait()
        try:
            if lean is not None:
                return await lean.batch(calls)
            pipe = self.client.pipeline(transaction=False)
            for name, args in calls:
                getattr(pipe, name)(*args)
            replies: list[Any] = await pipe.execute()
            return replies
        finally:
            self._slots.release()

    async def batch_and_run(
        self, calls: Sequence[Call], name: str, keys: Sequence[str], args: Sequence[str | int]
    ) -> tuple[list[Any], Any]:
        """`batch(calls)`, then script `name`: one round trip on the lean connection (sent
        after the calls, so Redis runs it after them), two on redis-py."""
        lean = self._lean
        if lean is None:
            return await self.batch(calls), await self.run(name, keys, args)
        if not self._slots.take():
            await self._wait()
        try:
            return await lean.batch_and_run(calls, name, keys, args)
        finally:
            self._slots.release()

    async def scan(self, pattern: str) -> list[str]:
        """Every key matching `pattern` (on a cluster, on every primary)."""
        lean = self._lean
        if not self._slots.take():
            await self._wait()
        try:
            if lean is not None:
                return await lean.scan(pattern)
            return [key async for key in self.client.scan_iter(match=pattern, count=500)]
        finally:
            self._slots.release()
