"""The request side of task billing, called by the billing plugin's hooks (docs/tasks.md).

**Submit** (`POST /v1/videos`, a declared API's submit route):
* `on_request` prices the task from the request (`terms`), and holds that, under a new
  task id (the id the client will know), before the upstream is called;
* `on_body` reads the upstream's task id from its answer and, in one store step, writes the
  task and hands it the hold (`Store.open_task`); then the answer carries Weir's id instead
  of the upstream's. An answer without a task id is a refusal;
* a refusal (an error status, or no task id in a 2xx answer) releases the hold at once, in
  the terminal hook.

**Reads** (`GET /v1/videos/{id}`, `/content`, `DELETE`, a declared fetch route):
* `on_request` finds the task by the client's id; a task of another user is a 404, the same
  as a task that does not exist. The read is pinned to the task's upstream and path
  (`ctx.send_to`). Before relaying content or a delete of a task still open, the task is
  polled once, so a finished task is billed before its content leaves;
* `on_body` rewrites the upstream's id back to Weir's and remembers what the answer said;
* the terminal hook ends the task if the answer showed its end (the store's compare-and-set
  makes this and the poller bill it once), counts a 404, or ends a deleted task.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from plugins.billing.auth import store_down
from plugins.billing.outbox import Settler
from plugins.billing.prices.book import Current
from plugins.billing.store.base import ApiKey, HoldRefusal, LogDetails, StoreUnavailable, User
from plugins.billing.store.tasks import Task
from plugins.billing.sweeper import InflightSweeper
from plugins.billing.tasks.apis import VIDEOS, Observation, TaskApi, pointer_get, pointer_set, submit_fields
from plugins.billing.tasks.engine import TaskEngine
from plugins.billing.tasks.terms import TaskTerms
from proxy.plugin import Endpoint, Outcome, ProxyError, Reject, RequestContext, StateKey

__all__ = ["SUBMITS", "TASK_ENDPOINTS", "TaskRequests"]

log = logging.getLogger(__name__)

SUBMITS = frozenset({Endpoint.VIDEOS, Endpoint.TASK_SUBMIT})
TASK_ENDPOINTS = SUBMITS | {Endpoint.VIDEO, Endpoint.VIDEO_CONTENT, Endpoint.VIDEO_DELETE, Endpoint.TASK_FETCH}
_POLL_FIRST = frozenset({Endpoint.VIDEO_CONTENT, Endpoint.VIDEO_DELETE})
_MAX_SECONDS, _MAX_N = 3600, 128


@dataclass(slots=True)
class Submit:
    """A submit in flight: the task it will open, and what became of it."""

    api: TaskApi
    task: Task
    opened: bool = False
    refused: str = ""


@dataclass(slots=True)
class Read:
    """A read of a task in flight, and what its answer said."""

    api: TaskApi
    task: Task
    seen: Observation | None = None
    deleted: bool = False


SUBMIT = StateKey[Submit]("billing.task_submit")
READ = StateKey[Read]("billing.task_read")


def _count(fields: Mapping[str, Any], name: str, default: int, limit: int) -> int:
    if not name or fields.get(name) in (None, ""):
        return default
    raw = fields[name]
    try:
        value = int(raw) if not isinstance(raw, bool) and str(raw).strip().isdigit() else -1
    except ValueError:
        value = -1
    if not 1 <= value <= limit:
        raise Reject(400, "invalid_request_error", f"'{name}' must be a whole number from 1 to {limit}, got {raw!r}")
    return value


@dataclass(slots=True)
class TaskRequests:
    """Task billing on the request path (see the module docstring)."""

    engine: TaskEngine
    prices: Callable[[], Current]
    settler: Settler
    sweeper: InflightSweeper
    instance: str
    hold_ttl: float
    refusal: Callable[[HoldRefusal, int], Reject]
    clock: Callable[[], float] = time.time

    async def on_request(self, ctx: RequestContext, key: ApiKey, user: User) -> None:
        """Hold a submit's price, or authorise and pin a read."""
        if ctx.endpoint in SUBMITS:
            await self._submit(ctx, key, user)
        else:
            await self._read(ctx, user)

    async def _submit(self, ctx: RequestContext, key: ApiKey, user: User) -> None:
        api = self.engine.apis.submitted_to(ctx)
        if api is None:
            raise Reject(404, "not_found", f"no task API is declared at {ctx.path}")
        model, prices = ctx.model or "", self.prices()  # one version for the whole submit
        table = prices.table
        found = table.describe(model)
        if found is None:
            raise Reject(400, "model_not_priced", f"model {model!r} has no price; ask the operator to add one")
        price = found[0]
        if not (price.is_task or price.is_per_request):
            raise Reject(
                400,
                "model_not_priced",
                f"model {model!r} is priced per token; an async task needs per_request or per_second",
            )
        fields = submit_fields(ctx)
        seconds = _count(fields, api.seconds_field, api.default_seconds, _MAX_SECONDS)
        n = _count(fields, api.n_field, 1, _MAX_N)
        size = str(fields.get("size") or ("720x1280" if api is VIDEOS else ""))
        multiplier = table.multiplier(user.group, key.group)
        cfg = self.engine.config
        terms = TaskTerms.of(
            model,
            price,
            seconds,
            n,
            size,
            cfg.size_factor(model, size),
            multiplier,
            table.config.quota_per_usd,
            prices.label,
        )
        amount, task_id, now = terms.held(), api.prefix + secrets.token_hex(12), self.clock()
        self.sweeper.track(task_id)
        try:
            held = await self.engine.store.hold(
                task_id, user.name, key.id, amount, None, prices.label, self.hold_ttl, self.instance, model
            )
        except StoreUnavailable:
            self._give_back_later(task_id, LogDetails("store_unavailable", "none", model))
            raise store_down() from None
        if isinstance(held, HoldRefusal):
            self.sweeper.done(task_id)
            raise self.refusal(held, amount)
        task = Task(
            task_id,
            user.name,
            key.id,
            api.name,
            model,
            "",
            "",
            "",
            amount,
            seconds,
            terms.to_json(),
            key.name,
            key.group or user.group,
            now,
            next_poll_at=now + cfg.poll_every,
        )
        ctx.state[SUBMIT] = Submit(api, task)

    async def _read(self, ctx: RequestContext, user: User) -> None:
        found = self.engine.apis.read_of(ctx)
        if found is None:
            raise Reject(404, "task_not_found", f"no task at {ctx.path}")
        api, task_id, template = found
        try:
            task = await self.engine.store.get_task(task_id)
        except StoreUnavailable:
            raise store_down() from None
        # Another user's task is answered exactly as a task that does not exist.
        if task is None or task.user != user.name or task.api != api.name:
            raise Reject(404, "task_not_found", f"no task {task_id!r}")
        if ctx.endpoint in _POLL_FIRST and task.open:
            ended = await self.engine.refresh(task)  # bill a finished task before its content leaves
            task = ended.task if ended is not None else task
        ctx.send_to(task.upstream, template.replace("{id}", task.upstream_id))
        ctx.state[READ] = Read(api, task)

    def owns(self, ctx: RequestContext) -> bool:
        """Whether this request is a task submit or read that task billing took on."""
        return SUBMIT in ctx.state or READ in ctx.state

    async def on_body(self, ctx: RequestContext, body: bytes) -> bytes:
        """Open the submitted task (the ids swapped), or read a task's answer."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        st = ctx.state.get(SUBMIT)
        if st is not None:
            return await self._opened(ctx, st, doc, body)
        rd = ctx.state[READ]
        if doc is None:
            return body
        if ctx.endpoint is Endpoint.VIDEO_DELETE:
            rd.deleted = isinstance(doc, dict) and doc.get("deleted") is True
            pointer_set(doc, "/id", rd.task.id)
        else:
            rd.seen = rd.api.observe(doc)
            pointer_set(doc, rd.api.fetch_id, rd.task.id)
        return orjson.dumps(doc)

    async def _opened(self, ctx: RequestContext, st: Submit, doc: Any, body: bytes) -> bytes:
        upstream_id = pointer_get(doc, st.api.submit_id)
        if isinstance(upstream_id, bool) or not isinstance(upstream_id, (str, int)) or upstream_id == "":
            st.refused = "the upstream's answer carries no task id: it refused the task"
            return body
        now, up = self.clock(), ctx.upstream
        seen = st.api.observe(doc).state if st.api.status else None
        task = replace(
            st.task,
            upstream=up.name if up else "",
            upstream_model=(up.model or "") if up else "",
            upstream_id=str(upstream_id),
            status=seen or "queued",
            next_poll_at=now + self.engine.config.poll_every,
        )
        if not await self.engine.store.open_task(task):
            raise RuntimeError(f"task {task.id}: its hold is no longer open")
        st.task, st.opened = task, True
        pointer_set(doc, st.api.submit_id, task.id)
        if st.api.fetch_id and st.api.fetch_id != st.api.submit_id:
            pointer_set(doc, st.api.fetch_id, task.id)
        return orjson.dumps(doc)

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        """A submit that opened no task gives its hold back; a read that saw the end ends it."""
        st = ctx.state.get(SUBMIT)
        if st is not None:
            if not st.opened:
                await self._give_back(
                    ctx, st, "refused", st.refused or f"no task was opened ({outcome.reason})", outcome.status
                )
            self.sweeper.done(st.task.id)
            return
        rd = ctx.state[READ]
        if not rd.task.open or outcome.status // 100 != 2:
            return
        if rd.deleted:
            await self.engine.end(rd.task, "deleted", None, "deleted by the client before it completed", http=200)
        elif rd.seen is not None:
            await self.engine.observe(rd.task, rd.seen)

    async def on_error(self, ctx: RequestContext, error: ProxyError) -> None:
        """A refused submit gives its hold back at once; a read answered 404 counts a miss."""
        st = ctx.state.get(SUBMIT)
        if st is not None:
            await self._give_back(ctx, st, error.reason.value, error.message, error.status)
            self.sweeper.done(st.task.id)
            return
        rd = ctx.state[READ]
        reads = (Endpoint.VIDEO, Endpoint.TASK_FETCH)
        if rd.task.open and error.upstream_status == 404 and ctx.endpoint in reads:
            await self.engine.missing(rd.task)

    async def _give_back(self, ctx: RequestContext, st: Submit, reason: str, why: str, status: int) -> None:
        task = st.task
        if st.opened:  # the client never got the id: end the task unbilled
            await self.engine.end(task, "refused", None, f"the client was not answered: {why}", http=status)
            return
        up = ctx.upstream
        details = LogDetails(
            reason,
            "none",
            task.model,
            (up.model or "") if up else "",
            up.name if up else "",
            task.key_name,
            task.group,
            str(TaskTerms.from_json(task.terms).multiplier),
            False,
            latency_ms=int(ctx.elapsed_ms),
            status=status,
            error=why[:500],
            seconds=task.seconds,
        )
        await self.settler.release_if_held(task.id, details)

    def _give_back_later(self, task_id: str, details: LogDetails) -> None:
        async def give_back() -> None:
            try:
                await self.settler.release_if_held(task_id, details)
            finally:
                self.sweeper.done(task_id)

        self.engine.host.tasks.spawn(give_back(), name=f"release-unknown:{task_id}")
