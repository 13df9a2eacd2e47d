"""`RedisStore`'s commands on the lean RESP connection (`plugins.billing.store.redis.resp`), for one server.

`RedisCore` uses this instead of redis-py when `store.url` names a single server over plain
TCP or a unix socket (the common deployment, and the one the request path is measured on).
It offers the same calls as the redis-py path, with the same reply shapes as redis-py with
`decode_responses=True` (HGETALL a dict, SMEMBERS a set, HSETNX a bool, ...), and the same
error translation: an unreachable server is `StoreUnavailable`, an error reply `StoreError`
(a script's `weir: <message>` without its prefix), except the replies that say "try again"
(`LOADING`, `BUSY`, `OOM`, ...: `TRY_AGAIN_CODES`), which are `StoreUnavailable` too.

Scripts run by SHA; after a `NOSCRIPT` (a `SCRIPT FLUSH`, a restart, a failover) the source
is loaded and the call retried once, as redis-py's registered scripts do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from plugins.billing.store.base import StoreError, StoreUnavailable
from plugins.billing.store.redis.resp import EvalPacker, RespClient, RespConnectionError, RespError, Target

__all__ = ["LeanRedis", "Script", "lean_target", "reply_error"]

_LEAN_URL_PARTS = frozenset({"host", "port", "db", "username", "password", "path", "connection_class"})


def lean_target(options: Mapping[str, Any]) -> Target | None:
    """A `Target` for redis-py's parsed url `options`, or None when the url asks for
    something the lean connection does not do (TLS, url query options)."""
    if not set(options) <= _LEAN_URL_PARTS:
        return None
    cls = options.get("connection_class")
    if cls is not None and cls.__name__ != "UnixDomainSocketConnection":
        return None
    return Target(
        host=str(options.get("host", "127.0.0.1")),
        port=int(options.get("port", 6379)),
        path=options.get("path"),
        db=int(options.get("db", 0) or 0),
        username=options.get("username"),
        password=options.get("password"),
    )


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1 (what EVALSHA names it by)."""

    name: str
    source: str
    sha: str

    @classmethod
    def of(cls, name: str, source: str) -> Script:
        """The script `name` with its digest computed locally (the same as SCRIPT LOAD's)."""
        return cls(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


#: Error codes (a reply's first word) that mean "not now": the server is loading its data,
#: running a long script, out of memory, a replica or without its primary, a cluster
#: without all its slots, or unable to persist. The same call can succeed later, so they
#: are unavailability: refused with 503 at hold time, retried at settlement.
TRY_AGAIN_CODES = frozenset(
    {
        "LOADING",
        "BUSY",
        "OOM",
        "MASTERDOWN",
        "READONLY",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOREPLICAS",
        "MISCONF",
    }
)


def reply_error(msg: str) -> StoreError:
    """The store's error for a Redis error reply `msg`: `StoreUnavailable` when the reply
    says "try again" (`TRY_AGAIN_CODES`, or a cluster redirection reaching a client that
    cannot follow it), else a definitive `StoreError` (a script's `weir: <message>` without
    its prefix)."""
    code = msg.split(" ", 1)[0]
    if code in TRY_AGAIN_CODES:
        return StoreUnavailable(f"redis answered {msg}")
    if code in ("MOVED", "ASK"):  # a cluster node: this url needs the cluster client
        return StoreUnavailable(f"redis answered {msg}: store.url is a Redis Cluster node, set store.cluster: true")
    return StoreError(msg[6:] if msg.startswith("weir: ") else f"redis error: {msg}")


def _error(exc: RespError) -> StoreError:
    return reply_error(str(exc))


def _unavailable(exc: RespConnectionError) -> StoreUnavailable:
    return StoreUnavailable(f"redis unavailable: {exc}")


class _Translated:
    """`with _TRANSLATED:` the connection's errors become the store's (unreachable, or an
    error reply). A class rather than @contextmanager: it wraps every command on the request
    path, and one stateless instance costs no generator per use (0.2 against 0.8 µs)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, RespError):
            raise _error(exc) from exc
        if isinstance(exc, RespConnectionError):
            raise _unavailable(exc) from exc


_TRANSLATED = _Translated()


def _noscript(exc: RespError) -> bool:
    return str(exc).startswith("NOSCRIPT")


def _pairs(reply: list[str]) -> dict[str, str]:
    return dict(zip(reply[::2], reply[1::2]))


def _scored(reply: list[str]) -> list[tuple[str, float]]:
    return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]


# Reply shapes where redis-py (decode_responses=True) does not hand back the raw reply.
_SHAPES: dict[str, Callable[[Any], Any]] = {
    "hgetall": _pairs,
    "smembers": set,
    "hsetnx": bool,
    "zrevrangebyscore": _scored,
}


def _command(name: str, args: Sequence[Any]) -> tuple[Any, ...]:
    """The RESP command for redis-py method `name` called with positional `args`."""
    if name == "zrevrangebyscore":  # (key, max, min, start, num, withscores)
        key, hi, lo, start, num, withscores = args
        return ("ZREVRANGEBYSCORE", key, hi, lo, "LIMIT", start, num, *(("WITHSCORES",) if withscores else ()))
    return (name.upper(), *args)


class LeanRedis:
    """The commands `RedisCore` needs, on one pipelined connection."""

    def __init__(self, target: Target, timeout: float, scripts: dict[str, Script]) -> None:
        """Configure; `open()` connects."""
        self._client = RespClient(target, timeout)
        self._packer = EvalPacker()
        self.scripts = scripts

    async def open(self) -> None:
        """Connect and check that the server answers; StoreUnavailable (with the reason) if not."""
        try:
            await self._client.connect()
            await self._client.execute("PING")
        except RespConnectionError as exc:
            await self._client.close()
            raise _unavailable(exc) from exc
        except RespError as exc:
            await self._client.close()
            raise StoreUnavailable(f"redis refused PING: {exc}") from exc

    async def close(self) -> None:
        """Close the connection."""
        await self._client.close()

    async def ping(self) -> bool:
        """True when the server answers PING."""
        try:
            return bool(await self._client.execute("PING") == "PONG")
        except (RespConnectionError, RespError):
            return False

    async def _reloaded(self, name: str, command: bytes) -> Any:
        """After NOSCRIPT: load script `name` and run `command` again (once)."""
        await self._client.execute("SCRIPT", "LOAD", self.scripts[name].source)
        return await self._client.execute_packed(command)

    async def run(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """EVALSHA script `name`; after NOSCRIPT, SCRIPT LOAD it and retry once."""
        command = self._packer.evalsha(self.scripts[name].sha, keys, args)
        with _TRANSLATED:
            try:
                return await self._client.send_packed(command)
            except RespError as exc:
                if not _noscript(exc):
                    raise
            return await self._reloaded(name, command)

    async def batch_and_run(
        self, calls: Sequence[tuple[str, Sequence[Any]]], name: str, keys: Sequence[str], args: Sequence[str | int]
    ) -> tuple[list[Any], Any]:
        """`batch(calls)` and then script `name`, in one write (NOSCRIPT: reloaded, rerun)."""
        command = self._packer.evalsha(self.scripts[name].sha, keys, args)
        with _TRANSLATED:
            replies = await self._client.pipeline([_command(n, a) for n, a in calls], command)
            last = replies.pop()
            if isinstance(last, RespError):
                if not _noscript(last):
                    raise last
                last = await self._reloaded(name, command)
        return self._shaped(calls, replies), last

    async def call(self, name: str, *args: Any) -> Any:
        """One command, by its redis-py method name, with redis-py's reply shape."""
        with _TRANSLATED:
            reply = await self._client.execute(*_command(name, args))
        shape = _SHAPES.get(name)
        return reply if shape is None else shape(reply)

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several commands in one write; the first error reply is raised (as redis-py's
        pipeline does), after every reply has been read."""
        with _TRANSLATED:
            replies = await self._client.pipeline([_command(name, args) for name, args in calls])
        return self._shaped(calls, replies)

    @staticmethod
    def _shaped(calls: Sequence[tuple[str, Sequence[Any]]], replies: list[Any]) -> list[Any]:
        """Replies in redis-py's shapes; the first error reply is raised."""
        out = []
        for (name, _), reply in zip(calls, replies):
            if isinstance(reply, RespError):
                raise _error(reply)
            shape = _SHAPES.get(name)
            out.append(reply if shape is None else shape(reply))
        return out

    async def scan(self, pattern: str) -> list[str]:
        """Every key matching `pattern` (SCAN until the cursor comes back to 0)."""
        found: list[str] = []
        cursor = "0"
        while True:
            with _TRANSLATED:
                cursor, keys = await self._client.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 500)
            found += keys
            if cursor == "0":
                return found
