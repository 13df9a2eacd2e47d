"""The money steps of `SQLiteStore`: synchronous functions run inside one transaction.

Each public `*_tx` function here is a whole read-modify-write. `SQLiteConnection.run` calls it
on the connection's worker thread between `BEGIN IMMEDIATE` and `COMMIT`, so one hold or one
capture costs a single thread hop, however many statements it runs.

`move()` is the only code that changes a balance or a reservation, and it always appends the
matching ledger entry in the same transaction, so stored totals cannot drift from the ledger.
`settle()` resolves one open hold (capture, release or expiry) with every side effect:
what the capture rule (`plugins.billing.store.rules.settlement`) says to write, the hold's
resolution and the consume-log row.

Every SQL string is a constant, so sqlite3's per-connection statement cache prepares each
statement once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from plugins.billing.store import rules
from plugins.billing.store.base import (
    ApiKey,
    FundingSource,
    Hold,
    HoldRefusal,
    HoldState,
    LogDetails,
    Preference,
    Refusal,
    Resolution,
    StoreError,
)
from plugins.billing.store.sqlite import schema
from plugins.billing.store.tasks import TASK_OWNER

Db = sqlite3.Connection
Clock = Callable[[], float]

_MOVE = {
    "wallet": "UPDATE users SET balance = balance + ?, reserved = reserved + ? WHERE name = ?",
    "key": "UPDATE api_keys SET balance = balance + ?, reserved = reserved + ? WHERE id = ?",
    "sub": "UPDATE subscriptions SET balance = balance + ?, reserved = reserved + ? WHERE id = ?",
}
JOURNAL = "INSERT INTO ledger(ts, account, kind, d_balance, d_reserved, request_id, note) VALUES (?, ?, ?, ?, ?, ?, ?)"
_HOLD = "SELECT * FROM holds WHERE request_id = ?"
_KEY_ROW = "SELECT * FROM api_keys WHERE id = ?"
_SUB_ROW = "SELECT * FROM subscriptions WHERE id = ?"
_ACTIVE_SUBS = "SELECT * FROM subscriptions WHERE user = ? AND start <= ? AND end_at > ?"
_NEW_PERIOD = "UPDATE subscriptions SET period_start = ? WHERE id = ? RETURNING *"
_SUB_USED = "UPDATE subscriptions SET used = used + ? WHERE id = ?"
_USER_USED = "UPDATE users SET used = used + ?, request_count = request_count + ? WHERE name = ?"
# A wallet capture moves the balance and counts the use in one statement (and one journal entry).
WALLET_SETTLED = (
    "UPDATE users SET balance = balance + ?, reserved = reserved + ?, used = used + ?,"
    " request_count = request_count + ? WHERE name = ?"
)
# What a hold checks, key and owner in one lookup (the full rows are not needed), with
# whether the request id is held already and whether the user has an active subscription:
# one statement instead of three on the common path.
_HOLD_CHECKS = (
    "SELECT k.user, k.status, k.expires_at, k.quota, k.balance, k.reserved, u.preference, u.balance, u.reserved,"
    " EXISTS (SELECT 1 FROM holds WHERE request_id = ?),"
    " EXISTS (SELECT 1 FROM subscriptions WHERE user = u.name AND start <= ? AND end_at > ?)"
    " FROM api_keys k JOIN users u ON u.name = ? WHERE k.id = ?"
)
# Counting the key's usage also reads what settlement needs from the key: one statement, not two.
_KEY_USED = "UPDATE api_keys SET used = used + ?, request_count = request_count + ? WHERE id = ? RETURNING quota, name"
_UPSTREAM_USED = (
    "INSERT INTO upstream_counters(name, used, request_count) VALUES (?, ?, 1)"
    " ON CONFLICT(name) DO UPDATE SET used = used + excluded.used, request_count = request_count + 1"
)
RESOLVED = "UPDATE holds SET state = ?, charged = ?, overage = ?, resolved_at = ? WHERE request_id = ?"
INSERT_HOLD = (
    "INSERT INTO holds(request_id, user, key_id, source, subscription_id, amount, key_amount,"
    " price_version, instance_id, created_at, expires_at, state)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')"
)
_LOG_FIXED = (
    "ts",
    "request_id",
    "user",
    "key_id",
    "source",
    "resolution",
    "estimate",
    "charge",
    "overage",
    "price_version",
)
INSERT_LOG = "INSERT INTO consume_log({}) VALUES ({})".format(
    ", ".join((*_LOG_FIXED, *schema.log_columns())),
    ", ".join(("?",) * len(_LOG_FIXED) + tuple(schema.log_placeholders())),
)
# A task's hold (instance `TASK_OWNER`) is never an orphan: it lives as long as its task.
_ORPHANS = f"""
SELECT h.* FROM holds h LEFT JOIN instances i ON i.id = h.instance_id
WHERE h.state = 'open' AND (i.last_seen IS NULL OR i.last_seen < ? OR h.expires_at < ?)
AND h.instance_id != '{TASK_OWNER}'
ORDER BY h.created_at, h.request_id
"""


def fetch_one(db: Db, sql: str, params: Iterable[object] = ()) -> sqlite3.Row | None:
    """The first row of a query, or None."""
    row: sqlite3.Row | None = db.execute(sql, tuple(params)).fetchone()
    return row


def fetch_all(db: Db, sql: str, params: Iterable[object] = ()) -> list[sqlite3.Row]:
    """Every row of a query."""
    return list(db.execute(sql, tuple(params)).fetchall())


def move(
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
    if db.execute(_MOVE[owner], (d_balance, d_reserved, ident)).rowcount != 1:
        raise sqlite3.IntegrityError(f"no account {owner}:{ident}")
    db.execute(JOURNAL, (ts, rules.account(owner, ident), kind, d_balance, d_reserved, request_id, note))


def roll_subscription(db: Db, row: sqlite3.Row, now: float) -> sqlite3.Row:
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
        move(db, now, "sub", sub_id, "credit", -row["balance"], 0, note="period end: unused quota expires")
    move(db, now, "sub", sub_id, "credit", row["quota"], 0, note="period start")
    fresh: sqlite3.Row = db.execute(_NEW_PERIOD, (current, sub_id)).fetchall()[0]
    return fresh


def _sub_balance(db: Db, ts: float, held: Hold) -> int:
    """The balance left in the period of the hold's subscription at `ts` (rolled first)."""
    sub = fetch_one(db, _SUB_ROW, (held.subscription_id,))
    if sub is None or held.subscription_id is None:
        raise sqlite3.IntegrityError(f"hold {held.request_id} names a missing subscription")
    balance: int = roll_subscription(db, sub, ts)["balance"]
    return balance


def settle(db: Db, ts: float, held: Hold, state: HoldState, charge: int, log: LogDetails) -> Resolution:
    """Resolve an open hold as `state` with `charge`, in `db`'s transaction: write what the
    capture rule (`rules.settlement`) says, then the hold's resolution and the log row."""
    # The key's counters move first: the same statement says whether it has a quota, which
    # the rule needs (its `counted` is this same `counts_as_request`).
    counted = int(rules.counts_as_request(state, held.checkpoint))
    key = db.execute(_KEY_USED, (charge, counted, held.key_id)).fetchall()
    if not key:
        raise sqlite3.IntegrityError(f"hold {held.request_id} names a missing key")
    quota, key_name = key[0]
    sub_balance = 0 if held.source is FundingSource.WALLET else _sub_balance(db, ts, held)
    _, charge, overage, counted, sub_used, upstream, entries = rules.settlement(
        held, state, charge, log, key_limited=quota is not None, sub_balance=sub_balance
    )
    rid = held.request_id
    (owner, ident, kind, d_balance, d_reserved, note), *others = entries
    if owner == "wallet":
        # The wallet's entry and the user's counters in one statement.
        if db.execute(WALLET_SETTLED, (d_balance, d_reserved, charge, counted, ident)).rowcount != 1:
            raise sqlite3.IntegrityError(f"no account wallet:{ident}")
        db.execute(JOURNAL, (ts, rules.account(owner, ident), kind, d_balance, d_reserved, rid, note))
    else:
        move(db, ts, owner, ident, kind, d_balance, d_reserved, rid, note)
        db.execute(_SUB_USED, (sub_used, ident))
        db.execute(_USER_USED, (charge, counted, held.user))
    for entry in others:
        move(db, ts, *entry[:5], rid, entry[5])
    if upstream:
        db.execute(_UPSTREAM_USED, (upstream, charge))
    db.execute(RESOLVED, (state.value, charge, overage, ts, rid))
    db.execute(
        INSERT_LOG,
        (
            ts,
            rid,
            held.user,
            held.key_id,
            held.source.value,
            state.value,
            held.amount,
            charge,
            overage,
            held.price_version,
            *schema.log_values(log, key_name),
        ),
    )
    return Resolution(rid, state, charge, overage, True)


def key_refusal(key: ApiKey | None, user: str, amount: int, now: float) -> HoldRefusal | None:
    """The key-level refusal for a hold, if any (a key of another user is unknown)."""
    if key is None:
        return HoldRefusal(Refusal.UNKNOWN_KEY, 0, amount)
    available = key.balance - key.reserved
    return key_check(key.user == user, key.status, key.expires_at, key.unlimited, available, amount, now)


def key_check(
    owned: bool, status: str, expires_at: float | None, unlimited: bool, available: int, amount: int, now: float
) -> HoldRefusal | None:
    """The key-level refusal for a hold from the key's fields (`owned`: it is the user's)."""
    if not owned:
        return HoldRefusal(Refusal.UNKNOWN_KEY, 0, amount)
    reason = rules.key_refusal(status, expires_at, now)
    if reason is not None:
        return HoldRefusal(reason, 0, amount)
    if not unlimited and not rules.affords(available, amount):
        return HoldRefusal(Refusal.INSUFFICIENT_KEY_QUOTA, available, amount)
    return None


def record_hold(db: Db, held: Hold, *, limited: bool) -> None:
    """Insert the hold row and its `hold` ledger entries."""
    db.execute(
        INSERT_HOLD,
        (
            held.request_id,
            held.user,
            held.key_id,
            held.source.value,
            held.subscription_id,
            held.amount,
            held.key_amount,
            held.price_version,
            held.instance_id,
            held.created_at,
            held.expires_at,
        ),
    )
    if held.source is FundingSource.WALLET:
        move(db, held.created_at, "wallet", held.user, "hold", 0, held.amount, held.request_id)
    else:
        assert held.subscription_id is not None
        move(db, held.created_at, "sub", held.subscription_id, "hold", 0, held.amount, held.request_id)
    if limited:
        move(db, held.created_at, "key", held.key_id, "hold", 0, held.key_amount, held.request_id)


def offers_tx(db: Db, user: str, now: float, model: str) -> list[rules.SubOffer]:
    """The user's subscriptions usable for `model` now, rolled over to the current period."""
    offers = []
    for row in fetch_all(db, _ACTIVE_SUBS, (user, now, now)):
        sub = schema.to_subscription(roll_subscription(db, row, now))
        if rules.model_allowed(sub.models, model):
            offers.append(rules.SubOffer(sub.id, sub.end, sub.available))
    return offers


def hold_tx(
    db: Db,
    clock: Clock,
    request_id: str,
    user: str,
    key_id: str,
    amount: int,
    preference: Preference | None,
    price_version: str,
    ttl: float,
    instance_id: str,
    model: str,
) -> Hold | HoldRefusal:
    """`Store.hold` as one transaction: idempotency, key checks, funding choice, reservation."""
    now = clock()
    row = db.execute(_HOLD_CHECKS, (request_id, now, now, user, key_id)).fetchone()
    if row is None or row[9]:  # held already, or no such key or user: the rare paths
        existing = fetch_one(db, _HOLD, (request_id,))
        if existing is not None:
            return schema.to_hold(existing)
        krow = fetch_one(db, _KEY_ROW, (key_id,))
        if krow is not None and krow["user"] == user:
            raise StoreError(f"unknown user {user!r}")
        return HoldRefusal(Refusal.UNKNOWN_KEY, 0, amount)
    owner_of_key, status, expires_at, quota, k_balance, k_reserved, user_pref, u_balance, u_reserved = row[:9]
    unlimited = quota is None
    refusal = key_check(owner_of_key == user, status, expires_at, unlimited, k_balance - k_reserved, amount, now)
    if refusal is not None:
        return refusal
    offers = offers_tx(db, user, now, model) if row[10] else []
    choice = rules.choose_funding(preference or Preference(user_pref), u_balance - u_reserved, offers, amount)
    if isinstance(choice, HoldRefusal):
        return choice
    held = Hold(
        request_id=request_id,
        user=user,
        key_id=key_id,
        source=choice.source,
        subscription_id=choice.subscription_id,
        amount=amount,
        key_amount=0 if unlimited else amount,
        price_version=price_version,
        instance_id=instance_id,
        created_at=now,
        expires_at=now + ttl,
        state=HoldState.OPEN,
    )
    record_hold(db, held, limited=not unlimited)
    return held


def resolve_tx(db: Db, clock: Clock, request_id: str, state: HoldState, charge: int, log: LogDetails) -> Resolution:
    """Capture or release one hold as one transaction; a resolved hold answers as it was resolved."""
    row = fetch_one(db, _HOLD, (request_id,))
    if row is None:
        raise StoreError(f"unknown hold {request_id!r}")
    if row["state"] != HoldState.OPEN:
        return schema.to_resolution(row, first=False)
    return settle(db, clock(), schema.to_hold(row), state, charge, log)


def orphans_tx(db: Db, clock: Clock, now: float, orphan_after: float) -> list[Resolution]:
    """Expire every orphaned hold (see `SQLiteStore.resolve_orphans`) in one transaction."""
    done = []
    ts = clock()
    for row in fetch_all(db, _ORPHANS, (now - orphan_after, now)):
        held = schema.to_hold(row)
        details = LogDetails(end_reason="orphaned", usage_source="none" if held.checkpoint is None else "partial")
        done.append(settle(db, ts, held, HoldState.EXPIRED, held.checkpoint or 0, details))
    return done
