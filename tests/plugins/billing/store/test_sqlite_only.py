"""SQLite-specific behaviour of `SQLiteStore`: pragmas, migrations, locking, errors."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from plugins.billing.store.base import Hold, LogDetails, Plan, StoreError, StoreUnavailable
from plugins.billing.store.sqlite.connection import require_worker_api
from plugins.billing.store.sqlite.schema import MIGRATIONS
from plugins.billing.store.sqlite.store import SQLiteStore


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


# One transaction per operation (inline or one thread hop), group commit, checkpoints --


def _count_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call queued to an aiosqlite worker thread (the real method still runs)."""
    hops: list[str] = []
    real: Any = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # A batch hop is _execute(_batch, conn, begin, [(fn, args), ...]): name the functions.
        calls = args[2] if len(args) > 2 and isinstance(args[2], list) else []
        hops.append("+".join(call[0].__name__ for call in calls) or fn.__name__)
        return await real(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return hops


def test_the_private_aiosqlite_api_the_store_relies_on_exists() -> None:
    # SQLiteConnection._hop uses aiosqlite.Connection._execute and ._conn (pinned <0.23 in
    # pyproject.toml). If a new aiosqlite drops them, this fails before anything else does.
    assert inspect.iscoroutinefunction(aiosqlite.Connection._execute)
    assert isinstance(inspect.getattr_static(aiosqlite.Connection, "_conn"), property)
    require_worker_api()


def test_a_missing_worker_api_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(aiosqlite.Connection, "_execute")
    with pytest.raises(RuntimeError, match=r"aiosqlite.*lacks Connection\._execute"):
        require_worker_api()


async def test_run_executes_the_whole_function_on_the_worker_thread(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "w.db"))
    await store.open()

    def probe(conn: sqlite3.Connection) -> tuple[int, bool]:
        return threading.get_ident(), conn.in_transaction

    try:
        thread, in_tx = await store.run(probe)
        assert thread != threading.get_ident() and in_tx
    finally:
        await store.close()


async def test_with_synchronous_full_hold_and_capture_are_one_hop_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FULL fsyncs at every commit: that must never happen on the event loop.
    store = SQLiteStore(str(tmp_path / "w.db"), checkpoint_every=0, synchronous="FULL")
    await store.open()
    try:
        await store.create_user("alice")
        await store.credit("alice", 1000)
        key = await store.create_key("alice", "h", quota=500)
        hops = _count_hops(monkeypatch)
        held = await store.hold("r1", "alice", key.id, 100, None, "pv", 60, "i1", "m")
        assert isinstance(held, Hold) and hops == ["hold_tx"]
        done = await store.capture("r1", 80, LogDetails(end_reason="completed", usage_source="upstream"))
        assert done.charged == 80 and hops == ["hold_tx", "resolve_tx"]
        user = await store.get_user("alice")
        assert user is not None and (user.balance, user.reserved) == (920, 0)
    finally:
        await store.close()


async def test_an_idle_store_runs_hold_and_capture_inline_and_commits_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "w.db")
    store = SQLiteStore(path, checkpoint_every=0)
    await store.open()
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        await store.create_user("alice")
        await store.credit("alice", 1000)
        key = await store.create_key("alice", "h", quota=500)
        hops = _count_hops(monkeypatch)
        held = await store.hold("r1", "alice", key.id, 100, None, "pv", 60, "i1", "m")
        assert isinstance(held, Hold) and hops == []
        # Committed when `hold` returns: another connection sees the reservation.
        assert raw.execute("SELECT reserved FROM users WHERE name = 'alice'").fetchone() == (100,)
        done = await store.capture("r1", 80, LogDetails(end_reason="completed", usage_source="upstream"))
        assert done.charged == 80 and hops == []
        assert raw.execute("SELECT balance, reserved FROM users WHERE name = 'alice'").fetchone() == (920, 0)
        assert raw.execute("SELECT COUNT(*) FROM consume_log WHERE request_id = 'r1'").fetchone() == (1,)
        assert (await store.audit(0, 30)).ok
    finally:
        raw.close()
        await store.close()


async def test_an_inline_step_that_finds_the_lock_taken_waits_on_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process holds the write lock: the inline attempt must not wait on the event
    # loop; the step goes to the worker thread, which waits for the lock (busy_timeout).
    path = str(tmp_path / "w.db")
    store = SQLiteStore(path, checkpoint_every=0)
    await store.open()
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await store.create_user("alice")
        await store.credit("alice", 1000)
        key = await store.create_key("alice", "h")
        hops = _count_hops(monkeypatch)
        raw.execute("BEGIN IMMEDIATE")
        threading.Timer(0.3, raw.execute, ("ROLLBACK",)).start()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(ticker())
        held = await store.hold("r1", "alice", key.id, 100, None, "pv", 60, "i1", "m")
        beat.cancel()
        assert isinstance(held, Hold) and hops == ["hold_tx"]
        assert ticks >= 10  # the loop kept running while the lock was waited for
        # With the lock free again the next step runs inline (busy timeout back to 0).
        done = await store.capture("r1", 40, LogDetails(end_reason="completed", usage_source="upstream"))
        assert done.charged == 40 and hops == ["hold_tx"]
        assert (await store.audit(0, 30)).ok
    finally:
        raw.close()
        await store.close()


async def test_an_inline_step_under_a_lock_held_too_long_is_store_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "w.db")
    store = SQLiteStore(path, busy_timeout_ms=100, checkpoint_every=0)
    await store.open()
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        await store.create_user("alice")
        await store.credit("alice", 1000)
        key = await store.create_key("alice", "h")
        raw.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.hold("r1", "alice", key.id, 100, None, "pv", 60, "i1", "m")
        raw.execute("ROLLBACK")
        assert await store.get_hold("r1") is None  # nothing half-written
        assert isinstance(await store.hold("r1", "alice", key.id, 100, None, "pv", 60, "i1", "m"), Hold)
        await store.release("r1", LogDetails(end_reason="upstream_error", usage_source="none"))
        assert (await store.audit(0, 30)).ok
    finally:
        raw.close()
        await store.close()


async def test_concurrent_calls_share_commits_and_fail_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStore(str(tmp_path / "w.db"), checkpoint_every=0)
    await store.open()
    try:
        await store.create_user("alice")
        hops = _count_hops(monkeypatch)
        outcomes = await asyncio.gather(
            *(store.credit("alice" if i != 7 else "ghost", 10 + i) for i in range(20)), return_exceptions=True
        )
        failed = [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
        assert failed == [7] and isinstance(outcomes[7], StoreError) and "ghost" in str(outcomes[7])
        assert len(hops) < 20  # callers that queued together went in one transaction
        user = await store.get_user("alice")
        assert user is not None and user.balance == sum(10 + i for i in range(20) if i != 7)
        assert (await store.audit(0, 30)).ok
    finally:
        await store.close()


async def test_a_poisoned_step_fails_alone_and_its_writes_are_undone(tmp_path: Path) -> None:
    """One step of a group-commit batch raises a sqlite3 error after writing (a constraint
    violation: SQLite keeps the transaction open). Only its caller gets the error, as a
    `StoreError` (not a Python error from the batch runner), its own write is undone with
    it, and every other step of the batch commits."""
    store = SQLiteStore(str(tmp_path / "w.db"), checkpoint_every=0)
    await store.open()

    def poisoned(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE users SET balance = balance + 1000 WHERE name = 'alice'")
        conn.execute("INSERT INTO users (name, grp, preference, created_at) VALUES ('alice', 'g', 'p', 0)")

    try:
        await store.create_user("alice")
        outcomes = await asyncio.gather(
            *(store.credit("alice", 10 + i) for i in range(5)),
            store.run(poisoned),
            *(store.credit("alice", 20 + i) for i in range(5)),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(failed) == 1 and outcomes[5] is failed[0], outcomes
        assert type(failed[0]) is StoreError and "constraint violated" in str(failed[0])
        user = await store.get_user("alice")
        assert user is not None and user.balance == sum(range(10, 15)) + sum(range(20, 25))
        assert (await store.audit(0, 30)).ok
    finally:
        await store.close()


async def test_a_batch_sqlite_rolled_back_reports_no_success(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "w.db"), checkpoint_every=0)
    await store.open()

    def disk_failure(conn: sqlite3.Connection) -> None:
        # What SQLite does on an I/O error or a full disk: it rolls the whole transaction back.
        conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error")

    try:
        await store.create_user("alice")
        outcomes = await asyncio.gather(
            store.credit("alice", 1),
            store.credit("alice", 2),
            store.run(disk_failure),
            store.credit("alice", 4),
            return_exceptions=True,
        )
        # The four queued together, so they shared one transaction, and it is gone.
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
        user = await store.get_user("alice")
        assert user is not None and user.balance == 0
        assert (await store.credit("alice", 8)).balance == 8  # the connection is still usable
        assert (await store.audit(0, 30)).ok
    finally:
        await store.close()


async def test_checkpoints_run_in_the_background(tmp_path: Path) -> None:
    # Fewer WAL pages than SQLite's commit-time checkpoint needs (1000): only the background
    # task copies them into the database file, which therefore grows.
    sizes = {}
    for every in (0.0, 0.02):
        path = tmp_path / f"w{every}.db"
        store = SQLiteStore(str(path), checkpoint_every=every)
        await store.open()
        try:
            before = path.stat().st_size
            await store.create_user("alice")
            for i in range(40):
                await store.create_key("alice", f"hash-{i}", name="k" * 2000)
            await asyncio.sleep(0.2)
            sizes[every] = path.stat().st_size - before
        finally:
            await store.close()
    assert sizes[0.0] == 0 and sizes[0.02] > 40 * 2000


async def test_a_version_1_database_migrates_and_keeps_its_books(tmp_path: Path) -> None:
    from plugins.billing.store.sqlite.schema import _V1, statements

    path = str(tmp_path / "w.db")
    raw = sqlite3.connect(path, isolation_level=None)
    for statement in statements(_V1):
        raw.execute(statement)
    raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    raw.execute("INSERT INTO schema_version VALUES (1)")
    raw.close()
    store = SQLiteStore(path, checkpoint_every=0)
    await store.open()
    try:
        with sqlite3.connect(path) as check:
            indexes = {n for (n,) in check.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
            versions = [v for (v,) in check.execute("SELECT version FROM schema_version ORDER BY version")]
        assert (
            versions == [v for v, _ in MIGRATIONS]
            and "ledger_account" not in indexes
            and "consume_log_request" not in indexes
        )
        assert "consume_log_user" in indexes and "holds_open" in indexes
        log = LogDetails(end_reason="completed", usage_source="upstream")
        await store.create_plan(Plan("p100", 100, "none"))
        for name, request_id, charge in (("alice", "ra", 250), ("bob", "rb", 180)):
            await store.create_user(name)
            await store.grant_subscription(name, "p100", time.time() - 60, time.time() + 3600)
            key = await store.create_key(name, f"h-{name}")
            assert isinstance(await store.hold(request_id, name, key.id, 100, None, "pv", 60, "i1", "m"), Hold)
            assert (await store.capture(request_id, charge, log)).overage == charge - 100
        report = await store.audit(0, 30)
        assert report.ok and len(report.negatives) == 2
        alice, bob = report.negatives
        # Each wallet lists its own overage entry, found in one pass over the ledger.
        assert "wallet:alice balance -150" in alice and "-150 (request ra)" in alice and "rb" not in alice
        assert "wallet:bob balance -80" in bob and "-80 (request rb)" in bob and "ra)" not in bob
    finally:
        await store.close()


async def test_a_version_4_database_gains_the_account_edit_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 5 adds users.disabled, subscriptions.cancelled_at and ledger.actor to a file
    with money in it: existing rows read as enabled, not cancelled, made by the system."""
    from plugins.billing.store.sqlite import schema as sqlite_schema

    path = str(tmp_path / "w.db")
    now = time.time()
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", MIGRATIONS[:4])
    raw = sqlite3.connect(path, isolation_level=None)
    sqlite_schema.migrate(raw)
    raw.execute(
        "INSERT INTO users(name, grp, preference, balance, created_at) VALUES ('alice', 'default',"
        " 'subscription_first', 700, ?)",
        (now,),
    )
    raw.execute(
        "INSERT INTO ledger(ts, account, kind, d_balance, d_reserved, note) VALUES (?, 'wallet:alice',"
        " 'credit', 700, 0, 'top-up')",
        (now,),
    )
    raw.execute(
        "INSERT INTO subscriptions(id, user, plan, quota, period, start, end_at, period_start, balance, models)"
        " VALUES ('s_1', 'alice', 'p', 100, 'none', ?, ?, ?, 100, '[]')",
        (now - 60, now + 3600, now - 60),
    )
    raw.execute(
        "INSERT INTO ledger(ts, account, kind, d_balance, d_reserved, note) VALUES (?, 'sub:s_1',"
        " 'credit', 100, 0, 'plan p: first period')",
        (now,),
    )
    raw.close()
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", MIGRATIONS)
    store = SQLiteStore(path, checkpoint_every=0)
    await store.open()
    try:
        user = await store.get_user("alice")
        assert user is not None and (user.balance, user.disabled) == (700, False)
        found = await store.get_subscription("s_1")
        assert found is not None and (found.balance, found.cancelled_at) == (100, None)
        [entry] = (await store.ledger_entries("alice")).entries
        assert (entry.d_balance, entry.note, entry.actor) == (700, "top-up", "")
        assert (await store.set_user("alice", disabled=True)).disabled
        assert (await store.cancel_subscription("s_1")).cancelled_at is not None
        assert (await store.audit(time.time(), 30)).ok
    finally:
        await store.close()


async def test_an_idle_store_skips_its_background_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStore(str(tmp_path / "w.db"), checkpoint_every=0.02)
    await store.open()
    try:
        hops = _count_hops(monkeypatch)

        def checkpoints() -> int:
            return hops.count("_execute_fetchall")  # the checkpointer's PRAGMA wal_checkpoint

        await store.create_user("alice")
        await asyncio.sleep(0.15)
        after_write = checkpoints()
        assert after_write >= 1
        await asyncio.sleep(0.3)  # ~15 rounds with nothing written: no wake-ups
        assert checkpoints() == after_write
        await store.credit("alice", 5)
        await asyncio.sleep(0.15)
        assert checkpoints() == after_write + 1
    finally:
        await store.close()


async def test_a_version_2_database_moves_to_version_3_with_every_row_and_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugins.billing.store.sqlite import schema as sqlite_schema

    path = str(tmp_path / "w.db")
    log = LogDetails(end_reason="completed", usage_source="upstream", upstream="up")
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", MIGRATIONS[:2])
    to_hold, to_user = sqlite_schema.to_hold, sqlite_schema.to_user  # today's read columns version 2 lacks
    monkeypatch.setattr(sqlite_schema, "to_hold", lambda r: to_hold({**dict(zip(r.keys(), r)), "touched_at": None}))
    # ... and writes a consume-log column (a task's seconds, version 6) that it lacks too.
    from plugins.billing.store.sqlite import ledger as sqlite_ledger

    insert_log, log_values = sqlite_ledger.INSERT_LOG, sqlite_schema.log_values
    monkeypatch.setattr(sqlite_ledger, "INSERT_LOG", insert_log.replace(", seconds)", ")").replace(", ?)", ")"))
    monkeypatch.setattr(sqlite_schema, "log_values", lambda d, k="": tuple(log_values(d, k))[:-1])
    monkeypatch.setattr(sqlite_schema, "to_user", lambda r: to_user({**dict(zip(r.keys(), r)), "disabled": 0}))
    store = SQLiteStore(path, checkpoint_every=0)
    await store.open()
    await store.create_user("alice")
    with sqlite3.connect(path) as raw:  # a top-up as version 2 wrote it (today's records its actor)
        raw.execute("UPDATE users SET balance = 1000 WHERE name = 'alice'")
        raw.execute(
            "INSERT INTO ledger(ts, account, kind, d_balance, d_reserved, note)"
            " VALUES (?, 'wallet:alice', 'credit', 1000, 0, '')",
            (time.time(),),
        )
    key = await store.create_key("alice", "h-alice", quota=500)
    for i in range(3):
        assert isinstance(await store.hold(f"r{i}", "alice", key.id, 100, None, "pv", 60, "i1", "m"), Hold)
    await store.capture("r0", 40, log)
    await store.release("r1", log)
    await store.close()

    def books() -> tuple[list[tuple[object, ...]], ...]:
        with sqlite3.connect(path) as raw:
            return tuple(
                raw.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("holds", "ledger", "consume_log")
            )

    before = books()
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", MIGRATIONS)
    monkeypatch.setattr(sqlite_schema, "to_hold", to_hold)
    monkeypatch.setattr(sqlite_ledger, "INSERT_LOG", insert_log)
    monkeypatch.setattr(sqlite_schema, "log_values", log_values)
    monkeypatch.setattr(sqlite_schema, "to_user", to_user)
    store = SQLiteStore(path, checkpoint_every=0)
    await store.open()
    try:
        # Every row, with its id (v4 adds touched_at to holds, NULL; v6 seconds to the log, 0;
        # v7 the ledger's actor, '').
        holds, ledger, logs = books()
        assert [r[:-1] for r in holds] == before[0] and {r[-1] for r in holds} == {None}
        assert [r[:-1] for r in ledger] == before[1] and {r[-1] for r in ledger} == {""}
        assert [r[:-1] for r in logs] == before[2] and {r[-1] for r in logs} == {0}  # v6: seconds, 0
        with sqlite3.connect(path) as raw:
            ddl = dict(raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
            objects = {n for (n,) in raw.execute("SELECT name FROM sqlite_master")}
            assert raw.execute("SELECT name FROM sqlite_sequence").fetchall() == []
        assert ddl["holds"].rstrip().endswith("WITHOUT ROWID")
        assert "AUTOINCREMENT" not in ddl["ledger"] and "AUTOINCREMENT" not in ddl["consume_log"]
        assert {"holds_open", "consume_log_user", "consume_log_ts", "ledger_no_update", "ledger_no_delete"} <= objects
        # The open hold from before the migration settles; new rows take the next ids.
        assert (await store.capture("r2", 70, log)).charged == 70
        assert (await store.get_user("alice")).balance == 1000 - 40 - 70
        after = books()
        assert after[1][-1][0] > before[1][-1][0] and after[2][-1][0] == before[2][-1][0] + 1
        assert (await store.audit(time.time(), 30)).ok
    finally:
        await store.close()
    with sqlite3.connect(path) as raw, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("DELETE FROM ledger")
