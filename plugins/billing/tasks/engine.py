"""The end of an async task, and the poller that looks for it (spec §9).

A task ends exactly once, by the store's compare-and-set (`Store.end_task`), whoever sees
the end first: the poller of any instance or a client's read through any instance.

* `completed`: capture the held price, or, when the upstream reported token usage and the
  model has token prices, the charge recomputed from that usage (the difference from the
  hold settles in the same step);
* `failed` (the upstream says so), `deleted` (the client deleted it before it completed),
  `unknown` (the fetch route answered 404 twice in a row), `expired` (older than
  `max_age`): release in full. A release moves nothing but the reservation, so the wallet
  or subscription, the key's quota, `used_quota` and the request counters are as if the
  task had never been submitted.

The poller runs in billing's lifespan as a service of the host's task tracker. Each round
it claims the due tasks with a lease (`Store.claim_tasks`), so instances share the polling
and a task is polled by one of them at a time; a dead instance's leases run out and another
instance takes its tasks over. A poll that fails (unreachable, a 5xx, an answer without a
status) backs off exponentially up to `max_backoff`; a long task's polls slow down too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson

from plugins.billing.store.base import LogDetails, Store, StoreError
from plugins.billing.store.tasks import Task, TaskEnd
from plugins.billing.tasks.apis import Observation, TaskApis
from plugins.billing.tasks.settings import TasksConfig
from plugins.billing.tasks.terms import TaskTerms
from plugins.billing.usage import Usage
from proxy.host import Host, UpstreamCallError

__all__ = ["TaskEngine", "task_details"]

log = logging.getLogger(__name__)

#: 404s in a row after which a task is unknown to its upstream (spec §9).
MISSES = 2
#: Polls after which the interval grows by another `poll_every`.
SLOWER_EVERY = 60


def task_details(
    task: Task, reason: str, source: str, why: str, now: float, usage: Usage | None = None, http: int = 0
) -> LogDetails:
    """The consume-log details of a task's end: `reason` (end_reason), `source`
    (usage_source: `task` for the held price, `upstream` for reported usage, `none` for a
    release), `why` (in `error`), the task's seconds and its age as the latency."""
    multiplier = str(TaskTerms.from_json(task.terms).multiplier)
    return LogDetails(
        reason,
        source,
        task.model,
        task.upstream_model,
        task.upstream,
        task.key_name,
        task.group,
        multiplier,
        False,
        *(usage or Usage()),
        int((now - task.created_at) * 1000),
        None,
        http,
        why[:500],
        task.seconds,
    )


class TaskEngine:
    """Ends tasks and polls them (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        host: Host,
        config: TasksConfig,
        apis: TaskApis,
        clock: Callable[[], float] = time.time,
        on_end: Callable[[str, str, int, str], None] | None = None,
    ) -> None:
        self.store = store
        self.host = host
        self.config = config
        self.apis = apis
        self.clock = clock
        #: Told (model, group, quota charged, end reason) of each task's end, once (the metrics).
        self.on_end = on_end

    async def end(
        self,
        task: Task,
        reason: str,
        charge: int | None,
        why: str,
        *,
        status: str = "",
        usage: Usage | None = None,
        source: str | None = None,
        http: int = 0,
        note: str = "",
    ) -> TaskEnd | None:
        """End `task` once: capture `charge` (release when None), logged with `reason` and
        `why`. None when the store could not be written (the task stays open: a later poll
        or read ends it)."""
        source = source or ("none" if charge is None else "task")
        details = task_details(task, reason, source, why, self.clock(), usage, http)
        try:
            ended = await self.store.end_task(task.id, charge, details, status or reason, reason, note)
        except StoreError as exc:
            log.error("task %s: could not end it as %s: %s", task.id, reason, exc)
            return None
        if ended.first:
            log.info("task %s ended: %s, charged %d of %d held", task.id, reason, ended.resolution.charged, task.amount)
            if self.on_end is not None:
                self.on_end(task.model, task.group, ended.resolution.charged, reason)
        return ended

    async def observe(self, task: Task, seen: Observation) -> TaskEnd | None:
        """Act on what a read of `task` said: end it, or record its progress. A task older
        than `max_age` is released whatever the read said (the poller may be late)."""
        if self.too_old(task):
            return await self.expire(task)
        if seen.state == "completed":
            recomputed = TaskTerms.from_json(task.terms).for_usage(seen.usage) if seen.usage else None
            if recomputed is None:
                return await self.end(task, "completed", task.amount, "", status="completed", http=200)
            why = f"recomputed from the reported usage (held {task.amount})"
            return await self.end(
                task, "completed", recomputed, why, status="completed", usage=seen.usage, source="upstream", http=200
            )
        if seen.state == "failed":
            why = f"upstream: {seen.failure or seen.status or 'failed'}"
            return await self.end(task, "failed", None, why, status="failed", http=200)
        if seen.state is None:
            return await self.poll_failed(task, "the answer has no status")
        await self._note(task, seen.state, seen.progress, 0, 0)
        return None

    async def missing(self, task: Task) -> TaskEnd | None:
        """The fetch route answered 404: after `MISSES` in a row, the task is unknown."""
        if task.misses + 1 >= MISSES:
            why = f"the upstream answered 404 {MISSES} times in a row: it does not know this task"
            return await self.end(task, "unknown", None, why, http=404)
        await self._note(task, task.status, task.progress, task.misses + 1, 0)
        return None

    async def poll_failed(self, task: Task, why: str) -> TaskEnd | None:
        """A poll got no usable answer: try again later, backing off (never an end)."""
        log.warning("task %s: poll failed (%s)", task.id, why)
        await self._note(task, task.status, task.progress, task.misses, task.failures + 1)
        return None

    async def _note(self, task: Task, status: str, progress: int, misses: int, failures: int) -> None:
        if failures:
            delay = self.config.poll_every * 2 ** min(failures, 16)
        else:
            delay = self.config.poll_every * (1 + task.polls // SLOWER_EVERY)
        due = self.clock() + min(delay, self.config.max_backoff)
        try:
            await self.store.note_task(task.id, status, progress, misses, failures, due)
        except StoreError as exc:
            log.error("task %s: could not record a poll: %s", task.id, exc)

    async def expire(self, task: Task) -> TaskEnd | None:
        """Release a task older than `max_age`."""
        return await self.end(task, "expired", None, f"not finished within max_age ({self.config.max_age:g} s)")

    def too_old(self, task: Task) -> bool:
        """Whether `task` is older than `max_age`."""
        return self.clock() - task.created_at > self.config.max_age

    async def refresh(self, task: Task) -> TaskEnd | None:
        """Poll `task` now, and act on the answer (end it, or record its progress)."""
        if self.too_old(task):
            return await self.expire(task)
        api = self.apis.by_name.get(task.api)
        if api is None:
            return await self.poll_failed(task, f"task API {task.api!r} is no longer configured")
        try:
            reply = await self.host.call_upstream(
                task.upstream, "GET", api.fetch_path(task.upstream_id), timeout=self.config.poll_timeout
            )
        except UpstreamCallError as exc:
            return await self.poll_failed(task, str(exc))
        if reply.status == 404:
            return await self.missing(task)
        if reply.status != 200:
            return await self.poll_failed(task, f"the upstream answered {reply.status}")
        try:
            doc = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            return await self.poll_failed(task, "the answer is not JSON")
        return await self.observe(task, api.observe(doc))

    async def poll_round(self) -> int:
        """Claim the due tasks and poll them; how many were claimed."""
        claimed = await self.store.claim_tasks(self.clock(), self.config.lease, self.config.claim_batch)
        gate = asyncio.Semaphore(self.config.poll_concurrency)

        async def poll(task: Task) -> None:
            async with gate:
                try:
                    await self.refresh(task)
                except Exception:  # one task's trouble must not stop the round
                    log.exception("task %s: poll failed", task.id)

        await asyncio.gather(*(poll(t) for t in claimed))
        return len(claimed)

    async def poll_forever(self) -> None:
        """Poll rounds for the life of the app (a service of the host's task tracker)."""
        tick = self.config.poll_every / 2
        while True:
            try:
                claimed = await self.poll_round()
            except StoreError as exc:
                log.error("task poller: %s", exc)
                claimed = 0
            # A full batch may leave more due: go again at once (after yielding the loop).
            await asyncio.sleep(0 if claimed >= self.config.claim_batch else tick)
