"""`RedisStore`: the accounting store on Redis, for several proxy instances sharing one store.

Every step that moves money is one Lua script (`plugins/billing/store/redis/lua/`), run by SHA; redis-py's
registered scripts reload themselves after a `NOSCRIPT` (a `SCRIPT FLUSH` or a failover).
Times come from the injected clock as ARGV, never from `TIME`, so a fake clock drives them.

Keys: see `plugins.billing.store.redis.layout`. Everything about one user lives under the hash tag
`{u:<name>}`, so each script passes all its keys in KEYS and stays in one Redis Cluster
slot; global indexes (users, request ids, key hashes, plans, heartbeats, the log index)
have tags of their own and are written in separate commands *before* the script that
needs them to be findable, so a crash in between leaves at worst an entry that points at
nothing, which readers skip (on a single server, where slots do not matter, the hold and
settlement scripts write the request index, the open mark and the global log index
themselves). Money never depends on a cross-slot write.

A billed request costs two round trips, one command each on a single server: the hold
script (`plugins.billing.store.redis.hold`, which on one server also claims the request id and marks
the user; on a Cluster those two are pipelined before it) and a settlement script, which
also takes the global log id (on a Cluster a settlement reserves its log id first: that
counter lives in a slot of its own). The process remembers what it
held (`HeldMemory`), so settling needs no lookup; holds made elsewhere are found through
the request index. On a Cluster, a resolver that drops a user's open mark raises a flag in
the user's slot, and the hold script that finds it has its caller mark the user again.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from plugins.billing.store import rules
from plugins.billing.store.base import (
    AuditReport,
    Hold,
    HoldRefusal,
    LogDetails,
    LogRow,
    Plan,
    Preference,
    Resolution,
    StoreError,
    Subscription,
    User,
)
from plugins.billing.store.redis import cross_slot as records
from plugins.billing.store.redis.accounts import RedisAccounts, log_matcher
from plugins.billing.store.redis.client import RedisCore, guarded, translate
from plugins.billing.store.redis.hold import Holder
from plugins.billing.store.redis.keys import RedisKeys
from plugins.billing.store.redis.layout import MAX_UNITS, HeldMemory, KnownTerms, Layout, units
from plugins.billing.store.redis.prices import RedisPrices
from plugins.billing.store.redis.rows import (
    dump_opt,
    fmt_time,
    pairs,
    plan_json,
    sub_target,
    to_hold,
    to_plan,
    to_subscription,
    to_user,
)
from plugins.billing.store.redis.tasks import RedisTasks

__all__ = ["MAX_UNITS", "RedisStore"]

_TRANSLATE = translate()


class RedisStore(RedisPrices, RedisTasks, RedisAccounts, RedisKeys):
    """The `plugins.billing.store.base.Store` protocol on `redis.asyncio` (see the module docstring);
    the price versions are in `RedisPrices`, the async tasks in `RedisTasks`, the account
    edits in `RedisAccounts`, the API keys in `RedisKeys`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "weir",
        clock: Callable[[], float] = time.time,
        timeout: float = 5.0,
        cluster: bool = False,
        max_connections: int = 64,
    ) -> None:
        """Configure; nothing connects until `open()`. `prefix` must not contain braces.
        `cluster=True` talks to a Redis Cluster, `url` naming any one of its nodes. At most
        `max_connections` commands are in flight at once (per store); more callers queue."""
        self._k = Layout(prefix)
        self._core = RedisCore(url, timeout, cluster=cluster, max_connections=max_connections)
        self._clock = clock
        self._held = HeldMemory()
        self._terms = KnownTerms()
        self._holder = Holder(self._core, self._k, clock, self._held, self._terms)

    # lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and register the scripts; StoreUnavailable names `store.url`."""
        await self._core.open()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._core.close()

    async def ping(self) -> bool:
        """True when Redis answers."""
        return await self._core.ping()

    @guarded
    async def drop_all(self) -> None:
        """Delete every key under the prefix (tests use it). On a cluster SCAN walks every
        primary and UNLINK is split by slot (both done by RedisCluster)."""
        self._held.clear()
        self._terms.clear()
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self._k.prefix) + ":*"
        keys = await self._core.scan(pattern)
        for i in range(0, len(keys), 500):
            await self._core.call("unlink", *keys[i : i + 500])

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        return await self._core.run(name, keys, args)

    # users ----------------------------------------------------------------------------
    @guarded
    async def create_user(
        self, name: str, group: str = "default", preference: Preference = Preference.SUBSCRIPTION_FIRST
    ) -> User:
        """Create a user with an empty wallet. StoreError if the name exists."""
        await self._core.call("sadd", self._k.users, name)  # first: a listed name without a user is skipped
        reply = await self._run(
            "create_user", [self._k.user(name)], [name, group, Preference(preference).value, fmt_time(self._clock())]
        )
        return to_user(pairs(reply))

    @guarded
    async def get_user(self, name: str) -> User | None:
        """The user with current totals, or None."""
        h = await self._core.hgetall(self._k.user(name))
        return to_user(h) if h else None

    @guarded
    async def list_users(self) -> list[User]:
        """Every user, by name."""
        names = sorted(await self._core.smembers(self._k.users))
        return [to_user(h) for h in await self._core.batch([("hgetall", (self._k.user(n),)) for n in names]) if h]

    # plans and subscriptions ------------------------------------------------------------
    @guarded
    async def create_plan(self, plan: Plan) -> Plan:
        """Create or replace a plan (existing subscriptions keep the terms they were granted)."""
        try:
            rules.validate_period(plan.period)
        except ValueError as exc:
            raise StoreError(str(exc)) from exc
        units(plan.quota, "a plan quota")
        await self._core.call("hset", self._k.plans, plan.name, plan_json(plan))
        return plan

    @guarded
    async def get_plan(self, name: str) -> Plan | None:
        """A plan by name."""
        raw = await self._core.hget(self._k.plans, name)
        return None if raw is None else to_plan(raw)

    @guarded
    async def list_plans(self) -> list[Plan]:
        """Every plan, by name."""
        return sorted((to_plan(v) for v in (await self._core.hgetall(self._k.plans)).values()), key=lambda p: p.name)

    @guarded
    async def grant_subscription(self, user: str, plan: str, start: float, end: float) -> Subscription:
        """Give `user` a subscription to `plan`; the period current at grant is credited at once."""
        if end <= start:
            raise StoreError("a subscription must end after it starts")
        p = await self.get_plan(plan)
        if p is None:
            raise StoreError(f"unknown plan {plan!r}")
        k, sub_id, now = self._k, "s_" + secrets.token_hex(6), self._clock()
        first = rules.period_start(start, p.period, min(now, end))
        meta = json.dumps(
            {"start": fmt_time(start), "end": fmt_time(end), "period": p.period, "models": list(p.models)}
        )
        await self._core.call("hset", k.sub_ids, sub_id, user)  # first: an id that names nothing is skipped
        reply = await self._run(
            "grant",
            [k.user(user), k.sub(user, sub_id), k.sub_list(user), k.ledger(user), k.sub_meta(user)],
            [
                sub_id,
                p.name,
                p.quota,
                p.period,
                fmt_time(start),
                fmt_time(end),
                dump_opt(list(p.models)),
                fmt_time(now),
                meta,
                fmt_time(first),
            ],
        )
        return to_subscription(pairs(reply))

    @guarded
    async def list_subscriptions(self, user: str) -> list[Subscription]:
        """A user's subscriptions, rolled over to the current period, ending soonest first."""
        now = self._clock()
        metas = await self._core.hgetall(self._k.sub_meta(user))
        ids = sorted(metas, key=lambda i: (float(json.loads(metas[i])["end"]), i))
        reply = await self._run(
            "rollover",
            [self._k.ledger(user), *(self._k.sub(user, i) for i in ids)],
            [fmt_time(now), *(sub_target(metas[i], now) for i in ids)],
        )
        return [to_subscription(pairs(h)) for h in reply if h]

    # holds ------------------------------------------------------------------------------
    # hold and capture translate errors themselves (`with _TRANSLATE`), not through @guarded:
    # on the request path, the decorator's coroutine of its own is a layer too many.
    async def hold(
        self,
        request_id: str,
        user: str,
        key_id: str,
        amount: int,
        preference: Preference | None,
        price_version: str,
        ttl: float,
        instance_id: str,
        model: str = "",
    ) -> Hold | HoldRefusal:
        """Check the key and a funding source and reserve, in one script (see base.Store.hold
        and `plugins.billing.store.redis.hold`)."""
        with _TRANSLATE:
            return await self._holder.hold(
                request_id, user, key_id, amount, preference, price_version, ttl, instance_id, model
            )

    async def _owner(self, request_id: str) -> str | None:
        """The user a request id's hold belongs to: remembered, else from the index."""
        held = self._held.get(request_id)
        return held.user if held is not None else await self._core.hget(self._k.requests, request_id)

    @guarded
    async def get_hold(self, request_id: str) -> Hold | None:
        """A hold in any state."""
        user = await self._owner(request_id)
        h = {} if user is None else await self._core.hgetall(self._k.hold(user, request_id))
        if not h and request_id in self._held:  # remembered wrongly (the data was dropped)
            self._held.forget(request_id)
            return await self.get_hold(request_id)
        return to_hold(h) if h else None

    @guarded
    async def checkpoint(self, request_id: str, charge_so_far: int) -> bool:
        """Record the charge so far on an open hold, stamp `touched_at`, restart its ttl. False if not open."""
        units(charge_so_far, "a checkpoint")
        user = await self._owner(request_id)
        if user is None:
            return False
        args: list[str | int] = [int(charge_so_far), fmt_time(self._clock())]
        return bool(await self._run("checkpoint", [self._k.hold(user, request_id)], args))

    async def capture(self, request_id: str, actual: int, log: LogDetails) -> Resolution:
        """Charge `actual` (overage to the wallet), counters and log row in one script. Idempotent."""
        units(actual, "a charge")
        with _TRANSLATE:
            return await self._settle("capture", request_id, log, int(actual))

    @guarded
    async def release(self, request_id: str, log: LogDetails) -> Resolution:
        """Give the whole hold back and append the log row (charge 0). Idempotent."""
        return await self._settle("release", request_id, log, 0)

    async def _settle(self, script: str, request_id: str, log: LogDetails, actual: int) -> Resolution:
        held = self._held.get(request_id)
        if held is not None:
            result = await records.settle(self._core, self._k, script, request_id, held, log, actual, self._clock())
            self._held.forget(request_id)
            if result is not None:
                return result
            # Remembered wrongly (the data under the prefix was dropped): ask the index.
        return await records.settle_by_index(self._core, self._k, script, request_id, log, actual, self._clock())

    @guarded
    async def open_holds(self) -> list[Hold]:
        """Every unresolved hold, oldest first."""
        holds = [to_hold(h) for _, h in await records.open_hold_hashes(self._core, self._k)]
        return sorted(holds, key=lambda h: (h.created_at, h.request_id))

    # instances and orphans ------------------------------------------------------------------
    @guarded
    async def heartbeat(self, instance_id: str) -> None:
        """Record that `instance_id` is alive now."""
        await self._core.call("hset", self._k.instances, instance_id, fmt_time(self._clock()))

    @guarded
    async def instances(self) -> dict[str, float]:
        """Every instance id that ever heartbeat, with its last heartbeat."""
        return dict(sorted((await records.heartbeats(self._core, self._k)).items()))

    @guarded
    async def resolve_orphans(self, now: float, orphan_after: float) -> list[Resolution]:
        """Expire open holds of instances silent since `now - orphan_after` (or never seen) and
        holds past their ttl: capture the checkpoint (overage rule), release the rest; log
        `orphaned`. Each hold has one winner across racing resolvers; only this call's wins
        are returned."""
        won = await records.expire_orphans(self._core, self._k, now, orphan_after, self._clock)
        for res in won:
            self._held.forget(res.request_id)
        return won

    # records ------------------------------------------------------------------------------
    @guarded
    async def query_logs(
        self,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        before_id: int | None = None,
        *,
        key_id: str | None = None,
        model: str | None = None,
        end_reason: str | None = None,
    ) -> list[LogRow]:
        """Consume-log rows, newest first, `since <= ts < until`; page with `before_id`;
        `model` is a glob. A key's rows are read from its user's log alone."""
        if key_id is not None and user is None:
            user = await self._core.hget(self._k.key_ids, key_id)
            if user is None:
                return []
        match = log_matcher(key_id, model, end_reason)
        return await records.query_logs(self._core, self._k, user, since, until, limit, before_id, match)

    @guarded
    async def upstream_stats(self) -> dict[str, tuple[int, int]]:
        """Per upstream name: (used quota, request count)."""
        return await records.upstream_stats(self._core, self._k)

    @guarded
    async def audit(self, now: float, orphan_after: float, *, stuck_after: float | None = None) -> AuditReport:
        """Recompute every total from the ledger, user by user, from atomic snapshots (and list
        stuck holds); the async tasks' checks are mismatches too."""
        report = await records.audit(self._core, self._k, now, orphan_after, stuck_after)
        tasks = await self._task_audit()
        return AuditReport(report.mismatches + tasks, report.orphans, report.negatives, report.stuck)
