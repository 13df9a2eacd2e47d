"""One batch of store calls as one SQLite transaction (the core of `SQLiteConnection`'s group commit).

Pure functions of a `sqlite3.Connection`: they run on aiosqlite's worker thread or inline
on the event loop, whichever `SQLiteConnection` chose, and know nothing about money. Error
mapping: an `OperationalError` (locked, I/O, not a database) becomes `StoreUnavailable`; a
constraint violation becomes `StoreError`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from plugins.billing.store.base import StoreError, StoreUnavailable
from plugins.billing.store.sqlite.ledger import Db

__all__ = ["Bulk", "Outcome", "is_busy", "mapped", "run_batch"]


def mapped(exc: sqlite3.Error) -> StoreError:
    """A constraint violation is the caller's error; anything else means the store is unusable."""
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreError(f"constraint violated: {exc}")
    return StoreUnavailable(f"sqlite: {exc}")


Outcome = tuple[bool, object]
"""(True, result) or (False, the exception for that caller)."""
Bulk = Mapping[Callable[..., object], Callable[[Db, Sequence[tuple[Any, ...]]], list[object]]]
"""A one-by-one function -> its set-at-a-time form (see `plugins.billing.store.sqlite.group_commit`)."""


def is_busy(exc: object) -> bool:
    """True for a store error caused by another connection holding SQLite's lock."""
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc
    code = getattr(cause, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def run_batch(
    conn: Db,
    begin: str,
    calls: Sequence[tuple[Callable[..., object], tuple[object, ...]]],
    busy_ms: int | None = None,
    bulk: Bulk | None = None,
) -> list[Outcome]:
    """Every `fn(conn, *args)` of `calls` in one transaction (on the worker thread, or inline).

    Several calls commit together (one WAL write of the pages they share instead of one per
    call). They first run one after the other with nothing in between; if one raises, all
    of that is rolled back and the calls run again, each in a savepoint, so the one that
    fails is undone alone and its caller gets the error (calls are whole functions of the
    database state, so running one twice is safe). Savepoints for every call cost two
    statements each, a sixth of a hold and capture. Raises only when the transaction as a whole fails
    (cannot begin or commit, or SQLite rolled it back): then nothing in it happened.
    `busy_ms`, when given, is set as the busy timeout first. `bulk` maps a function to its
    set-at-a-time form (`plugins.billing.store.sqlite.group_commit`), used for two or more calls of it in the
    first, optimistic pass.
    """
    try:
        if busy_ms is not None:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
        conn.execute(begin)
    except sqlite3.Error as exc:
        raise mapped(exc) from exc
    alone = len(calls) == 1
    try:
        outcomes = None if alone else _optimistic(conn, calls, bulk or {})
        if outcomes is None:
            if not alone:
                conn.execute("ROLLBACK")
                conn.execute(begin)
            outcomes = [_attempt(conn, fn, args, alone) for fn, args in calls]
        if conn.in_transaction:
            conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise mapped(exc) from exc
        raise
    return outcomes


def _optimistic(
    conn: Db, calls: Sequence[tuple[Callable[..., object], tuple[object, ...]]], bulk: Bulk
) -> list[Outcome] | None:
    """Every call in the open transaction without savepoints; None as soon as one raises
    (the caller rolls back and retries with savepoints).

    Calls of a function that has a set-at-a-time form in `bulk` run together, through it,
    where the first of them stands in the batch (the calls of one batch were all pending
    at once, so they may run in any order).
    """
    outcomes: list[Outcome | None] = [None] * len(calls)
    groups: dict[Callable[..., object], list[int]] = {}
    for i, (fn, _) in enumerate(calls):
        if fn in bulk:
            groups.setdefault(fn, []).append(i)
    try:
        for i, (fn, args) in enumerate(calls):
            if outcomes[i] is not None:
                continue
            members = groups.get(fn, ())
            if len(members) > 1:
                values = bulk[fn](conn, [calls[j][1] for j in members])
                for j, value in zip(members, values, strict=True):
                    outcomes[j] = (True, value)
            else:
                outcomes[i] = (True, fn(conn, *args))
    except Exception:
        if not conn.in_transaction:
            raise  # SQLite rolled everything back (I/O error, full disk): the batch fails
        return None
    return cast(list[Outcome], outcomes)


def _attempt(conn: Db, fn: Callable[..., object], args: tuple[object, ...], alone: bool) -> Outcome:
    """One call of a batch, undone on error (the whole transaction when it is alone)."""
    if not alone:
        conn.execute("SAVEPOINT op")
    try:
        value = fn(conn, *args)
    except Exception as exc:
        if not conn.in_transaction:
            raise  # SQLite rolled everything back (I/O error, full disk): the batch fails
        conn.execute("ROLLBACK" if alone else "ROLLBACK TO op")
        if not alone:
            conn.execute("RELEASE op")
        if isinstance(exc, sqlite3.Error):
            error = mapped(exc)
            error.__cause__ = exc
            return False, error
        return False, exc
    if not alone:
        conn.execute("RELEASE op")
    return True, value
