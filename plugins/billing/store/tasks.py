"""Async tasks in the store (spec §9): the task record, its end, and the `TaskStore` protocol.

A task's money is an ordinary hold whose request id is the task's id. While the submit is
under way the hold belongs to the instance that took it (the orphan rule covers a crash
there). Once the upstream has accepted the task, `open_task` writes the task and hands the
hold to the task in one atomic step: the hold's instance becomes `TASK_OWNER`, which no
instance heartbeats and which the orphan rule, the stray-hold sweep and the audit's orphan
and stuck checks leave alone. From then on only `end_task` resolves it, whoever calls it.

`end_task` is the compare-and-set: in one atomic step it checks that the task is still open,
captures (a charge) or releases (None) the hold with its consume-log row, and marks the task
ended with its status, reason and note. A second call changes nothing and reports the first
end (`first=False`). So a background poller on any instance and a client's read racing to
the end bill the task once.

Polling is shared by leases: `claim_tasks` atomically takes the open tasks that are due and
moves each one's next poll `lease` seconds on, so another instance claims it only if this
one did not poll it in time (it died). `note_task` records what a poll saw and when to poll
next.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from plugins.billing.store.records import LogDetails, Resolution

__all__ = ["TASK_OWNER", "Task", "TaskEnd", "TaskState", "TaskStore"]

TASK_OWNER = "@task"
"""The `instance_id` of a hold that belongs to a task, not to an instance (instance ids are
`<host>-<pid>-<hex>`, so none is ever this)."""


class TaskState(StrEnum):
    """Open until ended exactly once."""

    OPEN = "open"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Task:
    """One async task. `id` is the id the client knows (and the hold's request id);
    `upstream_id` the one the upstream gave it. `terms` is the JSON of the price terms the
    hold was computed with (the end charges with the same ones). `status` and `progress`
    are what the upstream said last; `end_reason` why the task ended (completed, failed,
    cancelled, deleted, unknown, expired, resolved_by_hand) and `charge` what it cost (0:
    released). `polls` counts the polls, `misses` the 404s in a row, `failures` the failed
    polls in a row (for the backoff)."""

    id: str
    user: str
    key_id: str
    api: str
    model: str
    upstream: str
    upstream_model: str
    upstream_id: str
    amount: int
    seconds: int
    terms: str
    key_name: str
    group: str
    created_at: float
    status: str = "queued"
    progress: int = 0
    state: TaskState = TaskState.OPEN
    end_reason: str = ""
    charge: int | None = None
    note: str = ""
    ended_at: float | None = None
    next_poll_at: float = 0.0
    polls: int = 0
    misses: int = 0
    failures: int = 0

    @property
    def open(self) -> bool:
        """True until the task ended."""
        return self.state is TaskState.OPEN


@dataclass(frozen=True, slots=True)
class TaskEnd:
    """What `end_task` did: the task as it is now, its hold's resolution, and whether this
    call ended it (`first`) or found it ended already."""

    task: Task
    resolution: Resolution
    first: bool


class TaskStore(Protocol):
    """The task half of the store; both backends implement it (see the module docstring)."""

    async def open_task(self, task: Task) -> bool:
        """Write `task` and hand its hold (request id `task.id`, open) to `TASK_OWNER`, in
        one atomic step. False, writing nothing, when the hold is not open (or a task with
        this id exists)."""

    async def get_task(self, task_id: str) -> Task | None:
        """A task in any state."""

    async def list_tasks(self, user: str | None = None, state: TaskState | None = None, limit: int = 100) -> list[Task]:
        """Tasks, newest first, optionally one user's and in one state."""

    async def claim_tasks(self, now: float, lease: float, limit: int) -> list[Task]:
        """Atomically take at most `limit` open tasks whose next poll is due at `now`, oldest
        due first, moving each one's next poll to `now + lease`."""

    async def note_task(
        self, task_id: str, status: str, progress: int, misses: int, failures: int, next_poll_at: float
    ) -> bool:
        """Record a poll of an open task (what it saw, the counters) and when to poll it
        next; counts the poll. False when the task is not open."""

    async def end_task(
        self, task_id: str, charge: int | None, log: LogDetails, status: str, end_reason: str, note: str
    ) -> TaskEnd:
        """End an open task once: capture `charge` (release when None) with `log` as its
        consume-log row, and mark it ended with `status`, `end_reason` and `note`, in one
        atomic step. On an ended task, a no-op reporting that end. StoreError when no such
        task exists."""
