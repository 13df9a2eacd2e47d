"""`SQLiteStore`: the embedded accounting store, on aiosqlite.

The connection, transaction and locking discipline is in `proxy.store.sqlite_conn` (every
read-modify-write runs under `BEGIN IMMEDIATE`); the ledger moves and the settlement in
`proxy.store.sqlite_ledger`; the decisions themselves (funding choice, periods, overage,
counters) in `proxy.store.ledger_rules`; the ledger model in `proxy.store.base`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from proxy.store import ledger_rules as rules
from proxy.store import sqlite_schema as schema
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
from proxy.store.sqlite_audit import run_audit
from proxy.store.sqlite_conn import SQLiteConnection
from proxy.store.sqlite_ledger import (
    Db,
    fetch_all,
    fetch_one,
    key_refusal,
    move,
    record_hold,
    roll_subscription,
    settle,
)

_ORPHANS = """
SELECT h.* FROM holds h LEFT JOIN instances i ON i.id = h.instance_id
WHERE h.state = 'open' AND (i.last_seen IS NULL OR i.last_seen < ? OR h.expires_at < ?)
ORDER BY h.created_at, h.request_id
"""


class SQLiteStore(SQLiteConnection):
    """The `proxy.store.base.Store` protocol on one SQLite file (safe across processes)."""

    # users ------------------------------------------------------------------------
    async def create_user(
        self, name: str, group: str = "default", preference: Preference = Preference.SUBSCRIPTION_FIRST
    ) -> User:
        """Create a user with an empty wallet. StoreError if the name exists."""
        async with self._tx() as db:
            if await fetch_one(db, "SELECT 1 FROM users WHERE name = ?", (name,)):
                raise StoreError(f"user {name!r} already exists")
            await db.execute(
                "INSERT INTO users(name, grp, preference, created_at) VALUES (?, ?, ?, ?)",
                (name, group, Preference(preference).value, self._clock()),
            )
            return await self._user(db, name)

    async def get_user(self, name: str) -> User | None:
        """The user, with current totals, or None."""
        async with self._tx("DEFERRED") as db:
            row = await fetch_one(db, "SELECT * FROM users WHERE name = ?", (name,))
            return schema.to_user(row) if row else None

    async def list_users(self) -> list[User]:
        """Every user, by name."""
        async with self._tx("DEFERRED") as db:
            return [schema.to_user(r) for r in await fetch_all(db, "SELECT * FROM users ORDER BY name")]

    async def credit(self, user: str, amount: int, note: str = "") -> User:
        """Add `amount` (may be negative: an adjustment) to the wallet, with a ledger entry."""
        async with self._tx() as db:
            await self._user(db, user)
            await move(db, self._clock(), "wallet", user, "credit", int(amount), 0, note=note)
            return await self._user(db, user)

    async def set_user(
        self, name: str, *, group: str | None = None, preference: Preference | None = None
    ) -> User:
        """Change a user's group or billing preference."""
        async with self._tx() as db:
            current = await self._user(db, name)
            await db.execute(
                "UPDATE users SET grp = ?, preference = ? WHERE name = ?",
                (group or current.group, Preference(preference or current.preference).value, name),
            )
            return await self._user(db, name)

    async def _user(self, db: Db, name: str) -> User:
        row = await fetch_one(db, "SELECT * FROM users WHERE name = ?", (name,))
        if row is None:
            raise StoreError(f"unknown user {name!r}")
        return schema.to_user(row)

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
        key_id = "k_" + secrets.token_hex(6)
        async with self._tx() as db:
            await self._user(db, user)
            if await fetch_one(db, "SELECT 1 FROM api_keys WHERE key_hash = ?", (key_hash,)):
                raise StoreError("a key with this hash already exists")
            now = self._clock()
            await db.execute(
                "INSERT INTO api_keys(id, user, key_hash, name, status, expires_at, quota, models,"
                " ips, grp, created_at, hint) VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?)",
                (key_id, user, key_hash, name, expires_at, quota, schema.dump_list(models),
                 schema.dump_list(ips), group, now, hint),
            )
            if quota is not None:
                await move(db, now, "key", key_id, "credit", quota, 0, note="key quota")
            return await self._key(db, key_id)

    async def get_key(self, key_id: str) -> ApiKey | None:
        """A key by its public id."""
        async with self._tx("DEFERRED") as db:
            row = await fetch_one(db, "SELECT * FROM api_keys WHERE id = ?", (key_id,))
            return schema.to_key(row) if row else None

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """A key by the SHA-256 hex of its clear text."""
        async with self._tx("DEFERRED") as db:
            row = await fetch_one(db, "SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,))
            return schema.to_key(row) if row else None

    async def list_keys(self, user: str) -> list[ApiKey]:
        """A user's keys, oldest first."""
        async with self._tx("DEFERRED") as db:
            rows = await fetch_all(
                db, "SELECT * FROM api_keys WHERE user = ? ORDER BY created_at, rowid", (user,)
            )
            return [schema.to_key(r) for r in rows]

    async def set_key_status(self, key_id: str, status: str) -> ApiKey:
        """Set "active", "disabled" or "revoked". Revocation is final: StoreError afterwards."""
        if status not in rules.KEY_STATUSES:
            raise StoreError(f"unknown key status {status!r}")
        async with self._tx() as db:
            key = await self._key(db, key_id)
            if key.status == "revoked" and status != "revoked":
                raise StoreError(f"key {key_id} is revoked")
            await db.execute("UPDATE api_keys SET status = ? WHERE id = ?", (status, key_id))
            return await self._key(db, key_id)

    async def _key(self, db: Db, key_id: str) -> ApiKey:
        row = await fetch_one(db, "SELECT * FROM api_keys WHERE id = ?", (key_id,))
        if row is None:
            raise StoreError(f"unknown key {key_id!r}")
        return schema.to_key(row)

    # plans and subscriptions -----------------------------------------------------------
    async def create_plan(self, plan: Plan) -> Plan:
        """Create or replace a plan (existing subscriptions keep the terms they were granted)."""
        try:
            rules.validate_period(plan.period)
        except ValueError as exc:
            raise StoreError(str(exc)) from exc
        if plan.quota < 0:
            raise StoreError("a plan quota must be >= 0")
        async with self._tx() as db:
            await db.execute(
                "INSERT OR REPLACE INTO plans(name, quota, period, duration_days, models)"
                " VALUES (?, ?, ?, ?, ?)",
                (plan.name, plan.quota, plan.period, plan.duration_days, schema.dump_list(plan.models)),
            )
        return plan

    async def get_plan(self, name: str) -> Plan | None:
        """A plan by name."""
        async with self._tx("DEFERRED") as db:
            row = await fetch_one(db, "SELECT * FROM plans WHERE name = ?", (name,))
            return schema.to_plan(row) if row else None

    async def list_plans(self) -> list[Plan]:
        """Every plan, by name."""
        async with self._tx("DEFERRED") as db:
            return [schema.to_plan(r) for r in await fetch_all(db, "SELECT * FROM plans ORDER BY name")]

    async def grant_subscription(self, user: str, plan: str, start: float, end: float) -> Subscription:
        """Give `user` a subscription to `plan`; its first period is credited at once."""
        if end <= start:
            raise StoreError("a subscription must end after it starts")
        sub_id = "s_" + secrets.token_hex(6)
        async with self._tx() as db:
            await self._user(db, user)
            prow = await fetch_one(db, "SELECT * FROM plans WHERE name = ?", (plan,))
            if prow is None:
                raise StoreError(f"unknown plan {plan!r}")
            p = schema.to_plan(prow)
            now = self._clock()
            first = rules.period_start(start, p.period, min(now, end))
            await db.execute(
                "INSERT INTO subscriptions(id, user, plan, quota, period, start, end_at, period_start,"
                " models) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sub_id, user, p.name, p.quota, p.period, start, end, first, schema.dump_list(p.models)),
            )
            await move(db, now, "sub", sub_id, "credit", p.quota, 0, note=f"plan {p.name}: first period")
            row = await fetch_one(db, "SELECT * FROM subscriptions WHERE id = ?", (sub_id,))
            assert row is not None
            return schema.to_subscription(row)

    async def list_subscriptions(self, user: str) -> list[Subscription]:
        """A user's subscriptions, rolled over to the current period, ending soonest first."""
        async with self._tx() as db:
            rows = await fetch_all(
                db, "SELECT * FROM subscriptions WHERE user = ? ORDER BY end_at, id", (user,)
            )
            now = self._clock()
            return [schema.to_subscription(await roll_subscription(db, r, now)) for r in rows]

    async def _offers(self, db: Db, user: str, now: float, model: str) -> list[rules.SubOffer]:
        rows = await fetch_all(
            db, "SELECT * FROM subscriptions WHERE user = ? AND start <= ? AND end_at > ?", (user, now, now)
        )
        offers = []
        for row in rows:
            sub = schema.to_subscription(await roll_subscription(db, row, now))
            if rules.model_allowed(sub.models, model):
                offers.append(rules.SubOffer(sub.id, sub.end, sub.available))
        return offers

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
        async with self._tx() as db:
            existing = await fetch_one(db, "SELECT * FROM holds WHERE request_id = ?", (request_id,))
            if existing is not None:
                return schema.to_hold(existing)
            now = self._clock()
            krow = await fetch_one(db, "SELECT * FROM api_keys WHERE id = ?", (key_id,))
            key = schema.to_key(krow) if krow else None
            refusal = key_refusal(key, user, amount, now)
            if refusal is not None or key is None:
                return refusal or HoldRefusal(Refusal.UNKNOWN_KEY, 0, amount)
            owner = await self._user(db, user)
            offers = await self._offers(db, user, now, model)
            choice = rules.choose_funding(preference or owner.preference, owner.available, offers, amount)
            if isinstance(choice, HoldRefusal):
                return choice
            held = Hold(
                request_id=request_id, user=user, key_id=key_id, source=choice.source,
                subscription_id=choice.subscription_id, amount=amount,
                key_amount=0 if key.unlimited else amount, price_version=price_version,
                instance_id=instance_id, created_at=now, expires_at=now + ttl, state=HoldState.OPEN,
            )
            await record_hold(db, held, limited=not key.unlimited)
            return held

    async def checkpoint(self, request_id: str, charge_so_far: int) -> bool:
        """Record the charge delivered so far on an open hold. False if not open."""
        if charge_so_far < 0:
            raise StoreError("a checkpoint must be >= 0")
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE holds SET checkpoint = ? WHERE request_id = ? AND state = 'open'",
                (charge_so_far, request_id),
            )
            return cur.rowcount > 0

    async def capture(self, request_id: str, actual: int, log: LogDetails) -> Resolution:
        """Charge `actual` (overage to the wallet), counters and log row, atomically. Idempotent."""
        if actual < 0:
            raise StoreError("a charge must be >= 0")
        return await self._resolve(request_id, HoldState.CAPTURED, actual, log)

    async def release(self, request_id: str, log: LogDetails) -> Resolution:
        """Give the whole hold back and append the log row (charge 0). Idempotent."""
        return await self._resolve(request_id, HoldState.RELEASED, 0, log)

    async def _resolve(self, request_id: str, state: HoldState, charge: int, log: LogDetails) -> Resolution:
        async with self._tx() as db:
            row = await fetch_one(db, "SELECT * FROM holds WHERE request_id = ?", (request_id,))
            if row is None:
                raise StoreError(f"unknown hold {request_id!r}")
            if row["state"] != HoldState.OPEN:
                return schema.to_resolution(row, first=False)
            return await settle(db, self._clock(), schema.to_hold(row), state, charge, log)

    async def get_hold(self, request_id: str) -> Hold | None:
        """A hold in any state."""
        async with self._tx("DEFERRED") as db:
            row = await fetch_one(db, "SELECT * FROM holds WHERE request_id = ?", (request_id,))
            return schema.to_hold(row) if row else None

    async def open_holds(self) -> list[Hold]:
        """Every unresolved hold, oldest first."""
        async with self._tx("DEFERRED") as db:
            rows = await fetch_all(db, "SELECT * FROM holds WHERE state = 'open' ORDER BY created_at")
            return [schema.to_hold(r) for r in rows]

    # instances and orphans -------------------------------------------------------------
    async def heartbeat(self, instance_id: str) -> None:
        """Record that `instance_id` is alive now."""
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO instances(id, last_seen) VALUES (?, ?)"
                " ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen",
                (instance_id, self._clock()),
            )

    async def resolve_orphans(self, now: float, orphan_after: float) -> list[Resolution]:
        """Expire holds of silent instances (or past their ttl) in one transaction.

        The checkpoint is captured (overage rule as for a capture) and the rest released;
        without a checkpoint everything is released. The log row says `orphaned`, with
        usage_source `partial` (a checkpoint was captured) or `none`.
        """
        async with self._tx() as db:
            rows = await fetch_all(db, _ORPHANS, (now - orphan_after, now))
            done = []
            for row in rows:
                held = schema.to_hold(row)
                details = LogDetails(
                    end_reason="orphaned", usage_source="none" if held.checkpoint is None else "partial"
                )
                done.append(
                    await settle(db, self._clock(), held, HoldState.EXPIRED, held.checkpoint or 0, details)
                )
            return done

    # records --------------------------------------------------------------------------
    async def query_logs(
        self,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[LogRow]:
        """Consume-log rows, newest first, `since <= ts < until`; page with `before_id`."""
        where, params = schema.log_filter(user, since, until, before_id)
        async with self._tx("DEFERRED") as db:
            rows = await fetch_all(
                db, f"SELECT * FROM consume_log{where} ORDER BY id DESC LIMIT ?", (*params, max(limit, 0))
            )
            return [schema.to_log_row(r) for r in rows]

    async def upstream_stats(self) -> dict[str, tuple[int, int]]:
        """Per upstream name: (used quota, request count)."""
        async with self._tx("DEFERRED") as db:
            rows = await fetch_all(db, "SELECT * FROM upstream_counters ORDER BY name")
            return {r["name"]: (r["used"], r["request_count"]) for r in rows}

    async def audit(self, now: float, orphan_after: float) -> AuditReport:
        """Recompute every total from the ledger (one snapshot) and report what disagrees."""
        async with self._tx("DEFERRED") as db:
            return await run_audit(db, now, orphan_after)
