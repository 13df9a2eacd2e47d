"""The connection layer of `SQLiteStore`: pragmas, migrations, transactions, error mapping.

One connection per store object. Every store operation is one synchronous function that
`run()` executes whole, between `BEGIN` and `COMMIT`: one transaction per operation, never
one await per statement. Only one transaction of a store is under way at a time, so they
never interleave and need no asyncio lock. Calls that arrive while a transaction is on its
way queue up and go together as one shared transaction (group commit, run by
`plugins.billing.store.sqlite.batch.run_batch`): under load, a batch of requests costs one commit, not one
each, and its holds and settlements are written set by set (`plugins.billing.store.sqlite.group_commit`).

A short call that finds the store idle (`inline=True`: a hold, a capture, a key lookup) runs
right on the event loop instead. With `synchronous` NORMAL or OFF a commit is a few page
writes to the OS and no fsync, so the transaction takes tens of microseconds, less than the
two thread wake-ups of a hop (which cost more than the SQL on a VM: ~60 µs of CPU per
request in profiles). It runs with a busy timeout of 0, so it never waits on the loop: when
another connection holds the write lock, it rolls back and goes to the worker thread, which
waits up to `busy_timeout` as before. With `synchronous` FULL or EXTRA every commit fsyncs,
so nothing runs inline.

Every read-modify-write starts with `BEGIN IMMEDIATE`, which takes SQLite's write lock before
the first read: two processes (or two store objects) on one file therefore never decide on the
same stale balance. WAL lets readers proceed meanwhile, and `busy_timeout` makes a writer wait
for the lock instead of failing at once. An `OperationalError` (locked, I/O, not a database)
becomes `StoreUnavailable`; a constraint violation becomes `StoreError`.

Checkpoints (copying the WAL back into the database, with an fsync) are the slow part of WAL
mode, and SQLite runs them inside the commit that crosses `wal_autocheckpoint` pages: every
~100th transaction stalled for milliseconds. A background task on a second connection does
that work instead (see `_checkpoints`); SQLite's own autocheckpoint stays as a bound.

A caller cancelled while its call is still queued is dropped from the batch. Once the call
is on the worker thread, cancelling the caller does not undo it: the transaction commits or
rolls back as a whole, and the caller only misses the answer (every money step is idempotent
by request id, so a retry finds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar, cast

import aiosqlite

from plugins.billing.store.base import StoreError, StoreUnavailable
from plugins.billing.store.sqlite import schema
from plugins.billing.store.sqlite.batch import Bulk, Outcome, is_busy, run_batch
from plugins.billing.store.sqlite.ledger import Db
from plugins.billing.tuples import new_tuple

T = TypeVar("T")

_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
_BEGIN = {"IMMEDIATE": "BEGIN IMMEDIATE", "DEFERRED": "BEGIN DEFERRED"}
# 16 MiB of page cache (negative means KiB): the hot rows and index pages of a busy proxy
# stay in memory instead of being re-read through the OS on every transaction.
_CACHE_KIB = 16384
# With the background checkpointer running, a commit-time checkpoint happens once per this
# many WAL pages (about 40 MB) of sustained writes, when the WAL could not start over between
# transactions; it bounds the file. SQLite's default, 1000, stalled one commit in ~100.
_WAL_BOUND_PAGES = 10000
# Calls queued while a batch runs go into the next one, up to this many: enough to share
# one commit among a busy proxy's concurrent requests, small enough that a batch holds
# SQLite's write lock for a few milliseconds at most.
_BATCH_MAX = 64


def _configure(conn: Db, busy_ms: int, synchronous: str) -> None:
    """On the worker thread: the per-connection pragmas (outside any transaction: WAL needs that)."""
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
    conn.execute("PRAGMA temp_store = MEMORY")


def _bound_wal(conn: Db) -> None:
    """On the worker thread: leave checkpoints to the background task, within a bound."""
    conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_BOUND_PAGES}")
    # A WAL that did grow large is cut back when it restarts, instead of keeping its size.
    conn.execute(f"PRAGMA journal_size_limit = {_WAL_BOUND_PAGES * 4096}")


def require_worker_api() -> None:
    """Raise RuntimeError unless aiosqlite offers the private worker-thread API `run()` uses."""
    execute = getattr(aiosqlite.Connection, "_execute", None)
    conn = getattr(aiosqlite.Connection, "_conn", None)
    if execute is None or not isinstance(conn, property):
        raise RuntimeError(
            f"aiosqlite {getattr(aiosqlite, '__version__', '?')} lacks Connection._execute/_conn,"
            " which SQLiteStore needs: install aiosqlite>=0.20,<0.23 (the range pyproject.toml pins)"
        )


class SQLiteConnection:
    """One aiosqlite connection with its pragmas, migrations and transaction discipline.

    `SQLiteStore` builds the accounting on top; this class knows nothing about money.
    """

    #: Set-at-a-time forms of the functions passed to `run` (see `plugins.billing.store.sqlite.batch.run_batch`).
    bulk: ClassVar[Bulk] = {}

    def __init__(
        self,
        path: str,
        *,
        clock: Callable[[], float] = time.time,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 5000,
        checkpoint_every: float = 0.05,
    ) -> None:
        """Configure; nothing touches the file until `open()`.

        `checkpoint_every` seconds between background WAL checkpoints; 0 leaves checkpoints
        to SQLite (inside commits, every 1000 pages).
        """
        if synchronous.upper() not in _SYNC_MODES:
            raise ValueError(f"store.synchronous: expected one of {', '.join(_SYNC_MODES)}")
        self.path = path
        self._clock = clock
        self._synchronous = synchronous.upper()
        self._busy_ms = int(busy_timeout_ms)
        self._checkpoint_every = float(checkpoint_every)
        self._db: aiosqlite.Connection | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._queue: deque[_Call] = deque()
        self._busy = False  # a transaction is under way (inline or on the worker thread)
        self._drainer: asyncio.Task[None] | None = None
        # Inline commits must not fsync on the loop thread (see the module docstring).
        self._inline = self._synchronous in ("OFF", "NORMAL")
        self._busy_now = self._busy_ms  # the connection's busy timeout as last set
        self._writes = 0  # write transactions begun, for the checkpointer to skip idle rounds

    async def open(self) -> None:
        """Connect, set the pragmas and apply pending migrations."""
        require_worker_api()
        try:
            # Used from the loop thread too (inline calls), never by two threads at once.
            db = await aiosqlite.connect(
                self.path, isolation_level=None, timeout=self._busy_ms / 1000, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store.path: cannot open SQLite database {self.path!r}: {exc}") from exc
        self._db = db
        try:
            await self._hop(_configure, self._busy_ms, self._synchronous)
            await self.run(schema.migrate)
            if self._checkpoint_every > 0:
                await self._start_checkpoints()
        except (sqlite3.Error, StoreError) as exc:
            await self.close()
            raise StoreUnavailable(f"store.path: cannot use SQLite database {self.path!r}: {exc}") from exc

    async def _start_checkpoints(self) -> None:
        await self._hop(_bound_wal)
        ck = await aiosqlite.connect(self.path, isolation_level=None, timeout=0)
        self._checkpointer = asyncio.create_task(self._checkpoints(ck), name=f"sqlite-checkpoints {self.path}")

    async def _checkpoints(self, ck: aiosqlite.Connection) -> None:
        """Every `checkpoint_every` s, copy the WAL into the database on `ck`'s own thread.

        A PASSIVE checkpoint runs beside the writers without taking their lock, so its
        fsyncs never delay a transaction. A round after which this store wrote nothing is
        skipped, so an idle store costs no thread wake-ups. Under a sustained write load the
        WAL can only start over inside a commit; the commit-time checkpoint at
        `_WAL_BOUND_PAGES` then finds nearly everything copied already.
        """
        copied = -1
        try:
            while True:
                await asyncio.sleep(self._checkpoint_every)
                if self._writes == copied:
                    continue
                copied = self._writes
                with contextlib.suppress(sqlite3.Error):  # locked or busy: the next round retries
                    await ck.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await ck.close()

    async def close(self) -> None:
        """Close the connection (idempotent); functions already queued still run first."""
        task, self._checkpointer = self._checkpointer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await db.close()

    async def ping(self) -> bool:
        """True when a trivial query answers."""
        try:
            await self.run(_select_one, mode="DEFERRED", inline=True)
        except StoreError:
            return False
        return True

    async def run(self, fn: Callable[..., T], *args: object, mode: str = "IMMEDIATE", inline: bool = False) -> T:
        """`fn(conn, *args)` in one transaction, awaited once.

        `BEGIN IMMEDIATE` unless `mode` is "DEFERRED" (reads); sqlite3 errors are mapped.
        When no batch is under way the call runs alone: on the event loop when `inline`
        (for short, bounded transactions only) and the store allows it, else on the worker
        thread. Calls made meanwhile queue up and go together as the next batch (group
        commit, see `sqlite_tx.run_batch`), so concurrent callers share a commit instead of one each.
        """
        begin = _BEGIN[mode]
        if mode == "IMMEDIATE":
            self._writes += 1
        inline = inline and self._inline
        call = new_tuple(_Call, (begin, fn, args, asyncio.get_running_loop().create_future(), inline))
        if self._busy:
            self._queue.append(call)
            done: T = await call.done  # (no typing.cast on this path: it is a Python call)
            return done
        self._busy = True
        try:
            # One turn of the loop lets the callers that are ready now queue behind this one,
            # so they share its batch instead of each waiting for a batch of their own.
            await asyncio.sleep(0)
        except BaseException:
            self._next_batch()
            raise
        if self._queue:
            self._queue.appendleft(call)
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
            return cast(T, await call.done)
        try:  # alone: inline, or straight to the worker without a task in between
            [outcome] = await self._run_batch([call])
        finally:
            self._next_batch()
        ok, value = outcome
        if not ok:
            raise cast(BaseException, value)
        return cast(T, value)

    def _try_inline(
        self, begin: str, calls: Sequence[tuple[Callable[..., object], tuple[object, ...]]]
    ) -> list[Outcome | None]:
        """Run calls in one transaction on the loop thread without waiting for a lock.

        Each outcome is None when SQLite was busy (that call, or the whole transaction, rolled
        back: the caller sends it to the worker instead).
        """
        db = self._db
        if db is None:
            raise StoreUnavailable("the SQLite store is not open")
        busy_ms = None if self._busy_now == 0 else 0
        self._busy_now = 0
        try:
            outcomes = run_batch(db._conn, begin, calls, busy_ms, self.bulk)
        except StoreUnavailable as exc:
            if is_busy(exc):
                return [None] * len(calls)
            raise
        return [None if not o[0] and is_busy(o[1]) else o for o in outcomes]

    def _busy_for_worker(self) -> int | None:
        """The busy timeout a worker batch must set first (None: already in place)."""
        if self._busy_now == self._busy_ms:
            return None
        self._busy_now = self._busy_ms
        return self._busy_ms

    def _next_batch(self) -> None:
        """Send what queued meanwhile as the next batch, or mark the connection idle."""
        if self._queue:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        """Run the queued calls batch by batch until the queue is empty."""
        calls: list[_Call] = []
        try:
            while self._queue:
                calls = self._take()
                if not calls:
                    continue
                outcomes = await self._run_batch(calls)
                for call, (ok, value) in zip(calls, outcomes):
                    if call.done.done():
                        continue
                    if ok:
                        call.done.set_result(value)
                    else:
                        call.done.set_exception(cast(BaseException, value))
                calls = []
        finally:  # normally nothing is left; after a cancellation every waiter must hear of it
            self._busy = False
            for call in [*calls, *self._queue]:
                call.done.cancel()
            self._queue.clear()

    async def _run_batch(self, calls: list[_Call]) -> list[Outcome]:
        """One batch: inline when every call may run on the loop, else (or where SQLite was
        busy) on the worker thread. A batch error becomes every remaining caller's outcome."""
        pairs = [(c.fn, c.args) for c in calls]
        try:
            tried: list[Outcome | None] = (
                self._try_inline(calls[0].begin, pairs) if calls[0].inline else [None] * len(calls)
            )
            left = [i for i, o in enumerate(tried) if o is None]
            if left:
                done = await self._hop(
                    run_batch, calls[0].begin, [pairs[i] for i in left], self._busy_for_worker(), self.bulk
                )
                for i, o in zip(left, done):
                    tried[i] = o
        except Exception as exc:
            return [(False, exc)] * len(calls)
        return cast(list[Outcome], tried)

    def _take(self) -> list[_Call]:
        """The next batch: queued calls of one mode, in order, skipping cancelled callers."""
        first = self._queue.popleft()
        batch = [first]
        while (
            self._queue
            and len(batch) < _BATCH_MAX
            and self._queue[0].begin == first.begin
            and self._queue[0].inline == first.inline
        ):
            batch.append(self._queue.popleft())
        return [c for c in batch if not c.done.cancelled()]

    async def _hop(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(sqlite3_connection, *args)` on the worker thread.

        aiosqlite has no public way to run a callable on its worker thread, and calling
        `execute()` per statement costs a thread round trip each (about 20 per hold+capture).
        Its private `Connection._execute(fn)` queues a callable to that thread and `_conn` is
        the `sqlite3.Connection` it owns; this is the only place Weir uses them. The
        version range is pinned in pyproject.toml, `open()` checks that the API exists,
        and tests/plugins/billing/store/test_sqlite_only.py fails loudly if it disappears.
        """
        db = self._db
        if db is None:
            raise StoreUnavailable("the SQLite store is not open")
        raw = db._conn
        result = await cast(Any, db)._execute(fn, raw, *args)
        return cast(T, result)


class _Call(NamedTuple):
    """A call waiting for the next batch, and the future its caller awaits (a NamedTuple:
    one is made per store call, and a frozen dataclass cost three times as much)."""

    begin: str
    fn: Callable[..., object]
    args: tuple[object, ...]
    done: asyncio.Future[Any]
    inline: bool = False


def _select_one(conn: Db) -> None:
    conn.execute("SELECT 1").fetchone()
