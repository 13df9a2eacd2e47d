"""Group commit, set by set: a batch of concurrent holds or settlements in a few statements.

`SQLiteConnection` runs the calls that queued while a transaction was under way as one
batch, in one transaction (group commit). Run one by one, a hold costs four statements and
a capture seven, each with its Python around it: at 32 concurrent clients that SQL was the
largest part of what billing cost per request. The functions here do the work of a whole
group of `hold_tx` or `resolve_tx` calls, for the common case of wallet-funded holds: they
read the accounts once, decide each call in order with the same rules as
`plugins.billing.store.sqlite.ledger` (a settlement is the capture rule's,
`rules.settlement`, as one by one), and write with one `executemany` per table and one
relative UPDATE per account. The rows they write are the rows the one-by-one functions
write, entry for entry (tests/plugins/billing/store/test_bulk.py compares the two).

Anything else goes through the one-by-one function, in the same transaction: a user with an
active subscription, a subscription-funded hold, a key or user that does not exist, a hold
that is already resolved or was never made, a request id seen twice in the batch. An
exception (a request id held already makes the hold INSERT fail) undoes the whole
transaction; `SQLiteConnection` then runs the calls one by one, each in a savepoint, so the call
at fault is undone and answered alone.

Order: every call in a batch was pending when the batch began, so any order is a valid
serialisation of them. Holds are decided in arrival order, each against what the holds
before it left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from plugins.billing.store import rules
from plugins.billing.store.base import (
    FundingSource,
    Hold,
    HoldRefusal,
    HoldState,
    LogDetails,
    Preference,
    Resolution,
    StoreError,
)
from plugins.billing.store.sqlite import schema
from plugins.billing.store.sqlite.ledger import (
    INSERT_LOG,
    JOURNAL,
    RESOLVED,
    WALLET_SETTLED,
    Clock,
    Db,
    hold_tx,
    key_check,
    resolve_tx,
)
from plugins.billing.tuples import new_tuple

__all__ = ["BULK", "hold_many", "resolve_many"]

# The hold's checks for one (user, key) pair, without the per-request idempotency lookup:
# a request id held already fails the hold INSERT (primary key) instead.
_ACCOUNTS = (
    "SELECT k.user, k.status, k.expires_at, k.quota, k.balance, k.reserved, u.preference, u.balance, u.reserved,"
    " EXISTS (SELECT 1 FROM subscriptions WHERE user = u.name AND start <= ? AND end_at > ?)"
    " FROM api_keys k JOIN users u ON u.name = ? WHERE k.id = ?"
)
# A batch's wallet hold rows and `hold` journal entries, with what is the same for every row
# written into the SQL: sqlite3 copies each text parameter it binds and adapts each None
# (see `schema.log_values`), about a tenth of what a hold cost in SQL.
_INSERT_WALLET_HOLD = (
    "INSERT INTO holds(request_id, user, key_id, source, subscription_id, amount, key_amount,"
    " price_version, instance_id, created_at, expires_at, state)"
    f" VALUES (?, ?, ?, '{FundingSource.WALLET.value}', NULL, ?, ?, ?, ?, ?, ?, 'open')"
)
_JOURNAL_HOLD = (
    "INSERT INTO ledger(ts, account, kind, d_balance, d_reserved, request_id, note) VALUES (?, ?, 'hold', 0, ?, ?, '')"
)
# A settlement's journal entry without a note (every entry but a hand resolution's).
_JOURNAL_NO_NOTE = (
    "INSERT INTO ledger(ts, account, kind, d_balance, d_reserved, request_id, note) VALUES (?, ?, ?, ?, ?, ?, '')"
)
_RESERVE_WALLET = "UPDATE users SET reserved = reserved + ? WHERE name = ?"
_RESERVE_KEY = "UPDATE api_keys SET reserved = reserved + ? WHERE id = ?"
# The holds of a batch with what the capture rule needs of their keys (whether the key has a
# quota, its name; NULL for a key that is gone, which the one-by-one path reports).
_HOLDS_OF = (
    "SELECT h.request_id, h.user, h.key_id, h.source, h.amount, h.key_amount, h.price_version, h.state,"
    " h.checkpoint, k.quota IS NOT NULL, k.name"
    " FROM holds h LEFT JOIN api_keys k ON k.id = h.key_id"
    " WHERE h.request_id IN (SELECT value FROM json_each(?))"
)
# A key's use and the movement of its account (zeros for a key without a quota), in one statement.
_KEY_SETTLED = (
    "UPDATE api_keys SET used = used + ?, request_count = request_count + ?, balance = balance + ?,"
    " reserved = reserved + ? WHERE id = ?"
)
_UPSTREAMS_USED = (
    "INSERT INTO upstream_counters(name, used, request_count) VALUES (?, ?, ?)"
    " ON CONFLICT(name) DO UPDATE SET used = used + excluded.used,"
    " request_count = request_count + excluded.request_count"
)
_WALLET = FundingSource.WALLET.value
_OPEN = HoldState.OPEN.value
_OPEN_STATE, _FUNDED_BY_WALLET = HoldState.OPEN, FundingSource.WALLET
_WALLET_NO_SUB, _OPEN_NO_CHECKPOINT = (FundingSource.WALLET, None), (HoldState.OPEN, None, None)
_VALUE_OF = {state: state.value for state in HoldState}


def hold_many(db: Db, calls: Sequence[tuple[Any, ...]]) -> list[object]:
    """`hold_tx(db, *args)` for each `args` of `calls`, as one set of statements.

    Returns each call's Hold or HoldRefusal, in order. Raises (so the caller falls back to
    one call at a time) when a write fails, e.g. a request id that is held already.
    """
    clock: Clock = calls[0][0]
    now = clock()
    # (user, key id) -> the accounts row, the user's preference and the two ledger account
    # names: read and built once per pair, whatever the number of its holds in the batch.
    seen: dict[tuple[str, str], tuple[Any, Preference, str, str]] = {}
    wallets: dict[str, list[int]] = {}  # user -> [available, reserved by this batch]
    keys: dict[str, list[int]] = {}  # key id -> [available, reserved by this batch]
    holds: list[tuple[object, ...]] = []
    journal: list[tuple[object, ...]] = []
    results: list[object] = []
    for args in calls:
        _, request_id, user, key_id, amount, preference, price_version, ttl, instance_id, _model = args
        pair = (user, key_id)
        known = seen.get(pair)
        if known is None:
            known = seen[pair] = _pair(db, now, user, key_id)
        row, user_pref, wallet_account, key_account = known
        if row is None or row[9]:  # no such key or user, or subscriptions to choose from
            results.append(hold_tx(db, *args))
            continue
        owner, status, expires_at, quota, k_balance, k_reserved, _, u_balance, u_reserved, _ = row
        wallet = wallets.setdefault(user, [u_balance - u_reserved, 0])
        key = keys.setdefault(key_id, [k_balance - k_reserved, 0])
        unlimited = quota is None
        refusal = key_check(owner == user, status, expires_at, unlimited, key[0], amount, now)
        if refusal is None:
            choice = rules.choose_funding(preference or user_pref, wallet[0], (), amount)
            refusal = choice if isinstance(choice, HoldRefusal) else None
        if refusal is not None:
            results.append(refusal)
            continue
        wallet[0] -= amount
        wallet[1] += amount
        key_amount = 0 if unlimited else amount
        expires = now + ttl
        row_values = (request_id, user, key_id, amount, key_amount, price_version, instance_id, now, expires)
        holds.append(row_values)
        journal.append((now, wallet_account, amount, request_id))
        if not unlimited:
            key[0] -= amount
            key[1] += amount
            journal.append((now, key_account, key_amount, request_id))
        # The Hold: the row's values and the constants the SQL writes (`new_tuple`).
        results.append(new_tuple(Hold, (*row_values[:3], *_WALLET_NO_SUB, *row_values[3:], *_OPEN_NO_CHECKPOINT)))
    if holds:
        _write_holds(db, holds, wallets, keys, journal)
    return results


def _pair(db: Db, now: float, user: str, key_id: str) -> tuple[Any, Preference, str, str]:
    """What `hold_many` needs once per (user, key) pair: the accounts row (None: no such key
    or user), the user's own preference and the ledger names of the wallet and the key."""
    row = db.execute(_ACCOUNTS, (now, now, user, key_id)).fetchone()
    preference = Preference.SUBSCRIPTION_FIRST if row is None else Preference(row[6])  # (no row: unused)
    return row, preference, rules.account("wallet", user), rules.account("key", key_id)


def _write_holds(
    db: Db,
    holds: list[tuple[object, ...]],
    wallets: dict[str, list[int]],
    keys: dict[str, list[int]],
    journal: list[tuple[object, ...]],
) -> None:
    """Write what `hold_many` decided: the hold rows, each account's added reservation, the journal."""
    db.executemany(_INSERT_WALLET_HOLD, holds)
    _add_each(db, _RESERVE_WALLET, wallets, "wallet")
    _add_each(db, _RESERVE_KEY, keys, "key")
    db.executemany(_JOURNAL_HOLD, journal)


def _add_each(db: Db, sql: str, accounts: dict[str, list[int]], owner: str) -> None:
    """Add each account's reservation from this batch (one UPDATE per account)."""
    for ident, (_, added) in accounts.items():
        if added and db.execute(sql, (added, ident)).rowcount != 1:
            raise StoreError(f"no account {owner}:{ident}")


class _Totals:
    """What one batch of settlements adds to each account and counter."""

    __slots__ = ("wallets", "keys", "upstreams")

    def __init__(self) -> None:
        self.wallets: dict[str, list[int]] = {}  # user -> [d_balance, d_reserved, used, requests]
        self.keys: dict[str, list[int]] = {}  # key id -> [used, requests, d_balance, d_reserved]
        self.upstreams: dict[str, list[int]] = {}  # name -> [used, requests]

    def add(self, user: str, key_id: str, done: rules.Settlement) -> None:
        """Add one settlement of a wallet-funded hold: its entries, counters and upstream."""
        _, charge, _, counted, _, upstream, entries = done
        w = self.wallets.setdefault(user, [0, 0, 0, 0])
        k = self.keys.setdefault(key_id, [0, 0, 0, 0])
        for owner, _, _, d_balance, d_reserved, _ in entries:
            if owner == "wallet":
                w[0] += d_balance
                w[1] += d_reserved
            elif owner == "key":
                k[2] += d_balance
                k[3] += d_reserved
            else:  # never for a wallet hold; the batch would rather fail than guess
                raise StoreError(f"a batch settles wallet and key accounts only, not {owner}")
        w[2] += charge
        w[3] += counted
        k[0] += charge
        k[1] += counted
        if upstream:
            u = self.upstreams.setdefault(upstream, [0, 0])
            u[0] += charge
            u[1] += 1

    def write(self, db: Db) -> None:
        """Apply the totals."""
        for user, (d_balance, d_reserved, used, requests) in self.wallets.items():
            if db.execute(WALLET_SETTLED, (d_balance, d_reserved, used, requests, user)).rowcount != 1:
                raise StoreError(f"no account wallet:{user}")
        for key_id, (used, requests, d_balance, d_reserved) in self.keys.items():
            if db.execute(_KEY_SETTLED, (used, requests, d_balance, d_reserved, key_id)).rowcount != 1:
                raise StoreError(f"a hold names a missing key {key_id}")
        for name, (used, requests) in self.upstreams.items():
            db.execute(_UPSTREAMS_USED, (name, used, requests))


def resolve_many(db: Db, calls: Sequence[tuple[Any, ...]]) -> list[object]:
    """`resolve_tx(db, *args)` for each `args` of `calls`, as one set of statements.

    Each wallet-funded hold is settled by the capture rule (`rules.settlement`), as one by
    one; the batch only adds up what the settlements move per account. Returns each call's
    Resolution, in order; raises like `resolve_tx` (so the caller falls back to one call
    at a time).
    """
    ids = [args[1] for args in calls]
    if len(set(ids)) != len(ids):  # the same hold twice: the second must see the first
        return [resolve_tx(db, *args) for args in calls]
    clock: Clock = calls[0][0]
    found = {r[0]: r for r in db.execute(_HOLDS_OF, (orjson.dumps(ids),)).fetchall()}
    ts = clock()
    totals = _Totals()
    mine: list[tuple[tuple[Any, ...], Any, rules.Settlement]] = []
    results: list[object] = []
    for args in calls:
        _, request_id, state, charge, log = args
        row = found.get(request_id)
        # Unknown, subscription-funded, resolved, or its key gone: one by one.
        if row is None or row[3] != _WALLET or row[7] != _OPEN or row[10] is None:
            results.append(resolve_tx(db, *args))
            continue
        # The rule reads the hold's owner, key, source, amounts and checkpoint; the times and
        # instance it does not read are not fetched.
        held = new_tuple(
            Hold,
            (
                request_id,
                row[1],
                row[2],
                _FUNDED_BY_WALLET,
                None,
                row[4],
                row[5],
                row[6],
                "",
                0.0,
                0.0,
                _OPEN_STATE,
                row[8],
                None,
            ),
        )
        done = rules.settlement(held, state, charge, log, key_limited=bool(row[9]))
        totals.add(row[1], row[2], done)
        mine.append((args, row, done))
        results.append(new_tuple(Resolution, (request_id, state, charge, 0, True)))
    if mine:
        totals.write(db)
        _write_resolutions(db, ts, mine)
    return results


def _write_resolutions(db: Db, ts: float, mine: list[tuple[tuple[Any, ...], Any, rules.Settlement]]) -> None:
    """The journal entries, the holds' resolutions and the consume-log rows of `mine`."""
    journal: list[tuple[object, ...]] = []
    notes: list[str] = []
    resolved: list[tuple[object, ...]] = []
    logs: list[tuple[object, ...]] = []
    for (_, request_id, state, _, log), row, (_, charge, overage, _, _, _, entries) in mine:
        _, user, key_id, source, held, _, price_version = row[:7]
        for owner, ident, kind, d_balance, d_reserved, note in entries:
            journal.append((ts, rules.account(owner, ident), kind, d_balance, d_reserved, request_id))
            notes.append(note)
        resolution = _VALUE_OF[state]  # `state.value` is a Python property: read once, from a dict
        resolved.append((resolution, charge, overage, ts, request_id))
        details: LogDetails = log
        logs.append(
            (
                ts,
                request_id,
                user,
                key_id,
                source,
                resolution,
                held,
                charge,
                overage,
                price_version,
                *schema.log_values(details, row[10]),
            )
        )
    if any(notes):
        db.executemany(JOURNAL, [(*entry, note) for entry, note in zip(journal, notes)])
    else:
        db.executemany(_JOURNAL_NO_NOTE, journal)
    db.executemany(RESOLVED, resolved)
    db.executemany(INSERT_LOG, logs)


BULK: dict[Callable[..., object], Callable[[Db, Sequence[tuple[Any, ...]]], list[object]]] = {
    hold_tx: hold_many,
    resolve_tx: resolve_many,
}
"""The one-by-one money steps that have a set-at-a-time form, for `SQLiteConnection`."""
