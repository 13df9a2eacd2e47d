"""The account edits of `SQLiteStore`: wallet movements by hand, user and key changes,
cancelling subscriptions, deleting plans, and the readers behind `weir ledger` and the
consume-log totals.

Each `*_tx` function is one whole transaction, run by `SQLiteConnection.run` (read-modify-
writes under `BEGIN IMMEDIATE`); every balance it changes gets its ledger entry in the same
transaction, with the `actor` who asked for it.
"""

from __future__ import annotations

import sqlite3

from plugins.billing.store import edits, rules
from plugins.billing.store.base import (
    ApiKey,
    KeyChanges,
    LedgerEntry,
    LedgerPage,
    LogTotals,
    Preference,
    StoreError,
    Subscription,
    User,
)
from plugins.billing.store.sqlite import schema
from plugins.billing.store.sqlite.connection import SQLiteConnection
from plugins.billing.store.sqlite.ledger import Clock, Db, fetch_all, fetch_one, roll_subscription

_READ = "DEFERRED"
_ENTRY = (
    "INSERT INTO ledger(ts, account, kind, d_balance, d_reserved, request_id, note, actor)"
    " VALUES (?, ?, 'credit', ?, 0, NULL, ?, ?)"
)
_BALANCE = {
    "wallet": "UPDATE users SET balance = balance + ? WHERE name = ?",
    "key": "UPDATE api_keys SET balance = balance + ? WHERE id = ?",
}
# A refund: something was held and nothing charged (the hold was given back whole).
_TOTALS = (
    "SELECT COUNT(*), SUM(charge), SUM(overage), SUM(CASE WHEN charge = 0 AND estimate > 0 THEN 1 ELSE 0 END),"
    " SUM(CASE WHEN charge = 0 THEN estimate ELSE 0 END) FROM consume_log"
)


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


def credit_by(db: Db, ts: float, owner: str, ident: str, amount: int, note: str, actor: str) -> None:
    """A `credit` of `amount` on a wallet or a key account, journaled with note and actor."""
    if db.execute(_BALANCE[owner], (amount, ident)).rowcount != 1:
        raise StoreError(f"no account {owner}:{ident}")
    db.execute(_ENTRY, (ts, rules.account(owner, ident), amount, note, actor))


def credit_tx(db: Db, clock: Clock, user: str, amount: int, note: str, actor: str) -> User:
    """`Store.credit`."""
    _user(db, user)
    credit_by(db, clock(), "wallet", user, amount, note, actor)
    return _user(db, user)


def set_user_tx(db: Db, name: str, group: str | None, preference: Preference | None, disabled: bool | None) -> User:
    """`Store.set_user`."""
    current = _user(db, name)
    db.execute(
        "UPDATE users SET grp = ?, preference = ?, disabled = ? WHERE name = ?",
        (
            group or current.group,
            Preference(preference or current.preference).value,
            int(current.disabled if disabled is None else disabled),
            name,
        ),
    )
    return _user(db, name)


def _key_quota(db: Db, ts: float, key: ApiKey, changes: KeyChanges, actor: str) -> None:
    """The quota part of a key update: a new remaining quota, or none at all."""
    if changes.unlimited:
        if key.unlimited:
            return
        if key.reserved:
            raise StoreError(edits.unlimited_refused(key.id, key.reserved))
        db.execute("UPDATE api_keys SET quota = NULL WHERE id = ?", (key.id,))
        return
    if changes.quota is None:
        return
    db.execute("UPDATE api_keys SET quota = ? WHERE id = ?", (changes.quota, key.id))
    if changes.quota != key.balance:
        note = f"key quota set to {changes.quota}"
        credit_by(db, ts, "key", key.id, changes.quota - key.balance, note, actor)


def update_key_tx(db: Db, clock: Clock, key_id: str, changes: KeyChanges, actor: str) -> ApiKey:
    """`Store.update_key`."""
    key = _key(db, key_id)
    if key.status == "revoked":
        raise StoreError(f"key {key_id} is revoked: it cannot be changed")
    _key_quota(db, clock(), key, changes, actor)
    columns: dict[str, object] = {}
    if changes.name is not None:
        columns["name"] = changes.name
    if changes.status is not None:
        columns["status"] = changes.status
    if changes.models is not None:
        columns["models"] = schema.dump_list(changes.models)
    if changes.ips is not None:
        columns["ips"] = schema.dump_list(changes.ips)
    if changes.group is not None:
        columns["grp"] = changes.group or None
    if changes.no_expiry or changes.expires_at is not None:
        columns["expires_at"] = None if changes.no_expiry else changes.expires_at
    if columns:  # the column names are the constants above, never input
        sets = ", ".join(f"{c} = ?" for c in columns)
        db.execute(f"UPDATE api_keys SET {sets} WHERE id = ?", (*columns.values(), key_id))
    return _key(db, key_id)


def cancel_tx(db: Db, clock: Clock, sub_id: str) -> Subscription:
    """`Store.cancel_subscription`."""
    row = fetch_one(db, "SELECT * FROM subscriptions WHERE id = ?", (sub_id,))
    if row is None:
        raise StoreError(f"unknown subscription {sub_id!r}")
    now = clock()
    if row["cancelled_at"] is not None:
        raise StoreError(f"subscription {sub_id} is cancelled already")
    if row["end_at"] <= now:
        raise StoreError(f"subscription {sub_id} has ended already")
    row = roll_subscription(db, row, now)
    db.execute(
        "UPDATE subscriptions SET end_at = ?, cancelled_at = ? WHERE id = ?", (max(now, row["start"]), now, sub_id)
    )
    found = fetch_one(db, "SELECT * FROM subscriptions WHERE id = ?", (sub_id,))
    assert found is not None
    return schema.to_subscription(found)


def delete_plan_tx(db: Db, clock: Clock, name: str) -> None:
    """`Store.delete_plan`."""
    if fetch_one(db, "SELECT 1 FROM plans WHERE name = ?", (name,)) is None:
        raise StoreError(f"unknown plan {name!r}")
    users = fetch_all(
        db, "SELECT DISTINCT user FROM subscriptions WHERE plan = ? AND end_at > ? ORDER BY user", (name, clock())
    )
    if users:
        raise StoreError(edits.plan_in_use(name, [str(r[0]) for r in users]))
    db.execute("DELETE FROM plans WHERE name = ?", (name,))


def _entry(r: sqlite3.Row) -> LedgerEntry:
    return LedgerEntry(
        id=r["id"],
        ts=r["ts"],
        account=r["account"],
        kind=r["kind"],
        d_balance=r["d_balance"],
        d_reserved=r["d_reserved"],
        request_id=r["request_id"] or "",
        note=r["note"],
        actor=r["actor"],
    )


def ledger_tx(db: Db, user: str, limit: int, before_id: int | None, everything: bool) -> LedgerPage:
    """`Store.ledger_entries`, in one read transaction."""
    wallet = rules.account("wallet", user)
    balance = _user(db, user).balance
    if before_id is not None:
        later = fetch_one(db, "SELECT SUM(d_balance) FROM ledger WHERE account = ? AND id >= ?", (wallet, before_id))
        balance -= int((later[0] if later else 0) or 0)
    where, params = "account = ? AND d_balance != 0", [wallet]
    if everything:
        keys = fetch_all(db, "SELECT id FROM api_keys WHERE user = ?", (user,))
        subs = fetch_all(db, "SELECT id FROM subscriptions WHERE user = ?", (user,))
        params += [rules.account("key", str(r[0])) for r in keys] + [rules.account("sub", str(r[0])) for r in subs]
        where = f"account IN ({', '.join('?' * len(params))})"
    if before_id is not None:
        where += f" AND id < {int(before_id)}"
    # The ledger has no index by account (every hold and capture would pay for one): this
    # walks it newest first and stops after `limit` matches.
    sql = f"SELECT * FROM ledger WHERE {where} ORDER BY id DESC LIMIT ?"
    return LedgerPage(balance, [_entry(r) for r in fetch_all(db, sql, (*params, max(limit, 0)))])


def totals_tx(db: Db, where: str, params: tuple[object, ...]) -> LogTotals:
    """`Store.log_totals`, one aggregate query."""
    row = fetch_one(db, _TOTALS + where, params)
    values = [int(v or 0) for v in tuple(row or ())]
    return LogTotals(*values) if values else LogTotals()


class SQLiteAccounts(SQLiteConnection):
    """The account-edit methods of the `Store` protocol on SQLite (`SQLiteStore` adds the rest)."""

    async def credit(self, user: str, amount: int, note: str = "", *, actor: str = "") -> User:
        """Add `amount` (may be negative: an adjustment) to the wallet, with a ledger entry
        recording `note` and `actor`."""
        return await self.run(credit_tx, self._clock, user, int(amount), note, actor)

    async def set_user(
        self,
        name: str,
        *,
        group: str | None = None,
        preference: Preference | None = None,
        disabled: bool | None = None,
    ) -> User:
        """Change a user's group, billing preference or disabled flag (None keeps it)."""
        return await self.run(set_user_tx, name, group, preference, disabled)

    async def update_key(self, key_id: str, changes: KeyChanges, *, actor: str = "") -> ApiKey:
        """Apply `changes` to a key in one transaction (see `Store.update_key`)."""
        edits.check_key_changes(changes)
        return await self.run(update_key_tx, self._clock, key_id, changes, actor)

    async def get_subscription(self, sub_id: str) -> Subscription | None:
        """A subscription by id, as stored, or None."""
        row = await self.run(fetch_one, "SELECT * FROM subscriptions WHERE id = ?", (sub_id,), mode=_READ)
        return None if row is None else schema.to_subscription(row)

    async def cancel_subscription(self, sub_id: str) -> Subscription:
        """End a subscription now (see `Store.cancel_subscription`)."""
        return await self.run(cancel_tx, self._clock, sub_id)

    async def delete_plan(self, name: str) -> None:
        """Delete a plan nobody is subscribed to (see `Store.delete_plan`)."""
        await self.run(delete_plan_tx, self._clock, name)

    async def ledger_entries(
        self, user: str, *, limit: int = 50, before_id: int | None = None, everything: bool = False
    ) -> LedgerPage:
        """A page of the user's ledger, newest first (see `Store.ledger_entries`)."""
        return await self.run(ledger_tx, user, limit, before_id, everything, mode=_READ)

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
        """Sums over the consume-log rows the filters match."""
        where, params = schema.log_filter(user, since, until, None, key_id, model, end_reason)
        return await self.run(totals_tx, where, tuple(params), mode=_READ)
