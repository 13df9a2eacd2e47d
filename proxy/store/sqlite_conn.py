"""The connection layer of `SQLiteStore`: pragmas, migrations, transactions, error mapping.

One connection per store object, serialised by an asyncio lock, because a connection carries
one transaction at a time. Every read-modify-write starts with `BEGIN IMMEDIATE`, which takes
SQLite's write lock before the first read: two processes (or two store objects) on one file
therefore never decide on the same stale balance. WAL lets readers proceed meanwhile, and
`busy_timeout` makes a writer wait for the lock instead of failing at once. An
`OperationalError` (locked, I/O, not a database) becomes `StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable

import aiosqlite

from proxy.store import sqlite_schema as schema
from proxy.store.base import StoreError, StoreUnavailable
from proxy.store.sqlite_ledger import Db, fetch_one

_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


def _mapped(exc: sqlite3.Error) -> StoreError:
    """A constraint violation is the caller's error; anything else means the store is unusable."""
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreError(f"constraint violated: {exc}")
    return StoreUnavailable(f"sqlite: {exc}")


class SQLiteConnection:
    """One aiosqlite connection with its pragmas, migrations and transaction discipline.

    `SQLiteStore` builds the accounting on top; this class knows nothing about money.
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Callable[[], float] = time.time,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 5000,
    ) -> None:
        """Configure; nothing touches the file until `open()`."""
        if synchronous.upper() not in _SYNC_MODES:
            raise ValueError(f"store.synchronous: expected one of {', '.join(_SYNC_MODES)}")
        self.path = path
        self._clock = clock
        self._synchronous = synchronous.upper()
        self._busy_ms = int(busy_timeout_ms)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Connect, set the pragmas and apply pending migrations."""
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None, timeout=self._busy_ms / 1000)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store.path: cannot open SQLite database {self.path!r}: {exc}") from exc
        db.row_factory = sqlite3.Row
        self._db = db
        try:
            await db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA synchronous = {self._synchronous}")
            await db.execute("PRAGMA foreign_keys = ON")
            await self._migrate()
        except (sqlite3.Error, StoreError) as exc:
            await self.close()
            raise StoreUnavailable(f"store.path: cannot use SQLite database {self.path!r}: {exc}") from exc

    async def _migrate(self) -> None:
        async with self._tx() as db:
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = await fetch_one(db, "SELECT MAX(version) AS v FROM schema_version")
            current = (row["v"] if row else None) or 0
            for version, script in schema.MIGRATIONS:
                if version > current:
                    for statement in _statements(script):
                        await db.execute(statement)
                    await db.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await db.close()

    async def ping(self) -> bool:
        """True when a trivial query answers."""
        try:
            async with self._tx("DEFERRED") as db:
                await fetch_one(db, "SELECT 1")
        except StoreError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def _tx(self, mode: str = "IMMEDIATE") -> AsyncIterator[Db]:
        """One transaction on this store's connection; rolled back on any exception."""
        async with self._lock:
            db = self._db
            if db is None:
                raise StoreUnavailable("the SQLite store is not open")
            try:
                await db.execute(f"BEGIN {mode}")
            except sqlite3.Error as exc:
                raise _mapped(exc) from exc
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _mapped(exc) from exc
                raise


def _statements(script: str) -> Iterable[str]:
    """Split a migration script into complete statements (triggers contain semicolons)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()
