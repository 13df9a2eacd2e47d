"""SQLite schema for `SQLiteStore`: versioned migrations and row → value conversions.

Migrations are an ordered list; `schema_version` records the highest one applied. They run
at `open()` inside `BEGIN IMMEDIATE`, so several processes opening one file at once apply
each migration exactly once. Never edit a released migration: append a new one.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from plugins.billing.store.base import (
    ApiKey,
    FundingSource,
    Hold,
    HoldState,
    LogDetails,
    LogRow,
    Plan,
    Preference,
    Resolution,
    Subscription,
    User,
)

_V1 = """
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    grp TEXT NOT NULL,
    preference TEXT NOT NULL,
    balance INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0,
    used INTEGER NOT NULL DEFAULT 0,
    request_count INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    key_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_at REAL,
    quota INTEGER,
    balance INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0,
    used INTEGER NOT NULL DEFAULT 0,
    request_count INTEGER NOT NULL DEFAULT 0,
    models TEXT NOT NULL,
    ips TEXT NOT NULL,
    grp TEXT,
    created_at REAL NOT NULL,
    hint TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX api_keys_hash ON api_keys(key_hash);
CREATE INDEX api_keys_user ON api_keys(user, created_at);
CREATE TABLE plans (
    name TEXT PRIMARY KEY,
    quota INTEGER NOT NULL,
    period TEXT NOT NULL,
    duration_days INTEGER,
    models TEXT NOT NULL
);
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    plan TEXT NOT NULL,
    quota INTEGER NOT NULL,
    period TEXT NOT NULL,
    start REAL NOT NULL,
    end_at REAL NOT NULL,
    period_start REAL NOT NULL,
    balance INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0,
    used INTEGER NOT NULL DEFAULT 0,
    models TEXT NOT NULL
);
CREATE INDEX subscriptions_user ON subscriptions(user, end_at);
CREATE TABLE holds (
    request_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    source TEXT NOT NULL,
    subscription_id TEXT,
    amount INTEGER NOT NULL,
    key_amount INTEGER NOT NULL,
    price_version TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT NOT NULL,
    checkpoint INTEGER,
    charged INTEGER,
    overage INTEGER,
    resolved_at REAL
);
CREATE INDEX holds_open ON holds(instance_id) WHERE state = 'open';
CREATE TABLE ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    d_balance INTEGER NOT NULL,
    d_reserved INTEGER NOT NULL,
    request_id TEXT,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX ledger_account ON ledger(account);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TABLE consume_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    source TEXT NOT NULL,
    resolution TEXT NOT NULL,
    estimate INTEGER NOT NULL,
    charge INTEGER NOT NULL,
    overage INTEGER NOT NULL,
    price_version TEXT NOT NULL,
    end_reason TEXT NOT NULL,
    usage_source TEXT NOT NULL,
    model TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    upstream TEXT NOT NULL,
    key_name TEXT NOT NULL,
    grp TEXT NOT NULL,
    multiplier TEXT NOT NULL,
    stream INTEGER NOT NULL,
    input INTEGER NOT NULL,
    cache_read INTEGER NOT NULL,
    cache_write_5m INTEGER NOT NULL,
    cache_write_1h INTEGER NOT NULL,
    output INTEGER NOT NULL,
    audio_in INTEGER NOT NULL,
    audio_out INTEGER NOT NULL,
    images INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    ttft_ms INTEGER,
    status INTEGER NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX consume_log_user ON consume_log(user, id);
CREATE INDEX consume_log_ts ON consume_log(ts);
CREATE INDEX consume_log_request ON consume_log(request_id);
CREATE TABLE upstream_counters (
    name TEXT PRIMARY KEY,
    used INTEGER NOT NULL DEFAULT 0,
    request_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    last_seen REAL NOT NULL
);
"""

# Two indexes only `weir audit` read, each a page written by every hold or capture (the
# request-id index a random page): the audit scans instead (see sqlite_audit.py).
_V2 = """
DROP INDEX ledger_account;
DROP INDEX consume_log_request;
"""

# Pages every hold or capture writes to the WAL, cut by two (each page is a 4 KiB frame
# written in the commit): `holds` keyed by its request id directly (WITHOUT ROWID: one
# B-tree instead of the table and its primary-key index), and the two append-only tables
# without AUTOINCREMENT, whose bookkeeping row in `sqlite_sequence` every insert rewrote.
# Neither table is ever deleted from (the ledger refuses it), so plain rowids still only
# grow and every existing id is kept. Each table is rebuilt by copying it.
_V3 = """
CREATE TABLE holds_v3 (
    request_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    source TEXT NOT NULL,
    subscription_id TEXT,
    amount INTEGER NOT NULL,
    key_amount INTEGER NOT NULL,
    price_version TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT NOT NULL,
    checkpoint INTEGER,
    charged INTEGER,
    overage INTEGER,
    resolved_at REAL
) WITHOUT ROWID;
INSERT INTO holds_v3 SELECT * FROM holds;
DROP TABLE holds;
ALTER TABLE holds_v3 RENAME TO holds;
CREATE INDEX holds_open ON holds(instance_id) WHERE state = 'open';
CREATE TABLE ledger_v3 (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    d_balance INTEGER NOT NULL,
    d_reserved INTEGER NOT NULL,
    request_id TEXT,
    note TEXT NOT NULL DEFAULT ''
);
INSERT INTO ledger_v3 SELECT * FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_v3 RENAME TO ledger;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TABLE consume_log_v3 (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    source TEXT NOT NULL,
    resolution TEXT NOT NULL,
    estimate INTEGER NOT NULL,
    charge INTEGER NOT NULL,
    overage INTEGER NOT NULL,
    price_version TEXT NOT NULL,
    end_reason TEXT NOT NULL,
    usage_source TEXT NOT NULL,
    model TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    upstream TEXT NOT NULL,
    key_name TEXT NOT NULL,
    grp TEXT NOT NULL,
    multiplier TEXT NOT NULL,
    stream INTEGER NOT NULL,
    input INTEGER NOT NULL,
    cache_read INTEGER NOT NULL,
    cache_write_5m INTEGER NOT NULL,
    cache_write_1h INTEGER NOT NULL,
    output INTEGER NOT NULL,
    audio_in INTEGER NOT NULL,
    audio_out INTEGER NOT NULL,
    images INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    ttft_ms INTEGER,
    status INTEGER NOT NULL,
    error TEXT NOT NULL
);
INSERT INTO consume_log_v3 SELECT * FROM consume_log;
DROP TABLE consume_log;
ALTER TABLE consume_log_v3 RENAME TO consume_log;
CREATE INDEX consume_log_user ON consume_log(user, id);
CREATE INDEX consume_log_ts ON consume_log(ts);
DELETE FROM sqlite_sequence WHERE name IN ('ledger', 'consume_log');
"""

# Hold liveness: `touched_at`, the last checkpoint's time. The ttl needs no column: it is
# `expires_at` minus the last sign of life (see sqlite_store._CHECKPOINT). No rewrite.
_V4 = "ALTER TABLE holds ADD COLUMN touched_at REAL;"

# Price versions (docs/billing-rules.md §9): the numbered price lists every instance
# charges with; `plugins.billing.store.sqlite.prices` reads and appends them.
_V5 = """
CREATE TABLE price_versions (
    number INTEGER PRIMARY KEY,
    base INTEGER NOT NULL,
    document TEXT NOT NULL,
    digest TEXT NOT NULL,
    source TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
"""

# Async tasks (docs/billing-rules.md §9, docs/tasks.md): one row per task, owned by its id
# (its hold has the same id), and the task's seconds in its consume-log row.
_V6 = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    api TEXT NOT NULL,
    model TEXT NOT NULL,
    upstream TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    upstream_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    seconds INTEGER NOT NULL,
    terms TEXT NOT NULL,
    key_name TEXT NOT NULL,
    grp TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL,
    state TEXT NOT NULL,
    end_reason TEXT NOT NULL DEFAULT '',
    charge INTEGER,
    note TEXT NOT NULL DEFAULT '',
    ended_at REAL,
    next_poll_at REAL NOT NULL,
    polls INTEGER NOT NULL DEFAULT 0,
    misses INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX tasks_due ON tasks(next_poll_at) WHERE state = 'open';
CREATE INDEX tasks_user ON tasks(user, created_at);
ALTER TABLE consume_log ADD COLUMN seconds INTEGER NOT NULL DEFAULT 0;
"""

# Accounts people can edit: a user's disabled flag, a subscription's cancellation, and who
# made a ledger entry by hand (top-ups, adjustments). Columns only: no rewrite.
_V7 = """
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN cancelled_at REAL;
ALTER TABLE ledger ADD COLUMN actor TEXT NOT NULL DEFAULT '';
"""

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, _V1), (2, _V2), (3, _V3), (4, _V4), (5, _V5), (6, _V6), (7, _V7)
)
"""(version, script) in ascending order; each runs once per database file."""

def migrate(conn: sqlite3.Connection) -> None:
    """Apply pending migrations (inside the caller's `BEGIN IMMEDIATE`)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    current = (row[0] if row else None) or 0
    for version, script in MIGRATIONS:
        if version > current:
            for statement in statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))


def statements(script: str) -> Iterable[str]:
    """Split a migration script into complete statements (triggers contain semicolons)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


LOG_DETAIL_FIELDS: tuple[str, ...] = LogDetails._fields
"""LogDetails field names in declaration order (the consume_log columns share them)."""

_COLUMN_OF = {"group": "grp"}


def log_columns() -> list[str]:
    """The consume_log column for each LogDetails field, in field order."""
    return [_COLUMN_OF.get(f, f) for f in LOG_DETAIL_FIELDS]


_KEY_NAME_AT = LOG_DETAIL_FIELDS.index("key_name")


def log_values(details: LogDetails, key_name: str = "") -> tuple[object, ...]:
    """The consume_log values of `details`, in `log_columns()` order (the tuple itself);
    `key_name` fills in when the details have none. `stream` stays a bool: sqlite3 stores a
    bool as the integer 1 or 0."""
    if details[_KEY_NAME_AT] or not key_name:
        return details
    return (*details[:_KEY_NAME_AT], key_name, *details[_KEY_NAME_AT + 1 :])


def dump_list(items: Sequence[str]) -> str:
    """A tuple of strings as stored (JSON)."""
    return json.dumps(list(items))


def _load_list(raw: str) -> tuple[str, ...]:
    return tuple(str(x) for x in json.loads(raw))


def to_user(r: sqlite3.Row) -> User:
    """A `users` row as a User."""
    return User(
        name=r["name"], group=r["grp"], preference=Preference(r["preference"]),
        balance=r["balance"], reserved=r["reserved"], used=r["used"],
        request_count=r["request_count"], created_at=r["created_at"], disabled=bool(r["disabled"]),
    )


def to_key(r: sqlite3.Row) -> ApiKey:
    """An `api_keys` row as an ApiKey (the hash stays in the database)."""
    return ApiKey(
        id=r["id"], user=r["user"], name=r["name"], status=r["status"],
        expires_at=r["expires_at"], quota=r["quota"], balance=r["balance"],
        reserved=r["reserved"], used=r["used"], request_count=r["request_count"],
        models=_load_list(r["models"]), ips=_load_list(r["ips"]), group=r["grp"],
        created_at=r["created_at"], hint=r["hint"],
    )


def to_plan(r: sqlite3.Row) -> Plan:
    """A `plans` row as a Plan."""
    return Plan(
        name=r["name"], quota=r["quota"], period=r["period"],
        duration_days=r["duration_days"], models=_load_list(r["models"]),
    )


def to_subscription(r: sqlite3.Row) -> Subscription:
    """A `subscriptions` row as a Subscription."""
    return Subscription(
        id=r["id"], user=r["user"], plan=r["plan"], quota=r["quota"], period=r["period"],
        start=r["start"], end=r["end_at"], period_start=r["period_start"],
        balance=r["balance"], reserved=r["reserved"], used=r["used"],
        models=_load_list(r["models"]), cancelled_at=r["cancelled_at"],
    )


def to_hold(r: sqlite3.Row) -> Hold:
    """A `holds` row as a Hold."""
    return Hold(
        request_id=r["request_id"], user=r["user"], key_id=r["key_id"],
        source=FundingSource(r["source"]), subscription_id=r["subscription_id"],
        amount=r["amount"], key_amount=r["key_amount"], price_version=r["price_version"],
        instance_id=r["instance_id"], created_at=r["created_at"], expires_at=r["expires_at"],
        state=HoldState(r["state"]), checkpoint=r["checkpoint"], touched_at=r["touched_at"],
    )


def to_resolution(r: sqlite3.Row, *, first: bool) -> Resolution:
    """The resolution stored on a resolved `holds` row."""
    return Resolution(
        request_id=r["request_id"], state=HoldState(r["state"]),
        charged=r["charged"] or 0, overage=r["overage"] or 0, first=first,
    )


def to_log_row(r: sqlite3.Row) -> LogRow:
    """A `consume_log` row as a LogRow."""
    values = {f: r[_COLUMN_OF.get(f, f)] for f in LOG_DETAIL_FIELDS}
    values["stream"] = bool(values["stream"])
    return LogRow(
        id=r["id"], ts=r["ts"], request_id=r["request_id"], user=r["user"],
        key_id=r["key_id"], source=r["source"], estimate=r["estimate"], charge=r["charge"],
        overage=r["overage"], price_version=r["price_version"],
        details=LogDetails(**values),
    )


def log_filter(
    user: str | None, since: float | None, until: float | None, before_id: int | None,
    key_id: str | None = None, model: str | None = None, end_reason: str | None = None,
) -> tuple[str, list[object]]:
    """The WHERE clause (or "") and its parameters for a consume-log query (`model` is a glob)."""
    clauses: list[str] = []
    params: list[object] = []
    for clause, value in (
        ("user = ?", user), ("ts >= ?", since), ("ts < ?", until), ("id < ?", before_id), ("key_id = ?", key_id),
        ("model GLOB ?", model), ("end_reason = ?", end_reason),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
