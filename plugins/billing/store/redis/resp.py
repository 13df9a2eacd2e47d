"""A lean, pipelined RESP2 connection to one Redis server: the request path of `RedisStore`.

Why not redis-py here: in profiles of a billed request on Redis, redis.asyncio spent about
130 µs of CPU per round trip (connection-pool checkout, a `wait_for` and a timeout context
per command, retry wrappers, Python-level packing), over half of the proxy's whole CPU per
request. This connection does the same work with hiredis (already a dependency: its C
`pack_command` encodes, its `Reader` parses) and asyncio's `Protocol`:

* one TCP (or unix socket) connection carries every command, pipelined: a command's
  future is queued and its bytes go out at the end of the event loop's turn, together with
  every other command of that turn (one send); replies arrive in order and resolve the
  futures in order;
* a command that gets no reply within `timeout` fails, and with it the connection, so
  every command in flight fails too (their replies could no longer be matched): callers
  see `RespConnectionError`, and the next command reconnects;
* a caller that stops waiting (cancelled) leaves its slot in the queue; its reply is read
  and dropped, so the replies behind it still reach their own callers.

Error replies come back as `RespError` values raised to the caller. Only what
`RedisStore` needs is here: no pub/sub, no RESP3, no TLS, no cluster (those configurations
use redis-py, see `plugins.billing.store.redis.client`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import hiredis

from plugins.billing.tuples import new_tuple

__all__ = ["EvalPacker", "RespClient", "RespConnectionError", "RespError", "Target"]


def _pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP (hiredis's C encoder; its stubs mistype the argument tuple)."""
    packed: bytes = cast(Any, hiredis).pack_command(args)
    return packed


_KEYS_KEPT = 4096


class EvalPacker:
    """EVALSHA commands in RESP, reusing the encoding of what repeats.

    hiredis encodes each argument at about a thousand instructions (a `sprintf` for its
    length among them), and a billed request sends some fifty, most of them the same key
    names request after request. Here the script's name and SHA and each key name are
    encoded once and remembered (at most `_KEYS_KEPT` key names: then they are forgotten
    and encoded again); only the arguments are encoded per call. The bytes are those of
    `hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))`.
    """

    __slots__ = ("_keys", "_heads")

    def __init__(self) -> None:
        """Start with nothing remembered."""
        self._keys: dict[str, bytes] = {}
        self._heads: dict[tuple[str, int], bytes] = {}

    def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[str | int]) -> bytes:
        """The packed `EVALSHA sha len(keys) *keys *args`."""
        head = self._heads.get((sha, len(keys)))
        if head is None:
            head = self._heads[(sha, len(keys))] = _pack(("EVALSHA", sha, len(keys)))[4:]
        memo = self._keys
        packed: list[Any] = list(map(memo.get, keys))  # in C: no Python loop for what is remembered
        if None in packed:
            if len(memo) >= _KEYS_KEPT:
                memo.clear()
            for i, key in enumerate(keys):
                if packed[i] is None:
                    packed[i] = memo[key] = _pack((key,))[4:]
        tail = _pack(tuple(args)) if args else b"*0\r\n"
        return b"".join((b"*%d\r\n" % (3 + len(keys) + len(args)), head, *packed, tail[tail.index(b"\n") + 1 :]))


class RespError(Exception):
    """An error reply from the server (`-ERR ...`, `-NOSCRIPT ...`, a script's error)."""


class RespConnectionError(Exception):
    """The server could not be reached, the connection broke, or a reply timed out."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to connect: TCP `host:port`, or a unix socket `path`."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None


class _Waiter(NamedTuple):
    """What waits for replies: one command's future (`replies` None), or a batch's, which
    gets the list once `expected` replies are in."""

    fut: asyncio.Future[Any]
    sent: float
    replies: list[Any] | None
    expected: int


class _Protocol(asyncio.Protocol):
    """One connection: writes commands, matches replies to futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader(encoding="utf-8")
        self._pending: deque[_Waiter] = deque()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None
        self.broken: BaseException | None = None

    # asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (uvloop's transports do not subclass asyncio's: no isinstance)."""
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Parse what arrived; resolve one waiting future per complete reply."""
        reader, pending = self._reader, self._pending
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if not pending:
                    raise RespConnectionError("redis sent a reply nobody asked for")
                waiter = pending[0]
                fut, replies = waiter.fut, waiter.replies
                if replies is None:  # one command
                    pending.popleft()
                    if fut.done():  # its caller stopped waiting
                        continue
                    if isinstance(reply, hiredis.ReplyError):
                        fut.set_exception(RespError(str(reply)))
                    else:
                        fut.set_result(reply)
                    continue
                replies.append(RespError(str(reply)) if isinstance(reply, hiredis.ReplyError) else reply)
                if len(replies) == waiter.expected:  # a batch, complete
                    pending.popleft()
                    if not fut.done():
                        fut.set_result(replies)
        except (hiredis.ProtocolError, RespConnectionError) as exc:
            self.fail(RespConnectionError(f"redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail everything in flight."""
        self.fail(RespConnectionError(f"redis connection lost: {exc}" if exc else "redis closed the connection"))

    # use -----------------------------------------------------------------------------
    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; its future gets the reply (an error reply: RespError)."""
        return self._queue(packed, None, 1)

    def send_batch(self, packed: list[bytes]) -> asyncio.Future[list[Any]]:
        """Queue several packed commands; one future gets every reply, in order, with an
        error reply as a RespError in its place (one future instead of one per command)."""
        return self._queue(b"".join(packed), [], len(packed))

    def _queue(self, packed: bytes, replies: list[Any] | None, expected: int) -> asyncio.Future[Any]:
        if self.broken is not None:
            raise RespConnectionError(str(self.broken))
        fut: asyncio.Future[Any] = self._loop.create_future()
        now = self._loop.time()
        self._pending.append(new_tuple(_Waiter, (fut, now, replies, expected)))
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(packed)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(now + self._timeout, self._check)
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and self.broken is None and out:
            self._transport.write(b"".join(out))

    def _check(self) -> None:
        """The oldest command must get its reply within the timeout, else the connection fails."""
        self._watchdog = None
        if not self._pending or self.broken is not None:
            return
        started = self._pending[0].sent
        deadline = started + self._timeout
        if self._loop.time() >= deadline:
            self.fail(RespConnectionError(f"redis did not answer within {self._timeout:g} s"))
            return
        self._watchdog = self._loop.call_at(deadline, self._check)

    def fail(self, exc: RespConnectionError) -> None:
        """Mark the connection broken, fail every waiting future and close the socket."""
        if self.broken is None:
            self.broken = exc
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._pending:
            fut = self._pending.popleft().fut
            if not fut.done():
                fut.set_exception(RespConnectionError(str(exc)))
        self._out = []
        if self._transport is not None:
            self._transport.close()


class RespClient:
    """Commands to one Redis server over one pipelined connection, reconnecting on demand."""

    def __init__(self, target: Target, timeout: float = 5.0) -> None:
        """Configure; nothing connects until the first command (or `connect()`)."""
        self.target = target
        self.timeout = timeout
        self._proto: _Protocol | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Connect now (authenticate and select the database); RespConnectionError if that fails."""
        await self._connection()

    async def close(self) -> None:
        """Close the connection; commands in flight fail."""
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.fail(RespConnectionError("the Redis store was closed"))

    async def execute(self, *args: str | int | float) -> Any:
        """One command; its reply (str, int, None or a list of those). RespError for an
        error reply, RespConnectionError when the server cannot answer."""
        proto = self._proto
        if proto is None or proto.broken is not None:
            proto = await self._connection()
        return await proto.send(_pack(args))

    def send_packed(self, packed: bytes) -> Awaitable[Any]:
        """What `execute_packed` returns, without a coroutine of its own once connected:
        the reply's future."""
        proto = self._proto
        if proto is None or proto.broken is not None:
            return self.execute_packed(packed)
        return proto.send(packed)

    async def execute_packed(self, packed: bytes) -> Any:
        """`execute` for a command packed already (see `EvalPacker`)."""
        proto = self._proto
        if proto is None or proto.broken is not None:
            proto = await self._connection()
        return await proto.send(packed)

    async def pipeline(self, commands: list[tuple[str | int | float, ...]], packed: bytes = b"") -> list[Any]:
        """Several commands in one write; each reply, or the RespError it got, in order;
        `packed`, a command packed already, goes last."""
        proto = self._proto
        if proto is None or proto.broken is not None:
            proto = await self._connection()
        replies: list[Any] = await proto.send_batch([*(_pack(c) for c in commands), *((packed,) if packed else ())])
        return replies

    async def _connection(self) -> _Protocol:
        """The live connection, opening one if needed (concurrent callers share one attempt)."""
        async with self._lock:
            if self._proto is None or self._proto.broken is not None:
                self._proto = await self._open()
            return self._proto

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        t = self.target
        proto: _Protocol | None = None
        try:
            async with asyncio.timeout(self.timeout):
                if t.path is not None:
                    _, proto = await loop.create_unix_connection(lambda: _Protocol(loop, self.timeout), t.path)
                else:
                    _, proto = await loop.create_connection(lambda: _Protocol(loop, self.timeout), t.host, t.port)
                setup: list[tuple[str | int, ...]] = []
                if t.password is not None:
                    setup.append(("AUTH", t.username, t.password) if t.username else ("AUTH", t.password))
                if t.db:
                    setup.append(("SELECT", t.db))
                for fut in [proto.send(_pack(c)) for c in setup]:
                    await fut
            return proto
        except BaseException as exc:
            if proto is not None:
                proto.fail(RespConnectionError("connection setup failed"))
            if isinstance(exc, TimeoutError):
                raise RespConnectionError(f"redis: no connection within {self.timeout:g} s") from None
            if isinstance(exc, RespError):
                raise RespConnectionError(f"redis refused the connection setup: {exc}") from exc
            if isinstance(exc, OSError):
                raise RespConnectionError(f"redis: cannot connect: {exc}") from exc
            raise
