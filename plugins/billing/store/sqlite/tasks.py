"""Async tasks on SQLite (`plugins.billing.store.tasks`): the `tasks` table.

Every step is one `BEGIN IMMEDIATE` transaction (`SQLiteConnection.run`), so the
compare-and-set of `end_task` (is the task still open?) and the settlement of its hold
(`ledger.settle`, the same code a request's capture runs) commit together or not at all,
across processes sharing the file. `task_audit` adds the task checks to `weir audit`.
"""

from __future__ import annotations

import sqlite3

from plugins.billing.store.records import HoldState, LogDetails, StoreError
from plugins.billing.store.sqlite import schema
from plugins.billing.store.sqlite.connection import SQLiteConnection
from plugins.billing.store.sqlite.ledger import Clock, Db, fetch_all, fetch_one, settle
from plugins.billing.store.tasks import TASK_OWNER, Task, TaskEnd, TaskState

_READ = "DEFERRED"
_COLUMNS = (
    "id",
    "user",
    "key_id",
    "api",
    "model",
    "upstream",
    "upstream_model",
    "upstream_id",
    "amount",
    "seconds",
    "terms",
    "key_name",
    "grp",
    "created_at",
    "status",
    "progress",
    "state",
    "end_reason",
    "charge",
    "note",
    "ended_at",
    "next_poll_at",
    "polls",
    "misses",
    "failures",
)
_INSERT = f"INSERT INTO tasks({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_ADOPT = "UPDATE holds SET instance_id = ? WHERE request_id = ? AND state = 'open'"
_CLAIM = (
    "UPDATE tasks SET next_poll_at = ? WHERE id IN (SELECT id FROM tasks WHERE state = 'open' AND next_poll_at <= ?"
    " ORDER BY next_poll_at, id LIMIT ?) RETURNING *"
)
_NOTE = (
    "UPDATE tasks SET status = ?, progress = ?, misses = ?, failures = ?, next_poll_at = ?, polls = polls + 1"
    " WHERE id = ? AND state = 'open'"
)
_ENDED = "UPDATE tasks SET state = 'ended', status = ?, end_reason = ?, charge = ?, note = ?, ended_at = ? WHERE id = ?"
_TASK = "SELECT * FROM tasks WHERE id = ?"
_HOLD = "SELECT * FROM holds WHERE request_id = ?"


def to_task(r: sqlite3.Row) -> Task:
    """A `tasks` row as a Task."""
    return Task(
        id=r["id"],
        user=r["user"],
        key_id=r["key_id"],
        api=r["api"],
        model=r["model"],
        upstream=r["upstream"],
        upstream_model=r["upstream_model"],
        upstream_id=r["upstream_id"],
        amount=r["amount"],
        seconds=r["seconds"],
        terms=r["terms"],
        key_name=r["key_name"],
        group=r["grp"],
        created_at=r["created_at"],
        status=r["status"],
        progress=r["progress"],
        state=TaskState(r["state"]),
        end_reason=r["end_reason"],
        charge=r["charge"],
        note=r["note"],
        ended_at=r["ended_at"],
        next_poll_at=r["next_poll_at"],
        polls=r["polls"],
        misses=r["misses"],
        failures=r["failures"],
    )


def _values(t: Task) -> tuple[object, ...]:
    return (
        t.id,
        t.user,
        t.key_id,
        t.api,
        t.model,
        t.upstream,
        t.upstream_model,
        t.upstream_id,
        t.amount,
        t.seconds,
        t.terms,
        t.key_name,
        t.group,
        t.created_at,
        t.status,
        t.progress,
        t.state.value,
        t.end_reason,
        t.charge,
        t.note,
        t.ended_at,
        t.next_poll_at,
        t.polls,
        t.misses,
        t.failures,
    )


def _open_tx(db: Db, task: Task) -> bool:
    if fetch_one(db, _TASK, (task.id,)) is not None:
        return False
    if db.execute(_ADOPT, (TASK_OWNER, task.id)).rowcount != 1:
        return False
    db.execute(_INSERT, _values(task))
    return True


def _one(db: Db, task_id: str) -> Task | None:
    row = fetch_one(db, _TASK, (task_id,))
    return None if row is None else to_task(row)


def _list(db: Db, user: str | None, state: str | None, limit: int) -> list[Task]:
    clauses: list[str] = []
    params: list[object] = []
    for clause, value in (("user = ?", user), ("state = ?", state)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    sql = f"SELECT * FROM tasks{where} ORDER BY created_at DESC, id DESC LIMIT ?"
    return [to_task(r) for r in fetch_all(db, sql, (*params, max(limit, 0)))]


def _claim(db: Db, now: float, lease: float, limit: int) -> list[Task]:
    rows = db.execute(_CLAIM, (now + lease, now, limit)).fetchall()
    return sorted((to_task(r) for r in rows), key=lambda t: t.created_at)


def _note(db: Db, task_id: str, status: str, progress: int, misses: int, failures: int, due: float) -> bool:
    return db.execute(_NOTE, (status, progress, misses, failures, due, task_id)).rowcount == 1


def _end_tx(
    db: Db, clock: Clock, task_id: str, charge: int | None, log: LogDetails, status: str, reason: str, note: str
) -> TaskEnd:
    row = fetch_one(db, _TASK, (task_id,))
    if row is None:
        raise StoreError(f"unknown task {task_id!r}")
    held = fetch_one(db, _HOLD, (task_id,))
    if held is None:
        raise StoreError(f"task {task_id} has no hold")
    if row["state"] != TaskState.OPEN:
        return TaskEnd(to_task(row), schema.to_resolution(held, first=False), False)
    if held["state"] == HoldState.OPEN:
        state = HoldState.RELEASED if charge is None else HoldState.CAPTURED
        resolution = settle(db, clock(), schema.to_hold(held), state, charge or 0, log)
    else:  # resolved some other way (it should not be): the task takes that end
        resolution = schema.to_resolution(held, first=False)
    db.execute(_ENDED, (status, reason, resolution.charged, note, clock(), task_id))
    ended = fetch_one(db, _TASK, (task_id,))
    assert ended is not None
    return TaskEnd(to_task(ended), resolution, True)


class SQLiteTasks(SQLiteConnection):
    """The `TaskStore` half of `SQLiteStore` (see the module docstring)."""

    async def open_task(self, task: Task) -> bool:
        """Write `task` and hand its open hold to `TASK_OWNER`, atomically; False if the hold
        is not open or the task exists."""
        return await self.run(_open_tx, task)

    async def get_task(self, task_id: str) -> Task | None:
        """A task in any state."""
        return await self.run(_one, task_id, mode=_READ, inline=True)

    async def list_tasks(self, user: str | None = None, state: TaskState | None = None, limit: int = 100) -> list[Task]:
        """Tasks, newest first."""
        return await self.run(_list, user, None if state is None else state.value, limit, mode=_READ)

    async def claim_tasks(self, now: float, lease: float, limit: int) -> list[Task]:
        """Take the due open tasks (at most `limit`), moving their next poll to `now + lease`."""
        return await self.run(_claim, now, lease, limit)

    async def note_task(
        self, task_id: str, status: str, progress: int, misses: int, failures: int, next_poll_at: float
    ) -> bool:
        """Record a poll of an open task and its next poll; False when it is not open."""
        return await self.run(_note, task_id, status, progress, misses, failures, next_poll_at)

    async def end_task(
        self, task_id: str, charge: int | None, log: LogDetails, status: str, end_reason: str, note: str
    ) -> TaskEnd:
        """End the task once, with its hold's capture (or release) and log row, atomically."""
        if charge is not None and charge < 0:
            raise StoreError("a charge must be >= 0")
        return await self.run(_end_tx, self._clock, task_id, charge, log, status, end_reason, note)


def task_audit(db: Db) -> list[str]:
    """The task checks of `weir audit`: every task hold has a live task, every open task
    an open hold, and every ended task a hold resolved once for the charge it records."""
    out: list[str] = []
    for r in fetch_all(
        db,
        "SELECT h.request_id, t.state FROM holds h LEFT JOIN tasks t ON t.id = h.request_id"
        " WHERE h.state = 'open' AND h.instance_id = ? AND (t.id IS NULL OR t.state != 'open')",
        (TASK_OWNER,),
    ):
        out.append(f"task hold {r['request_id']} is open without a live task ({r['state'] or 'no task'})")
    for r in fetch_all(
        db,
        "SELECT t.id, t.state, t.charge, h.state AS hstate, h.charged, h.instance_id FROM tasks t"
        " LEFT JOIN holds h ON h.request_id = t.id WHERE (t.state = 'open' AND (h.state IS NULL"
        " OR h.state != 'open' OR h.instance_id != ?)) OR (t.state != 'open' AND (h.state IS NULL"
        " OR h.state = 'open' OR h.charged IS NOT t.charge))",
        (TASK_OWNER,),
    ):
        hold = "no hold" if r["hstate"] is None else f"hold {r['hstate']} charged {r['charged']}"
        out.append(f"task {r['id']} is {r['state']} (charge {r['charge']}) but has {hold}")
    return out
