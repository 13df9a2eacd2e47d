"""`RedisStore`: the accounting store on Redis, for several proxy instances sharing one store.

Every step that moves money is one Lua script (`proxy/store/lua/`), loaded once and run by
SHA; redis-py's registered scripts reload themselves after a `NOSCRIPT` (a `SCRIPT FLUSH`
or a failover). Times come from the injected clock and reach the scripts as ARGV, never
from `TIME`, so a fake clock drives them in tests.

Key layout: see `proxy.store.redis_layout`. Everything about one user lives under the hash
tag `{u:<name>}`, so each script passes all its keys in KEYS and stays in one Redis Cluster
slot; global indexes (users, request ids, key hashes, plans, heartbeats, the log index) have
tags of their own and are written in a separate step.

Money never depends on a cross-slot write: balances, reservations, counters, the ledger and
the log row of a request all live in its user's slot. The indexes are written *before* the
script that needs them to be findable (a user is listed, a request mapped, a log id
indexed, a user marked as having open holds), so a crash in between leaves at worst an
entry that points at nothing, which readers skip. The open-users mark is written again
after a hold, and the resolver only drops a user after re-checking the user's own set.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from proxy.store import ledger_rules as rules
from proxy.store import redis_records as records
from proxy.store.base import (
    ApiKey,
    AuditReport,
    Hold,
    HoldRefusal,
    HoldState,
    LogDetails,
    LogRow,
    Plan,
    Preference,
    Refusal,
    Resolution,
    StoreError,
    Subscription,
    User,
)
from proxy.store.redis_core import RedisCore, guarded
from proxy.store.redis_layout import (
    Layout,
    details_json,
    dump_opt,
    fmt_time,
    pairs,
    plan_json,
    sub_target,
    to_hold,
    to_key,
    to_plan,
    to_subscription,
    to_user,
    usable_subscriptions,
)


MAX_UNITS = 2**53 - 1
"""The largest amount a Lua number (a double) holds exactly; larger ones are refused."""


def _units(value: int, what: str, *, signed: bool = False) -> int:
    if not signed and value < 0:
        raise StoreError(f"{what} must be >= 0")
    if abs(value) > MAX_UNITS:
        raise StoreError(f"{what} must not exceed {MAX_UNITS} quota units")
    return int(value)


class RedisStore:
    """The `proxy.store.base.Store` protocol on `redis.asyncio` (see the module docstring)."""

    def __init__(
        self, url: str, *, prefix: str = "weir", clock: Callable[[], float] = time.time, timeout: float = 5.0,
        cluster: bool = False,
    ) -> None:
        """Configure; nothing connects until `open()`. `prefix` must not contain braces.
        `cluster=True` talks to a Redis Cluster, `url` naming any one of its nodes."""
        self._k = Layout(prefix)
        self._core = RedisCore(url, timeout, cluster=cluster)
        self._clock = clock

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
        client = self._core.client
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self._k.prefix) + ":*"
        batch: list[str] = []
        async for key in client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                await client.unlink(*batch)
                batch = []
        if batch:
            await client.unlink(*batch)

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        return await self._core.run(name, keys, args)

    # users ----------------------------------------------------------------------------
    @guarded
    async def create_user(
        self, name: str, group: str = "default", preference: Preference = Preference.SUBSCRIPTION_FIRST
    ) -> User:
        """Create a user with an empty wallet. StoreError if the name exists."""
        await self._core.client.sadd(self._k.users, name)  # first: a listed name without a user is skipped
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

    @guarded
    async def credit(self, user: str, amount: int, note: str = "") -> User:
        """Add `amount` (negative for an adjustment) to the wallet, with a ledger entry."""
        reply = await self._run(
            "credit", [self._k.user(user), self._k.ledger(user)],
            [_units(amount, "a credit", signed=True), fmt_time(self._clock()), note],
        )
        return to_user(pairs(reply))

    @guarded
    async def set_user(
        self, name: str, *, group: str | None = None, preference: Preference | None = None
    ) -> User:
        """Change a user's group or billing preference (None or "" keeps the current one)."""
        args: list[str] = []
        if group:
            args += ["group", group]
        if preference:
            args += ["preference", Preference(preference).value]
        return to_user(pairs(await self._run("set_user", [self._k.user(name)], args)))

    # keys -----------------------------------------------------------------------------
    @guarded
    async def create_key(
        self,
        user: str,
        key_hash: str,
        *,
        name: str = "",
        quota: int | None = None,
        models: Sequence[str] = (),
        ips: Sequence[str] = (),
        group: str | None = None,
        expires_at: float | None = None,
        hint: str = "",
    ) -> ApiKey:
        """Record a key by its hash (unique across users); a quota is a `credit` entry."""
        k, key_id, now = self._k, "k_" + secrets.token_hex(6), self._clock()
        limit = "" if quota is None else _units(quota, "a key quota")
        if await self._core.hget(k.user(user), "name") is None:
            raise StoreError(f"unknown user {user!r}")
        # Claim the hash first: the global index is what makes it unique across slots.
        if not await self._core.client.hsetnx(k.key_hashes, key_hash, f"{key_id} {user}"):
            raise StoreError("a key with this hash already exists")
        await self._core.client.hset(k.key_ids, key_id, user)
        static = [
            "user", user, "name", name, "status", "active", "key_hash", key_hash,
            "expires_at", "" if expires_at is None else fmt_time(expires_at), "models", dump_opt(list(models)),
            "ips", dump_opt(list(ips)), "group", dump_opt(group), "created_at", fmt_time(now), "hint", hint,
        ]
        try:
            reply = await self._run(
                "create_key", [k.user(user), k.key(user, key_id), k.key_list(user), k.ledger(user)],
                [key_id, limit, fmt_time(now), *static],
            )
        except StoreError:
            await self._core.batch([("hdel", (k.key_hashes, key_hash)), ("hdel", (k.key_ids, key_id))])
            raise
        return to_key(pairs(reply))

    @guarded
    async def get_key(self, key_id: str) -> ApiKey | None:
        """A key by its public id."""
        user = await self._core.hget(self._k.key_ids, key_id)
        h = {} if user is None else await self._core.hgetall(self._k.key(user, key_id))
        return to_key(h) if h else None

    @guarded
    async def find_key(self, key_hash: str) -> ApiKey | None:
        """A key by the SHA-256 hex of its clear text."""
        entry = await self._core.hget(self._k.key_hashes, key_hash)
        if entry is None:
            return None
        key_id, user = entry.split(" ", 1)
        h = await self._core.hgetall(self._k.key(user, key_id))
        return to_key(h) if h.get("key_hash") == key_hash else None

    @guarded
    async def list_keys(self, user: str) -> list[ApiKey]:
        """A user's keys, oldest first."""
        ids = await self._core.lrange(self._k.key_list(user))
        return [to_key(h) for h in await self._core.batch([("hgetall", (self._k.key(user, i),)) for i in ids]) if h]

    @guarded
    async def set_key_status(self, key_id: str, status: str) -> ApiKey:
        """Set "active", "disabled" or "revoked". Revocation is final: StoreError afterwards."""
        if status not in rules.KEY_STATUSES:
            raise StoreError(f"unknown key status {status!r}")
        user = await self._core.hget(self._k.key_ids, key_id)
        if user is None:
            raise StoreError(f"unknown key {key_id!r}")
        return to_key(pairs(await self._run("set_key_status", [self._k.key(user, key_id)], [status])))

    # plans and subscriptions ------------------------------------------------------------
    @guarded
    async def create_plan(self, plan: Plan) -> Plan:
        """Create or replace a plan (existing subscriptions keep the terms they were granted)."""
        try:
            rules.validate_period(plan.period)
        except ValueError as exc:
            raise StoreError(str(exc)) from exc
        _units(plan.quota, "a plan quota")
        await self._core.client.hset(self._k.plans, plan.name, plan_json(plan))
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
        meta = json.dumps({"start": fmt_time(start), "end": fmt_time(end), "period": p.period, "models": list(p.models)})
        reply = await self._run(
            "grant", [k.user(user), k.sub(user, sub_id), k.sub_list(user), k.ledger(user), k.sub_meta(user)],
            [sub_id, p.name, p.quota, p.period, fmt_time(start), fmt_time(end), dump_opt(list(p.models)), fmt_time(now), meta, fmt_time(first)],
        )
        return to_subscription(pairs(reply))

    @guarded
    async def list_subscriptions(self, user: str) -> list[Subscription]:
        """A user's subscriptions, rolled over to the current period, ending soonest first."""
        now = self._clock()
        metas = await self._core.hgetall(self._k.sub_meta(user))
        ids = sorted(metas, key=lambda i: (float(json.loads(metas[i])["end"]), i))
        reply = await self._run(
            "rollover", [self._k.ledger(user), *(self._k.sub(user, i) for i in ids)],
            [fmt_time(now), *(sub_target(metas[i], now) for i in ids)],
        )
        return [to_subscription(pairs(h)) for h in reply if h]

    # holds ------------------------------------------------------------------------------
    @guarded
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
        """Check the key and a funding source and reserve, in one script (see base.Store.hold)."""
        _units(amount, "a hold amount")
        k, now = self._k, self._clock()
        _, owner, metas, _ = await self._core.batch([
            ("hsetnx", (k.requests, request_id, user)), ("hget", (k.requests, request_id)),
            ("hgetall", (k.sub_meta(user),)), ("sadd", (k.open_users, user)),
        ])
        if owner != user:  # the request id is another user's: return that hold if it exists
            existing = await self._core.hgetall(k.hold(owner, request_id))
            if existing:
                return to_hold(existing)
            await self._core.client.hset(k.requests, request_id, user)
        offers = usable_subscriptions(metas, now, model)
        reply = await self._run(
            "hold",
            [k.user(user), k.hold(user, request_id), k.key(user, key_id), k.open_holds(user), k.ledger(user),
             *(k.sub(user, sub_id) for sub_id, _ in offers)],
            [request_id, key_id, int(amount), "" if preference is None else Preference(preference).value,
             price_version, fmt_time(now), fmt_time(now + ttl), instance_id, model, *(t for _, t in offers)],
        )
        if reply[0] == "refused":
            return HoldRefusal(Refusal(reply[1]), int(reply[2]), int(reply[3]))
        held = to_hold(pairs(reply[1]))
        if held.state is HoldState.OPEN:  # again after: the resolver may have dropped the mark meanwhile
            await self._core.client.sadd(k.open_users, user)
        return held

    @guarded
    async def get_hold(self, request_id: str) -> Hold | None:
        """A hold in any state."""
        user = await self._core.hget(self._k.requests, request_id)
        h = {} if user is None else await self._core.hgetall(self._k.hold(user, request_id))
        return to_hold(h) if h else None

    @guarded
    async def checkpoint(self, request_id: str, charge_so_far: int) -> bool:
        """Record the charge delivered so far on an open hold. False if not open."""
        _units(charge_so_far, "a checkpoint")
        user = await self._core.hget(self._k.requests, request_id)
        if user is None:
            return False
        return bool(await self._run("checkpoint", [self._k.hold(user, request_id)], [int(charge_so_far)]))

    @guarded
    async def capture(self, request_id: str, actual: int, log: LogDetails) -> Resolution:
        """Charge `actual` (overage to the wallet), counters and log row in one script. Idempotent."""
        _units(actual, "a charge")
        return await self._settle("capture", request_id, log, int(actual))

    @guarded
    async def release(self, request_id: str, log: LogDetails) -> Resolution:
        """Give the whole hold back and append the log row (charge 0). Idempotent."""
        return await self._settle("release", request_id, log, 0)

    async def _settle(self, script: str, request_id: str, log: LogDetails, actual: int) -> Resolution:
        user = await self._core.hget(self._k.requests, request_id)
        h = {} if user is None else await self._core.hgetall(self._k.hold(user, request_id))
        if user is None or not h:
            raise StoreError(f"unknown hold {request_id!r}")
        return await self._resolve(script, user, h, log, actual)

    async def _resolve(self, script: str, user: str, h: dict[str, str], log: LogDetails, actual: int) -> Resolution:
        """Run a settlement script on hold `h` (a repeat returns the stored outcome)."""
        k, rid, now = self._k, h["request_id"], self._clock()
        if h["state"] != HoldState.OPEN:
            return Resolution(rid, HoldState(h["state"]), int(h.get("charged") or 0), int(h.get("overage") or 0), False)
        sub_key, target = k.no_sub(user), ""
        if h["source"] == "subscription":
            sub_key = k.sub(user, h["subscription_id"])
            target = sub_target(await self._core.hget(k.sub_meta(user), h["subscription_id"]), now)
        log_id = await self._run("log_id", [k.log_seq, k.log_global], [user])
        r = await self._run(
            script,
            [k.user(user), k.hold(user, rid), k.key(user, h["key_id"]), sub_key, k.open_holds(user),
             k.ledger(user), k.log_rows(user), k.log_index(user), k.upstream_used(user), k.upstream_count(user)],
            [fmt_time(now), target, int(log_id), details_json(log), log.upstream, actual],
        )
        return Resolution(rid, HoldState(r[0]), int(r[1]), int(r[2]), bool(int(r[3])))

    @guarded
    async def open_holds(self) -> list[Hold]:
        """Every unresolved hold, oldest first."""
        holds = [to_hold(h) for _, h in await records.open_hold_hashes(self._core, self._k)]
        return sorted(holds, key=lambda h: (h.created_at, h.request_id))

    # instances and orphans ------------------------------------------------------------------
    @guarded
    async def heartbeat(self, instance_id: str) -> None:
        """Record that `instance_id` is alive now."""
        await self._core.client.hset(self._k.instances, instance_id, fmt_time(self._clock()))

    @guarded
    async def resolve_orphans(self, now: float, orphan_after: float) -> list[Resolution]:
        """Expire open holds of instances silent since `now - orphan_after` (or never seen) and
        holds past their ttl: capture the checkpoint (overage rule), release the rest; log
        `orphaned`. Each hold has one winner across racing resolvers; only this call's wins
        are returned."""
        beats = await records.heartbeats(self._core, self._k)
        won: list[Resolution] = []
        for user, h in sorted(await records.open_hold_hashes(self._core, self._k),
                              key=lambda uh: (float(uh[1]["created_at"]), uh[1]["request_id"])):
            seen = beats.get(h["instance_id"])
            if float(h["expires_at"]) >= now and seen is not None and seen >= now - orphan_after:
                continue
            details = LogDetails(end_reason="orphaned", usage_source="none", model=h.get("model", ""))
            res = await self._resolve("expire", user, h, details, 0)
            if res.first:
                won.append(res)
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
    ) -> list[LogRow]:
        """Consume-log rows, newest first, `since <= ts < until`; page with `before_id`."""
        return await records.query_logs(self._core, self._k, user, since, until, limit, before_id)

    @guarded
    async def upstream_stats(self) -> dict[str, tuple[int, int]]:
        """Per upstream name: (used quota, request count)."""
        return await records.upstream_stats(self._core, self._k)

    @guarded
    async def audit(self, now: float, orphan_after: float) -> AuditReport:
        """Recompute every total from the ledger, user by user, from atomic snapshots."""
        return await records.audit(self._core, self._k, now, orphan_after)

