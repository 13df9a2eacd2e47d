"""Async tasks on Redis (`plugins.billing.store.tasks`), for instances sharing one store.

The task lives in its user's slot (`P:{u:N}:task:<id>`, beside its hold), so the steps that
must be atomic are one script each: `task_open` writes it and hands the hold to the task,
`task_end` is the compare-and-set that settles the hold (the same settlement library every
capture runs) and marks the task ended, `task_note` records a poll. The global indexes
(`{tasks}`: owner, due, all) are written in separate commands, as the store's other
indexes are: before the script that needs them to be findable, and a reader skips (and
tidies) an entry that points at nothing. The due set is also the lease: `task_claim` moves
the tasks it takes to the lease's end in one step, so two instances never poll one task at
once unless a lease ran out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from plugins.billing.store.records import HoldState, LogDetails, Resolution, StoreError
from plugins.billing.store.redis.client import RedisCore, guarded
from plugins.billing.store.redis.cross_slot import held_of, settle_call
from plugins.billing.store.redis.layout import HeldMemory, Layout, units
from plugins.billing.store.redis.rows import fmt_time, pairs
from plugins.billing.store.tasks import TASK_OWNER, Task, TaskEnd, TaskState

__all__ = ["RedisTasks", "to_task"]

_SNAPSHOT_TRIES = 10


def _opt(value: object) -> str:
    return "" if value is None else str(value)


def task_fields(t: Task) -> list[str]:
    """A task as the flat field/value pairs of its hash."""
    values: dict[str, object] = {
        "id": t.id,
        "user": t.user,
        "key_id": t.key_id,
        "api": t.api,
        "model": t.model,
        "upstream": t.upstream,
        "upstream_model": t.upstream_model,
        "upstream_id": t.upstream_id,
        "amount": t.amount,
        "seconds": t.seconds,
        "terms": t.terms,
        "key_name": t.key_name,
        "group": t.group,
        "created_at": fmt_time(t.created_at),
        "status": t.status,
        "progress": t.progress,
        "state": t.state.value,
        "end_reason": t.end_reason,
        "charge": _opt(t.charge),
        "note": t.note,
        "ended_at": "" if t.ended_at is None else fmt_time(t.ended_at),
        "next_poll_at": fmt_time(t.next_poll_at),
        "polls": t.polls,
        "misses": t.misses,
        "failures": t.failures,
    }
    return [str(x) for pair in values.items() for x in pair]


def to_task(h: Mapping[str, str]) -> Task:
    """A task hash as a Task."""
    return Task(
        id=h["id"],
        user=h["user"],
        key_id=h["key_id"],
        api=h["api"],
        model=h["model"],
        upstream=h["upstream"],
        upstream_model=h["upstream_model"],
        upstream_id=h["upstream_id"],
        amount=int(h["amount"]),
        seconds=int(h["seconds"]),
        terms=h["terms"],
        key_name=h["key_name"],
        group=h["group"],
        created_at=float(h["created_at"]),
        status=h["status"],
        progress=int(h["progress"]),
        state=TaskState(h["state"]),
        end_reason=h["end_reason"],
        charge=int(h["charge"]) if h["charge"] else None,
        note=h["note"],
        ended_at=float(h["ended_at"]) if h["ended_at"] else None,
        next_poll_at=float(h["next_poll_at"]),
        polls=int(h["polls"]),
        misses=int(h["misses"]),
        failures=int(h["failures"]),
    )


class RedisTasks:
    """The `TaskStore` half of `RedisStore` (see the module docstring); `RedisStore.__init__`
    sets the connection, key names, clock and the memory of held requests."""

    _core: RedisCore
    _k: Layout
    _clock: Callable[[], float]
    _held: HeldMemory

    @guarded
    async def open_task(self, task: Task) -> bool:
        """Write `task` and hand its open hold to `TASK_OWNER`; False if the hold is not open
        or the task exists."""
        k = self._k
        # Findable first (by id, by the pollers, in listings); a crash before the script
        # leaves entries that point at nothing, which readers skip.
        await self._index("add", task.id, task.user, task.next_poll_at, task.created_at)
        done = await self._core.run(
            "task_open",
            [k.hold(task.user, task.id), k.task(task.user, task.id), k.user_tasks(task.user)],
            [task.id, fmt_time(task.created_at), TASK_OWNER, *task_fields(task)],
        )
        if not done:
            return False
        self._held.forget(task.id)  # settled by whichever instance ends the task
        # Again: a claim that ran between the first write and the script found no task and
        # dropped the entry.
        await self._index("due", task.id, task.user, task.next_poll_at)
        return True

    async def _index(self, op: str, task_id: str, user: str = "", due: float = 0.0, created: float = 0.0) -> None:
        k = self._k
        args: list[str | int] = [op, task_id, user, fmt_time(due), fmt_time(created)]
        await self._core.run("task_index", [k.task_owners, k.tasks_due, k.tasks_all], args)

    async def _hash(self, task_id: str) -> dict[str, str]:
        user = await self._core.hget(self._k.task_owners, task_id)
        return {} if user is None else await self._core.hgetall(self._k.task(user, task_id))

    @guarded
    async def get_task(self, task_id: str) -> Task | None:
        """A task in any state."""
        h = await self._hash(task_id)
        return to_task(h) if h else None

    @guarded
    async def list_tasks(self, user: str | None = None, state: TaskState | None = None, limit: int = 100) -> list[Task]:
        """Tasks, newest first (pages through the index until `limit` match)."""
        index = self._k.user_tasks(user) if user is not None else self._k.tasks_all
        found: list[Task] = []
        start, page = 0, max(limit, 100)
        while len(found) < limit:
            ids: list[str] = await self._core.call("zrevrange", index, start, start + page - 1)
            if not ids:
                break
            start += len(ids)
            owners = (
                [user] * len(ids) if user is not None else await self._core.call("hmget", self._k.task_owners, *ids)
            )
            calls = [("hgetall", (self._k.task(o, i),)) for i, o in zip(ids, owners) if o is not None]
            for h in await self._core.batch(calls):
                if h and (state is None or h["state"] == state.value):
                    found.append(to_task(h))
        return found[: max(limit, 0)]

    @guarded
    async def claim_tasks(self, now: float, lease: float, limit: int) -> list[Task]:
        """Take the due open tasks (at most `limit`), each for `lease` seconds."""
        k = self._k
        ids: list[str] = await self._core.run(
            "task_claim", [k.tasks_due], [fmt_time(now), fmt_time(now + lease), limit]
        )
        if not ids:
            return []
        owners = await self._core.call("hmget", k.task_owners, *ids)
        hashes = await self._core.batch([("hgetall", (k.task(o, i),)) for i, o in zip(ids, owners) if o is not None])
        tasks = [to_task(h) for h in hashes if h]
        gone = set(ids) - {t.id for t in tasks if t.open}
        for task_id in sorted(gone):  # ended (or never written): no more polls
            await self._index("done", task_id)
        return [t for t in tasks if t.open]

    @guarded
    async def note_task(
        self, task_id: str, status: str, progress: int, misses: int, failures: int, next_poll_at: float
    ) -> bool:
        """Record a poll of an open task and its next poll; False when it is not open."""
        user = await self._core.hget(self._k.task_owners, task_id)
        if user is None:
            return False
        args: list[str | int] = [status, progress, misses, failures, fmt_time(next_poll_at)]
        if not await self._core.run("task_note", [self._k.task(user, task_id)], args):
            return False
        await self._index("due", task_id, user, next_poll_at)
        return True

    @guarded
    async def end_task(
        self, task_id: str, charge: int | None, log: LogDetails, status: str, end_reason: str, note: str
    ) -> TaskEnd:
        """End the task once, with its hold's capture (or release) and log row, in one script."""
        if charge is not None:
            units(charge, "a charge")
        core, k = self._core, self._k
        user = await core.hget(k.task_owners, task_id)
        h = {} if user is None else await core.hgetall(k.hold(user, task_id))
        if user is None or not h:
            raise StoreError(f"unknown task {task_id!r}")
        held = await held_of(core, k, user, h)
        keys, args = await settle_call(core, k, task_id, held, log, charge or 0, self._clock())
        op = "release" if charge is None else "capture"
        r = await core.run("task_end", [*keys, k.task(user, task_id)], [*args, op, status, end_reason, note])
        if r[0] in ("unknown", "stale"):
            raise StoreError(f"task {task_id} could not be ended: {r[0]}")
        task = to_task(await core.hgetall(k.task(user, task_id)))
        if r[0] == "ended":
            return TaskEnd(task, Resolution(task_id, HoldState(r[1]), int(r[2]), int(r[3]), False), False)
        await self._index("done", task_id)
        return TaskEnd(task, Resolution(task_id, HoldState(r[1]), int(r[2]), int(r[3]), bool(int(r[4]))), True)

    async def _task_audit(self) -> list[str]:
        """The task checks of `weir audit` (as `sqlite.tasks.task_audit`), user by user from
        atomic snapshots."""
        out: list[str] = []
        for user in sorted(await self._core.smembers(self._k.users)):
            out += await self._audit_user(user)
        return out

    async def _audit_user(self, user: str) -> list[str]:
        core, k = self._core, self._k
        for _ in range(_SNAPSHOT_TRIES):  # retried while a task or hold appears meanwhile
            task_ids, open_ids = await core.batch(
                [
                    ("zrange", (k.user_tasks(user), 0, -1)),
                    ("smembers", (k.open_holds(user),)),
                ]
            )
            hold_ids = sorted(set(task_ids) | set(open_ids))
            r = await core.run(
                "task_snapshot",
                [
                    k.user_tasks(user),
                    k.open_holds(user),
                    *(k.task(user, i) for i in task_ids),
                    *(k.hold(user, i) for i in hold_ids),
                ],
                [len(task_ids)],
            )
            if r[0] == task_ids and sorted(r[1]) == sorted(open_ids):
                holds = {i: pairs(h) for i, h in zip(hold_ids, r[3], strict=True)}
                return task_findings([to_task(pairs(h)) for h in r[2] if h], holds)
        raise StoreError(f"audit: no stable snapshot of user {user}'s tasks after {_SNAPSHOT_TRIES} tries")


def task_findings(tasks: Sequence[Task], holds: Mapping[str, Mapping[str, str]]) -> list[str]:
    """What is wrong between one user's tasks and their holds (see `sqlite.tasks.task_audit`)."""
    out: list[str] = []
    live = {t.id for t in tasks if t.open}
    for rid, h in sorted(holds.items()):
        if h.get("state") == "open" and h.get("instance_id") == TASK_OWNER and rid not in live:
            out.append(f"task hold {rid} is open without a live task")
    for t in tasks:
        h = holds.get(t.id) or {}
        state, charged = h.get("state"), int(h["charged"]) if h.get("charged") else None
        if t.open:
            wrong = state != "open" or h.get("instance_id") != TASK_OWNER
        else:
            wrong = state in (None, "open") or charged != t.charge
        if wrong:
            hold = "no hold" if state is None else f"hold {state} charged {charged}"
            out.append(f"task {t.id} is {t.state.value} (charge {t.charge}) but has {hold}")
    return out
