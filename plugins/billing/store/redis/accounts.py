"""The account edits of `RedisStore`: wallet movements by hand, user and key changes,
cancelling subscriptions, deleting plans, and the readers behind `weir ledger` and the
consume-log totals.

Every change to money or to a key is one script in the user's slot (`lua/credit.lua`,
`lua/update_key.lua`, `lua/cancel.lua`) that journals what it moves, with the `actor` who
asked for it (the entry's `by`). Subscriptions are found by id through `{subid}` (written
at grant, before the script); ones granted before that index existed are found by a scan
of the users, once, and indexed then.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fnmatch import fnmatchcase

from plugins.billing.store import edits, rules
from plugins.billing.store.base import (
    ApiKey,
    KeyChanges,
    LedgerEntry,
    LedgerPage,
    LogRow,
    LogTotals,
    Preference,
    StoreError,
    Subscription,
    User,
)
from plugins.billing.store.redis.client import RedisCore, guarded
from plugins.billing.store.redis.cross_slot import query_logs
from plugins.billing.store.redis.layout import Layout, units
from plugins.billing.store.redis.rows import dump_opt, fmt_time, pairs, sub_target, to_key, to_subscription, to_user

_CHUNK = 500
_TOTALS_PAGE = 1000


def key_fields(changes: KeyChanges) -> list[str]:
    """The key hash's field/value pairs a KeyChanges sets (the quota aside)."""
    out: list[str] = []
    if changes.name is not None:
        out += ["name", changes.name]
    if changes.status is not None:
        out += ["status", changes.status]
    if changes.models is not None:
        out += ["models", dump_opt(list(changes.models))]
    if changes.ips is not None:
        out += ["ips", dump_opt(list(changes.ips))]
    if changes.group is not None:
        out += ["group", dump_opt(changes.group or None)]
    if changes.no_expiry or changes.expires_at is not None:
        out += ["expires_at", "" if changes.expires_at is None else fmt_time(changes.expires_at)]
    return out


def to_entry(index: int, raw: str) -> LedgerEntry:
    """The ledger list's entry at `index` (from 0) as a LedgerEntry (its id is index + 1)."""
    e = json.loads(raw)
    return LedgerEntry(
        id=index + 1,
        ts=float(e["t"]),
        account=str(e["a"]),
        kind=str(e["k"]),
        d_balance=int(e["b"]),
        d_reserved=int(e["r"]),
        request_id=str(e.get("ref") or ""),
        note=str(e.get("note") or ""),
        actor=str(e.get("by") or ""),
    )


def log_matcher(key_id: str | None, model: str | None, end_reason: str | None) -> Callable[[LogRow], bool] | None:
    """A predicate for the consume-log filters that have no index (None: no filter)."""
    if key_id is None and model is None and end_reason is None:
        return None

    def match(row: LogRow) -> bool:
        return (
            (key_id is None or row.key_id == key_id)
            and (model is None or fnmatchcase(row.details.model, model))
            and (end_reason is None or row.details.end_reason == end_reason)
        )

    return match


def is_refund(charge: int, estimate: int) -> bool:
    """A log row that held something and charged nothing: its hold was given back whole."""
    return charge == 0 and estimate > 0


class RedisAccounts:
    """The account-edit methods of the `Store` protocol on Redis (`RedisStore` adds the rest)."""

    _core: RedisCore
    _k: Layout
    _clock: Callable[[], float]

    @guarded
    async def credit(self, user: str, amount: int, note: str = "", *, actor: str = "") -> User:
        """Add `amount` (negative for an adjustment) to the wallet, with a ledger entry
        recording `note` and `actor`."""
        reply = await self._core.run(
            "credit",
            [self._k.user(user), self._k.ledger(user)],
            [units(amount, "a credit", signed=True), fmt_time(self._clock()), note, actor],
        )
        return to_user(pairs(reply))

    @guarded
    async def set_user(
        self,
        name: str,
        *,
        group: str | None = None,
        preference: Preference | None = None,
        disabled: bool | None = None,
    ) -> User:
        """Change a user's group, billing preference or disabled flag (None or "" keeps it)."""
        args: list[str] = []
        if group:
            args += ["group", group]
        if preference:
            args += ["preference", Preference(preference).value]
        if disabled is not None:
            args += ["disabled", "1" if disabled else "0"]
        return to_user(pairs(await self._core.run("set_user", [self._k.user(name)], args)))

    @guarded
    async def update_key(self, key_id: str, changes: KeyChanges, *, actor: str = "") -> ApiKey:
        """Apply `changes` to a key in one script (see `Store.update_key`)."""
        edits.check_key_changes(changes)
        quota = "unlimited" if changes.unlimited else ""
        if changes.quota is not None:
            quota = str(units(changes.quota, "a key quota"))
        user = await self._core.hget(self._k.key_ids, key_id)
        if user is None:
            raise StoreError(f"unknown key {key_id!r}")
        reply = await self._core.run(
            "update_key",
            [self._k.key(user, key_id), self._k.ledger(user)],
            [fmt_time(self._clock()), actor, quota, *key_fields(changes)],
        )
        return to_key(pairs(reply))

    async def _sub_owner(self, sub_id: str) -> str | None:
        """The user a subscription belongs to: from `{subid}`, else by a scan (then indexed)."""
        user = await self._core.hget(self._k.sub_ids, sub_id)
        if user is not None:
            return user
        users = sorted(await self._core.smembers(self._k.users))
        found = await self._core.batch([("hexists", (self._k.sub_meta(u), sub_id)) for u in users])
        for name, there in zip(users, found, strict=True):
            if there:
                await self._core.call("hset", self._k.sub_ids, sub_id, name)
                return name
        return None

    @guarded
    async def get_subscription(self, sub_id: str) -> Subscription | None:
        """A subscription by id, as stored, or None."""
        user = await self._sub_owner(sub_id)
        h = {} if user is None else await self._core.hgetall(self._k.sub(user, sub_id))
        return to_subscription(h) if h else None

    @guarded
    async def cancel_subscription(self, sub_id: str) -> Subscription:
        """End a subscription now, in one script (see `Store.cancel_subscription`)."""
        k, now = self._k, self._clock()
        user = await self._sub_owner(sub_id)
        meta = None if user is None else await self._core.hget(k.sub_meta(user), sub_id)
        if user is None or meta is None:
            raise StoreError(f"unknown subscription {sub_id!r}")
        terms = json.loads(meta)
        ends = max(now, float(terms["start"]))
        terms["end"] = fmt_time(ends)
        reply = await self._core.run(
            "cancel",
            [k.sub(user, sub_id), k.ledger(user), k.sub_meta(user)],
            [fmt_time(now), sub_target(meta, now), sub_id, json.dumps(terms), fmt_time(ends)],
        )
        return to_subscription(pairs(reply))

    @guarded
    async def delete_plan(self, name: str) -> None:
        """Delete a plan nobody is subscribed to (see `Store.delete_plan`). The check scans
        every user's subscriptions (there is no index by plan)."""
        if await self._core.hget(self._k.plans, name) is None:
            raise StoreError(f"unknown plan {name!r}")
        now, users = self._clock(), sorted(await self._core.smembers(self._k.users))
        metas = await self._core.batch([("hgetall", (self._k.sub_meta(u),)) for u in users])
        running = [
            (u, sub_id)
            for u, m in zip(users, metas, strict=True)
            for sub_id, raw in m.items()
            if float(json.loads(raw)["end"]) > now
        ]
        plans = await self._core.batch([("hget", (self._k.sub(u, s), "plan")) for u, s in running])
        subscribed = sorted({u for (u, _), plan in zip(running, plans, strict=True) if plan == name})
        if subscribed:
            raise StoreError(edits.plan_in_use(name, subscribed))
        await self._core.call("hdel", self._k.plans, name)

    @guarded
    async def ledger_entries(
        self, user: str, *, limit: int = 50, before_id: int | None = None, everything: bool = False
    ) -> LedgerPage:
        """A page of the user's ledger, newest first (see `Store.ledger_entries`). The
        balance and the ledger's length are read together; entries below that length never
        change (the ledger is append-only), so the rest is read in chunks."""
        k, wallet = self._k, rules.account("wallet", user)
        balance, length = await self._core.run("ledger_head", [k.user(user), k.ledger(user)], [])
        if balance is None:
            raise StoreError(f"unknown user {user!r}")
        end = int(length) if before_id is None else max(0, min(before_id - 1, int(length)))
        later = 0
        for lo in range(end, int(length), _CHUNK):
            for raw in await self._core.call("lrange", k.ledger(user), lo, min(lo + _CHUNK, int(length)) - 1):
                e = json.loads(raw)
                later += int(e["b"]) if e["a"] == wallet else 0
        entries: list[LedgerEntry] = []
        while end > 0 and len(entries) < limit:
            lo = max(0, end - _CHUNK)
            chunk = await self._core.call("lrange", k.ledger(user), lo, end - 1)
            for i in range(len(chunk) - 1, -1, -1):
                entry = to_entry(lo + i, chunk[i])
                if everything or (entry.account == wallet and entry.d_balance != 0):
                    entries.append(entry)
            end = lo
        return LedgerPage(int(balance) - later, entries[: max(limit, 0)])

    @guarded
    async def log_totals(
        self,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        *,
        key_id: str | None = None,
        model: str | None = None,
        end_reason: str | None = None,
    ) -> LogTotals:
        """Sums over the consume-log rows the filters match: every matching row is read
        (a key's from its user's log alone)."""
        if key_id is not None and user is None:
            user = await self._core.hget(self._k.key_ids, key_id)
            if user is None:
                return LogTotals()
        match = log_matcher(key_id, model, end_reason)
        requests = charged = overage = refunds = refunded = 0
        before: int | None = None
        while True:
            rows = await query_logs(self._core, self._k, user, since, until, _TOTALS_PAGE, before, match)
            for r in rows:
                requests, charged, overage = requests + 1, charged + r.charge, overage + r.overage
                if is_refund(r.charge, r.estimate):
                    refunds, refunded = refunds + 1, refunded + r.estimate
            if len(rows) < _TOTALS_PAGE:
                return LogTotals(requests, charged, overage, refunds, refunded)
            before = rows[-1].id
