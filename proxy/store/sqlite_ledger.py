"""Ledger moves for `SQLiteStore`, run inside a transaction the caller opened.

`move()` is the only code that changes a balance or a reservation, and it always appends the
matching ledger entry in the same statement pair, so stored totals cannot drift from the
ledger. `settle()` resolves one open hold (capture, release or expiry) with every side effect:
funding and key entries, overage, counters, the hold's resolution and the consume-log row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import replace

import aiosqlite

from proxy.store import ledger_rules as rules
from proxy.store import sqlite_schema as schema
from proxy.store.base import ApiKey, FundingSource, Hold, HoldRefusal, HoldState, LogDetails, Refusal, Resolution

Db = aiosqlite.Connection

_TABLES = {"wallet": ("users", "name"), "key": ("api_keys", "id"), "sub": ("subscriptions", "id")}
_KINDS = {HoldState.CAPTURED: "capture", HoldState.RELEASED: "release", HoldState.EXPIRED: "expire"}


async def fetch_one(db: Db, sql: str, params: Iterable[object] = ()) -> sqlite3.Row | None:
    """The first row of a query, or None."""
    async with db.execute(sql, tuple(params)) as cur:
        row = await cur.fetchone()
    return row


async def fetch_all(db: Db, sql: str, params: Iterable[object] = ()) -> list[sqlite3.Row]:
    """Every row of a query."""
    async with db.execute(sql, tuple(params)) as cur:
        return list(await cur.fetchall())


async def move(
    db: Db,
    ts: float,
    owner: str,
    ident: str,
    kind: str,
    d_balance: int,
    d_reserved: int,
    request_id: str | None = None,
    note: str = "",
) -> None:
    """Apply a signed movement to one account (`owner` is wallet|key|sub) and journal it."""
    table, pk = _TABLES[owner]
    cur = await db.execute(
        f"UPDATE {table} SET balance = balance + ?, reserved = reserved + ? WHERE {pk} = ?",
        (d_balance, d_reserved, ident),
    )
    if cur.rowcount != 1:
        raise sqlite3.IntegrityError(f"no account {owner}:{ident}")
    await db.execute(
        "INSERT INTO ledger(ts, account, kind, d_balance, d_reserved, request_id, note)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (ts, rules.account(owner, ident), kind, d_balance, d_reserved, request_id, note),
    )


async def roll_subscription(db: Db, row: sqlite3.Row, now: float) -> sqlite3.Row:
    """Bring an active subscription to the period containing `now`; the row afterwards.

    Writes off what the old period left (a negative `credit`) and credits the new period's
    quota, so the balance stays equal to the sum of the account's entries.
    """
    if not rules.is_active(row["start"], row["end_at"], now):
        return row
    current = rules.period_start(row["start"], row["period"], now)
    if current <= row["period_start"]:
        return row
    sub_id = row["id"]
    if row["balance"]:
        await move(db, now, "sub", sub_id, "credit", -row["balance"], 0, note="period end: unused quota expires")
    await move(db, now, "sub", sub_id, "credit", row["quota"], 0, note="period start")
    await db.execute("UPDATE subscriptions SET period_start = ? WHERE id = ?", (current, sub_id))
    fresh = await fetch_one(db, "SELECT * FROM subscriptions WHERE id = ?", (sub_id,))
    assert fresh is not None
    return fresh


async def _charge_funding(db: Db, ts: float, held: Hold, kind: str, charge: int) -> int:
    """Charge the funding source; returns the overage written to the wallet."""
    if held.source is FundingSource.WALLET:
        await move(db, ts, "wallet", held.user, kind, -charge, -held.amount, held.request_id)
        return 0
    sub_id = held.subscription_id
    sub = await fetch_one(db, "SELECT * FROM subscriptions WHERE id = ?", (sub_id,))
    if sub is None or sub_id is None:
        raise sqlite3.IntegrityError(f"hold {held.request_id} names a missing subscription")
    sub = await roll_subscription(db, sub, ts)
    paid, overage = rules.split_charge(held.source, charge, sub["balance"])
    await move(db, ts, "sub", sub_id, kind, -paid, -held.amount, held.request_id)
    await db.execute("UPDATE subscriptions SET used = used + ? WHERE id = ?", (paid, sub_id))
    if overage:
        note = f"subscription {sub_id} could not cover {overage}"
        await move(db, ts, "wallet", held.user, "overage", -overage, 0, held.request_id, note)
    return overage


async def settle(db: Db, ts: float, held: Hold, state: HoldState, charge: int, log: LogDetails) -> Resolution:
    """Resolve an open hold as `state` with `charge`, with every side effect, in `db`'s transaction."""
    kind = _KINDS[state]
    overage = await _charge_funding(db, ts, held, kind, charge)
    key = await fetch_one(db, "SELECT quota, name FROM api_keys WHERE id = ?", (held.key_id,))
    if key is None:
        raise sqlite3.IntegrityError(f"hold {held.request_id} names a missing key")
    if key["quota"] is not None:
        await move(db, ts, "key", held.key_id, kind, -charge, -held.key_amount, held.request_id)
    counted = int(rules.counts_as_request(state, held.checkpoint))
    await db.execute(
        "UPDATE users SET used = used + ?, request_count = request_count + ? WHERE name = ?",
        (charge, counted, held.user),
    )
    await db.execute(
        "UPDATE api_keys SET used = used + ?, request_count = request_count + ? WHERE id = ?",
        (charge, counted, held.key_id),
    )
    if state is HoldState.CAPTURED and log.upstream:
        await db.execute(
            "INSERT INTO upstream_counters(name, used, request_count) VALUES (?, ?, 1)"
            " ON CONFLICT(name) DO UPDATE SET used = used + excluded.used,"
            " request_count = request_count + 1",
            (log.upstream, charge),
        )
    await db.execute(
        "UPDATE holds SET state = ?, charged = ?, overage = ?, resolved_at = ? WHERE request_id = ?",
        (state.value, charge, overage, ts, held.request_id),
    )
    await _append_log(db, ts, held, state, charge, overage, log, key["name"])
    return Resolution(held.request_id, state, charge, overage, True)


async def _append_log(
    db: Db, ts: float, held: Hold, state: HoldState, charge: int, overage: int, log: LogDetails, key_name: str
) -> None:
    """One consume-log row; the key's name fills in when the caller did not give one."""
    details = log if log.key_name else replace(log, key_name=key_name)
    columns = schema.log_columns()
    fixed = ("ts", "request_id", "user", "key_id", "source", "resolution", "estimate", "charge",
             "overage", "price_version")
    values = (ts, held.request_id, held.user, held.key_id, held.source.value, state.value,
              held.amount, charge, overage, held.price_version)
    names = ", ".join((*fixed, *columns))
    marks = ", ".join("?" * (len(fixed) + len(columns)))
    await db.execute(
        f"INSERT INTO consume_log({names}) VALUES ({marks})", (*values, *schema.log_values(details))
    )


def key_refusal(key: ApiKey | None, user: str, amount: int, now: float) -> HoldRefusal | None:
    """The key-level refusal for a hold, if any (a key of another user is unknown)."""
    if key is None or key.user != user:
        return HoldRefusal(Refusal.UNKNOWN_KEY, 0, amount)
    reason = rules.key_refusal(key.status, key.expires_at, now)
    if reason is not None:
        return HoldRefusal(reason, 0, amount)
    available = key.balance - key.reserved
    if not key.unlimited and not rules.affords(available, amount):
        return HoldRefusal(Refusal.INSUFFICIENT_KEY_QUOTA, available, amount)
    return None


async def record_hold(db: Db, held: Hold, *, limited: bool) -> None:
    """Insert the hold row and its `hold` ledger entries."""
    await db.execute(
        "INSERT INTO holds(request_id, user, key_id, source, subscription_id, amount, key_amount,"
        " price_version, instance_id, created_at, expires_at, state)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')",
        (held.request_id, held.user, held.key_id, held.source.value, held.subscription_id,
         held.amount, held.key_amount, held.price_version, held.instance_id, held.created_at,
         held.expires_at),
    )
    if held.source is FundingSource.WALLET:
        await move(db, held.created_at, "wallet", held.user, "hold", 0, held.amount, held.request_id)
    else:
        assert held.subscription_id is not None
        await move(db, held.created_at, "sub", held.subscription_id, "hold", 0, held.amount, held.request_id)
    if limited:
        await move(db, held.created_at, "key", held.key_id, "hold", 0, held.key_amount, held.request_id)
