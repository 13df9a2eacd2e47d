"""SQLite-specific behaviour of `SQLiteStore`: pragmas, migrations, locking, errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proxy.store.base import StoreError, StoreUnavailable
from proxy.store.sqlite_schema import MIGRATIONS
from proxy.store.sqlite_store import SQLiteStore


async def test_open_sets_wal_and_migrates_once(tmp_path: Path) -> None:
    path = str(tmp_path / "w.db")
    for _ in range(2):  # reopening must not re-run a migration
        store = SQLiteStore(path, synchronous="FULL")
        await store.open()
        await store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [v for (v,) in raw.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [v for v, _ in MIGRATIONS]


async def test_ledger_is_append_only(tmp_path: Path) -> None:
    path = str(tmp_path / "w.db")
    store = SQLiteStore(path)
    await store.open()
    await store.create_user("alice")
    await store.credit("alice", 10)
    await store.close()
    with sqlite3.connect(path) as raw, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("UPDATE ledger SET d_balance = 99")
    with sqlite3.connect(path) as raw, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("DELETE FROM ledger")


async def test_a_held_write_lock_becomes_store_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "w.db")
    store = SQLiteStore(path, busy_timeout_ms=100)
    await store.open()
    await store.create_user("alice")
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.credit("alice", 5)
        assert (await store.get_user("alice")).balance == 0  # type: ignore[union-attr]  # WAL: reads go on
        raw.execute("ROLLBACK")
        assert (await store.credit("alice", 5)).balance == 5
    finally:
        raw.close()
        await store.close()


async def test_not_a_database_and_bad_settings(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not an sqlite file at all" * 200)
    with pytest.raises(StoreUnavailable, match="store.path"):
        await SQLiteStore(str(junk)).open()
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(str(tmp_path / "x.db"), synchronous="SOMETIMES")
    closed = SQLiteStore(str(tmp_path / "y.db"))
    with pytest.raises(StoreUnavailable):
        await closed.get_user("alice")
    assert not await closed.ping()


async def test_bad_input_is_a_store_error_and_writes_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "w.db"))
    await store.open()
    try:
        await store.create_user("alice")
        with pytest.raises(StoreError):
            await store.create_key("alice", "h", quota=-1)
        with pytest.raises(StoreError):
            await store.create_key("ghost", "h2")
        assert await store.list_keys("alice") == []
        assert (await store.audit(0, 30)).ok
    finally:
        await store.close()
