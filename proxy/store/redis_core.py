"""The connection under `RedisStore`: lifecycle, error translation, scripts, typed commands.

redis-py's command methods are typed for both bytes and str replies and for both sync and
async clients; the client here always decodes to str, so the few commands the store uses
are wrapped with precise types once, and the rest of the store stays strictly typed.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc

from proxy.store.base import StoreError, StoreUnavailable
from proxy.store.redis_layout import SCRIPTS, load_script

_P = ParamSpec("_P")
_T = TypeVar("_T")

Call = tuple[str, Sequence[Any]]
"""One command for `RedisCore.batch`: (method name, arguments)."""


@contextmanager
def translate() -> Iterator[None]:
    """Turn redis-py errors into the store's: unreachable → StoreUnavailable, else StoreError.

    Scripts fail with `weir: <message>` for the caller's mistakes (unknown user, revoked key).
    """
    try:
        yield
    except (rexc.ConnectionError, rexc.TimeoutError) as exc:
        raise StoreUnavailable(f"redis unavailable: {exc}") from exc
    except rexc.ResponseError as exc:
        msg = str(exc)
        raise StoreError(msg[6:] if msg.startswith("weir: ") else f"redis error: {msg}") from exc


def guarded(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Decorate a store method so that redis-py errors surface as store errors."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with translate():
            return await fn(*args, **kwargs)

    return wrapper


def redact(url: str) -> str:
    """`url` without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisCore:
    """One client (a connection pool) with Weir's scripts registered on it."""

    def __init__(self, url: str, timeout: float) -> None:
        """Configure; nothing connects until `open()`."""
        self.url = url
        self._timeout = timeout
        self._client: Any = None
        self._scripts: dict[str, Any] = {}

    @property
    def client(self) -> Any:
        """The redis.asyncio client (typed loosely: see the module docstring)."""
        if self._client is None:
            raise StoreUnavailable("the Redis store is not open")
        return self._client

    async def open(self) -> None:
        """Connect, check that Redis answers and register the scripts."""
        client = aioredis.Redis.from_url(
            self.url, decode_responses=True, socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
        )
        try:
            await client.ping()
        except (rexc.RedisError, OSError) as exc:
            await client.aclose()
            raise StoreUnavailable(f"store.url: cannot reach redis at {redact(self.url)}: {exc}") from exc
        self._client = client
        # register_script runs EVALSHA and, on NOSCRIPT (after SCRIPT FLUSH or a failover),
        # loads the source and retries once.
        self._scripts = {name: client.register_script(load_script(name)) for name in SCRIPTS}

    async def close(self) -> None:
        """Close the pool (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(await self.client.ping())
        except (StoreError, rexc.RedisError, OSError):
            return False

    async def run(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run script `name` by SHA with `keys` and `args`."""
        client = self.client
        return await self._scripts[name](keys=list(keys), args=list(args), client=client)

    async def hget(self, key: str, field: str) -> str | None:
        """HGET."""
        value: str | None = await self.client.hget(key, field)
        return value

    async def hgetall(self, key: str) -> dict[str, str]:
        """HGETALL."""
        value: dict[str, str] = await self.client.hgetall(key)
        return value

    async def smembers(self, key: str) -> set[str]:
        """SMEMBERS."""
        value: set[str] = await self.client.smembers(key)
        return value

    async def lrange(self, key: str) -> list[str]:
        """The whole list at `key`."""
        value: list[str] = await self.client.lrange(key, 0, -1)
        return value

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Several commands in one round trip (a pipeline without MULTI: slots may differ)."""
        if not calls:
            return []
        pipe = self.client.pipeline(transaction=False)
        for name, args in calls:
            getattr(pipe, name)(*args)
        replies: list[Any] = await pipe.execute()
        return replies
