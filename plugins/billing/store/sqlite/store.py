"""`SQLiteStore`: the embedded accounting store, on aiosqlite.

Every method is one transaction, run whole and awaited once (`plugins.billing.store.sqlite.connection`;
read-modify-writes under `BEGIN IMMEDIATE`): on the connection's worker thread, or, for the
short steps of the request path marked `inline=True`, on the event loop when the store is idle. The transactions
themselves are the synchronous functions below (accounts) and in `plugins.billing.store.sqlite.ledger`
(holds and settlement); the decisions (funding choice, periods, overage, counters) are in
`plugins.billing.store.rules`; the ledger model in `plugins.billing.store.base`.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

from plugins.billing.store import rules
from plugins.billing.store.base import (
    ApiKey,
    AuditReport,
    Hold,
    HoldRefusal,
    HoldState,
    LogDetails,
    LogRow,
    Plan,
    Preference,
    Resolution,
    StoreError,
    Subscription,
    User,
)
from plugins.billing.store.sqlite import schema
from plugins.billing.store.sqlite.accounts import SQLiteAccounts
from plugins.billing.store.sqlite.audit import run_audit
from plugins.billing.store.sqlite.group_commit import BULK
from plugins.billing.store.sqlite.ledger import (
    Clock,
    Db,
    fetch_all,
    fetch_one,
    hold_tx,
    move,
    orphans_tx,
    resolve_tx,
    roll_subscription,
)
from plugins.billing.store.sqlite.prices import SQLitePrices
from plugins.billing.store.sqlite.tasks import SQLiteTasks

_READ = "DEFERRED"
_V = TypeVar("_V")


def _user(db: Db, name: str) -> User:
    row = fetch_one(db, "SELECT * FROM users WHERE name = ?", (name,))
    if row is None:
        raise StoreError(f"unknown user {name!r}")
    return schema.to_user(row)


def _key(db: Db, key_id: str) -> ApiKey:
    row = fetch_one(db, "SELECT * FROM api_keys WHERE id = ?", (key_id,))
    if row is None:
        raise StoreError(f"unknown key {key_id!r}")
    return schema.to_key(row)


def _create_user(db: Db, clock: Clock, name: str, group: str, preference: str) -> User:
    if fetch_one(db, "SELECT 1 FROM users WHERE name = ?", (name,)):
        raise StoreError(f"user {name!r} already exists")
    db.execute(
        "INSERT INTO users(name, grp, preference, created_at) VALUES (?, ?, ?, ?)",
        (name, group, preference, clock()),
    )
    return _user(db, name)


def _create_key(
    db: Db,
    clock: Clock,
    key_id: str,
    user: str,
    key_hash: str,
    name: str,
    quota: int | None,
    stored: tuple[float | None, str, str, str | None, str],
) -> ApiKey:
    """`stored`: expires_at, models (JSON), ips (JSON), group, hint, as the columns hold them."""
    _user(db, user)
    if fetch_one(db, "SELECT 1 FROM api_keys WHERE key_hash = ?", (key_hash,)):
        raise StoreError("a key with this hash already exists")
    now = clock()
    expires_at, models, ips, group, hint = stored
    db.execute(
        "INSERT INTO api_keys(id, user, key_hash, name, status, expires_at, quota, models,"
        " ips, grp, created_at, hint) VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?)",
        (key_id, user, key_hash, name, expires_at, quota, models, ips, group, now, hint),
    )
    if quota is not None:
        move(db, now, "key", key_id, "credit", quota, 0, note="key quota")
    return _key(db, key_id)


def _set_key_status(db: Db, key_id: str, status: str) -> ApiKey:
    key = _key(db, key_id)
    if key.status == "revoked" and status != "revoked":
        raise StoreError(f"key {key_id} is revoked")
    db.execute("UPDATE api_keys SET status = ? WHERE id = ?", (status, key_id))
    return _key(db, key_id)


def _create_plan(db: Db, plan: Plan) -> None:
    db.execute(
        "INSERT OR REPLACE INTO plans(name, quota, period, duration_days, models) VALUES (?, ?, ?, ?, ?)",
        (plan.name, plan.quota, plan.period, plan.duration_days, schema.dump_list(plan.models)),
    )


def _grant(db: Db, clock: Clock, sub_id: str, user: str, plan: str, start: float, end: float) -> Subscription:
    _user(db, user)
    prow = fetch_one(db, "SELECT * FROM plans WHERE name = ?", (plan,))
    if prow is None:
        raise StoreError(f"unknown plan {plan!r}")
    p = schema.to_plan(prow)
    now = clock()
    first = rules.period_start(start, p.period, min(now, end))
    db.execute(
        "INSERT INTO subscriptions(id, user, plan, quota, period, start, end_at, period_start,"
        " models) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sub_id, user, p.name, p.quota, p.period, start, end, first, schema.dump_list(p.models)),
    )
    move(db, now, "sub", sub_id, "credit", p.quota, 0, note=f"plan {p.name}: first period")
    return _sub(db, sub_id)


def _sub(db: Db, sub_id: str) -> Subscription:
    row = fetch_one(db, "SELECT * FROM subscriptions WHERE id = ?", (sub_id,))
    assert row is not None
    return schema.to_subscription(row)


def _subscriptions(db: Db, clock: Clock, user: str) -> list[Subscription]:
    rows = fetch_all(db, "SELECT * FROM subscriptions WHERE user = ? ORDER BY end_at, id", (user,))
    now = clock()
    return [schema.to_subscription(roll_subscription(db, r, now)) for r in rows]


# The ttl a hold was taken with is `expires_at - COALESCE(touched_at, created_at)`: a
# checkpoint keeps that difference (SQLite evaluates every right-hand side on the old row).
_CHECKPOINT = (
    "UPDATE holds SET checkpoint = ?, touched_at = ?, expires_at = ? + (expires_at - COALESCE(touched_at, created_at))"
    " WHERE request_id = ? AND state = 'open'"
)


def _checkpoint(db: Db, clock: Clock, request_id: str, charge_so_far: int) -> bool:
    now = clock()
    return db.execute(_CHECKPOINT, (charge_so_far, now, now, request_id)).rowcount > 0


def _heartbeat(db: Db, clock: Clock, instance_id: str) -> None:
    db.execute(
        "INSERT INTO instances(id, last_seen) VALUES (?, ?)"
        " ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen",
        (instance_id, clock()),
    )


def _instances(db: Db) -> dict[str, float]:
    return {str(r[0]): float(r[1]) for r in fetch_all(db, "SELECT id, last_seen FROM instances ORDER BY id")}


def _query_logs(db: Db, sql: str, params: tuple[object, ...]) -> list[LogRow]:
    return [schema.to_log_row(r) for r in fetch_all(db, sql, params)]


def _upstream_stats(db: Db) -> dict[str, tuple[int, int]]:
    rows = fetch_all(db, "SELECT * FROM upstream_counters ORDER BY name")
    return {r["name"]: (r["used"], r["request_count"]) for r in rows}


def _one(db: Db, sql: str, param: str, convert: Callable[[sqlite3.Row], _V]) -> _V | None:
    row = fetch_one(db, sql, (param,))
    return convert(row) if row else None


def _all(db: Db, sql: str, params: tuple[object, ...], convert: Callable[[sqlite3.Row], _V]) -> list[_V]:
    return [convert(r) for r in fetch_all(db, sql, params)]


class SQLiteStore(SQLitePrices, SQLiteTasks, SQLiteAccounts):
    """The `plugins.billing.store.base.Store` protocol on one SQLite file (safe across processes).
    The price versions are in `SQLitePrices`, the async tasks in `SQLiteTasks`, the account
    edits in `SQLiteAccounts` (all on `SQLiteConnection`)."""

    bulk = BULK

    # users ------------------------------------------------------------------------
    async def create_user(
        self, name: str, group: str = "default", preference: Preference = Preference.SUBSCRIPTION_FIRST
    ) -> User:
        """Create a user with an empty wallet. StoreError if the name exists."""
        return await self.run(_create_user, self._clock, name, group, Preference(preference).value)

    async def get_user(self, name: str) -> User | None:
        """The user, with current totals, or None."""
        sql = "SELECT * FROM users WHERE name = ?"
        return await self.run(_one, sql, name, schema.to_user, mode=_READ, inline=True)

    async def list_users(self) -> list[User]:
        """Every user, by name."""
        return await self.run(_all, "SELECT * FROM users ORDER BY name", (), schema.to_user, mode=_READ)

    # keys ---------------------------------------------------------------------------
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
        """Record a key by its hash. `quota` None means unlimited; a quota is a `credit` entry."""
        if quota is not None and quota < 0:
            raise StoreError("a key quota must be >= 0")
        stored = (expires_at, schema.dump_list(models), schema.dump_list(ips), group, hint)
        key_id = "k_" + secrets.token_hex(6)
        return await self.run(_create_key, self._clock, key_id, user, key_hash, name, quota, stored)

    async def get_key(self, key_id: str) -> ApiKey | None:
        """A key by its public id."""
        sql = "SELECT * FROM api_keys WHERE id = ?"
        return await self.run(_one, sql, key_id, schema.to_key, mode=_READ, inline=True)

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """A key by the SHA-256 hex of its clear text."""
        sql = "SELECT * FROM api_keys WHERE key_hash = ?"
        return await self.run(_one, sql, key_hash, schema.to_key, mode=_READ, inline=True)

    async def list_keys(self, user: str) -> list[ApiKey]:
        """A user's keys, oldest first."""
        sql = "SELECT * FROM api_keys WHERE user = ? ORDER BY created_at, rowid"
        return await self.run(_all, sql, (user,), schema.to_key, mode=_READ)

    async def set_key_status(self, key_id: str, status: str) -> ApiKey:
        """Set "active", "disabled" or "revoked". Revocation is final: StoreError afterwards."""
        if status not in rules.KEY_STATUSES:
            raise StoreError(f"unknown key status {status!r}")
        return await self.run(_set_key_status, key_id, status)

    # plans and subscriptions -----------------------------------------------------------
    async def create_plan(self, plan: Plan) -> Plan:
        """Create or replace a plan (existing subscriptions keep the terms they were granted)."""
        try:
            rules.validate_period(plan.period)
        except ValueError as exc:
            raise StoreError(str(exc)) from exc
        if plan.quota < 0:
            raise StoreError("a plan quota must be >= 0")
        await self.run(_create_plan, plan)
        return plan

    async def get_plan(self, name: str) -> Plan | None:
        """A plan by name."""
        return await self.run(_one, "SELECT * FROM plans WHERE name = ?", name, schema.to_plan, mode=_READ)

    async def list_plans(self) -> list[Plan]:
        """Every plan, by name."""
        return await self.run(_all, "SELECT * FROM plans ORDER BY name", (), schema.to_plan, mode=_READ)

    async def grant_subscription(self, user: str, plan: str, start: float, end: float) -> Subscription:
        """Give `user` a subscription to `plan`; its first period is credited at once."""
        if end <= start:
            raise StoreError("a subscription must end after it starts")
        return await self.run(_grant, self._clock, "s_" + secrets.token_hex(6), user, plan, start, end)

    async def list_subscriptions(self, user: str) -> list[Subscription]:
        """A user's subscriptions, rolled over to the current period, ending soonest first."""
        return await self.run(_subscriptions, self._clock, user)

    # holds ----------------------------------------------------------------------------
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
        """Check the key and the funds and reserve, in one `BEGIN IMMEDIATE` transaction."""
        if amount < 0:
            raise StoreError("a hold amount must be >= 0")
        return await self.run(
            hold_tx,
            self._clock,
            request_id,
            user,
            key_id,
            amount,
            preference,
            price_version,
            ttl,
            instance_id,
            model,
            inline=True,
        )

    async def checkpoint(self, request_id: str, charge_so_far: int) -> bool:
        """Record the charge delivered so far on an open hold, stamp `touched_at` and move
        `expires_at` to now plus the hold's ttl. False if not open."""
        if charge_so_far < 0:
            raise StoreError("a checkpoint must be >= 0")
        return await self.run(_checkpoint, self._clock, request_id, charge_so_far, inline=True)

    async def capture(self, request_id: str, actual: int, log: LogDetails) -> Resolution:
        """Charge `actual` (overage to the wallet), counters and log row, atomically. Idempotent."""
        if actual < 0:
            raise StoreError("a charge must be >= 0")
        return await self.run(resolve_tx, self._clock, request_id, HoldState.CAPTURED, actual, log, inline=True)

    async def release(self, request_id: str, log: LogDetails) -> Resolution:
        """Give the whole hold back and append the log row (charge 0). Idempotent."""
        return await self.run(resolve_tx, self._clock, request_id, HoldState.RELEASED, 0, log, inline=True)

    async def get_hold(self, request_id: str) -> Hold | None:
        """A hold in any state."""
        sql = "SELECT * FROM holds WHERE request_id = ?"
        return await self.run(_one, sql, request_id, schema.to_hold, mode=_READ, inline=True)

    async def open_holds(self) -> list[Hold]:
        """Every unresolved hold, oldest first."""
        sql = "SELECT * FROM holds WHERE state = 'open' ORDER BY created_at"
        return await self.run(_all, sql, (), schema.to_hold, mode=_READ)

    # instances and orphans -------------------------------------------------------------
    async def heartbeat(self, instance_id: str) -> None:
        """Record that `instance_id` is alive now."""
        await self.run(_heartbeat, self._clock, instance_id, inline=True)

    async def instances(self) -> dict[str, float]:
        """Every instance id that ever heartbeat, with its last heartbeat."""
        return await self.run(_instances, mode=_READ)

    async def resolve_orphans(self, now: float, orphan_after: float) -> list[Resolution]:
        """Expire holds of silent instances (or past their ttl) in one transaction.

        The checkpoint is captured (overage rule as for a capture) and the rest released;
        without a checkpoint everything is released. The log row says `orphaned`, with
        usage_source `partial` (a checkpoint was captured) or `none`.
        """
        return await self.run(orphans_tx, self._clock, now, orphan_after)

    # records --------------------------------------------------------------------------
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
        `model` is a glob."""
        where, params = schema.log_filter(user, since, until, before_id, key_id, model, end_reason)
        sql = f"SELECT * FROM consume_log{where} ORDER BY id DESC LIMIT ?"
        return await self.run(_query_logs, sql, (*params, max(limit, 0)), mode=_READ)

    async def upstream_stats(self) -> dict[str, tuple[int, int]]:
        """Per upstream name: (used quota, request count)."""
        return await self.run(_upstream_stats, mode=_READ)

    async def audit(self, now: float, orphan_after: float, *, stuck_after: float | None = None) -> AuditReport:
        """Recompute every total from the ledger (one snapshot) and report what disagrees;
        with `stuck_after`, also the open holds with no sign of life for that long."""
        return await self.run(run_audit, now, orphan_after, stuck_after, mode=_READ)
