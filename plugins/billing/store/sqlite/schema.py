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
from plugins.billing.store.sqlite.ddl import V1 as _V1
from plugins.billing.store.sqlite.ddl import V2 as _V2
from plugins.billing.store.sqlite.ddl import V3 as _V3
from plugins.billing.store.sqlite.ddl import V4 as _V4
from plugins.billing.store.sqlite.ddl import V5 as _V5
from plugins.billing.store.sqlite.ddl import V6 as _V6
from plugins.billing.store.sqlite.ddl import V7 as _V7

#: The scripts are in `plugins.billing.store.sqlite.ddl`.
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _V1), (2, _V2), (3, _V3), (4, _V4), (5, _V5), (6, _V6), (7, _V7))
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
_STREAM_AT = LOG_DETAIL_FIELDS.index("stream")
_TTFT_AT = LOG_DETAIL_FIELDS.index("ttft_ms")
NO_TTFT = -0.5
"""Bound for a missing `ttft_ms` (an int when present, so never equal to it); the consume-log
INSERT turns it back into NULL."""


def log_values(details: LogDetails, key_name: str = "") -> list[object]:
    """The consume_log values of `details`, in `log_columns()` order; `key_name` fills in when
    the details have none.

    sqlite3 binds an int, float or str as it is but sends None and bool through its adapter
    protocol, a failed attribute lookup (an exception formatted and dropped) each, several
    times the cost of the bind: so `stream` goes as 1 or 0 (what sqlite3 stored for a bool
    anyway) and a missing `ttft_ms` as `NO_TTFT`, which `NULLIF` in the INSERT makes NULL.
    """
    values: list[object] = list(details)
    if key_name and not values[_KEY_NAME_AT]:
        values[_KEY_NAME_AT] = key_name
    values[_STREAM_AT] = 1 if values[_STREAM_AT] else 0
    if values[_TTFT_AT] is None:
        values[_TTFT_AT] = NO_TTFT
    return values


def log_placeholders() -> list[str]:
    """The consume_log INSERT's placeholder for each `log_columns()` value (see `log_values`)."""
    marks = ["?"] * len(LOG_DETAIL_FIELDS)
    marks[_TTFT_AT] = f"NULLIF(?, {NO_TTFT})"
    return marks


def dump_list(items: Sequence[str]) -> str:
    """A tuple of strings as stored (JSON)."""
    return json.dumps(list(items))


def _load_list(raw: str) -> tuple[str, ...]:
    return tuple(str(x) for x in json.loads(raw))


def to_user(r: sqlite3.Row) -> User:
    """A `users` row as a User."""
    return User(
        name=r["name"],
        group=r["grp"],
        preference=Preference(r["preference"]),
        balance=r["balance"],
        reserved=r["reserved"],
        used=r["used"],
        request_count=r["request_count"],
        created_at=r["created_at"],
        disabled=bool(r["disabled"]),
    )


def to_key(r: sqlite3.Row) -> ApiKey:
    """An `api_keys` row as an ApiKey (the hash stays in the database)."""
    return ApiKey(
        id=r["id"],
        user=r["user"],
        name=r["name"],
        status=r["status"],
        expires_at=r["expires_at"],
        quota=r["quota"],
        balance=r["balance"],
        reserved=r["reserved"],
        used=r["used"],
        request_count=r["request_count"],
        models=_load_list(r["models"]),
        ips=_load_list(r["ips"]),
        group=r["grp"],
        created_at=r["created_at"],
        hint=r["hint"],
    )


def to_plan(r: sqlite3.Row) -> Plan:
    """A `plans` row as a Plan."""
    return Plan(
        name=r["name"],
        quota=r["quota"],
        period=r["period"],
        duration_days=r["duration_days"],
        models=_load_list(r["models"]),
    )


def to_subscription(r: sqlite3.Row) -> Subscription:
    """A `subscriptions` row as a Subscription."""
    return Subscription(
        id=r["id"],
        user=r["user"],
        plan=r["plan"],
        quota=r["quota"],
        period=r["period"],
        start=r["start"],
        end=r["end_at"],
        period_start=r["period_start"],
        balance=r["balance"],
        reserved=r["reserved"],
        used=r["used"],
        models=_load_list(r["models"]),
        cancelled_at=r["cancelled_at"],
    )


def to_hold(r: sqlite3.Row) -> Hold:
    """A `holds` row as a Hold."""
    return Hold(
        request_id=r["request_id"],
        user=r["user"],
        key_id=r["key_id"],
        source=FundingSource(r["source"]),
        subscription_id=r["subscription_id"],
        amount=r["amount"],
        key_amount=r["key_amount"],
        price_version=r["price_version"],
        instance_id=r["instance_id"],
        created_at=r["created_at"],
        expires_at=r["expires_at"],
        state=HoldState(r["state"]),
        checkpoint=r["checkpoint"],
        touched_at=r["touched_at"],
    )


def to_resolution(r: sqlite3.Row, *, first: bool) -> Resolution:
    """The resolution stored on a resolved `holds` row."""
    return Resolution(
        request_id=r["request_id"],
        state=HoldState(r["state"]),
        charged=r["charged"] or 0,
        overage=r["overage"] or 0,
        first=first,
    )


def to_log_row(r: sqlite3.Row) -> LogRow:
    """A `consume_log` row as a LogRow."""
    values = {f: r[_COLUMN_OF.get(f, f)] for f in LOG_DETAIL_FIELDS}
    values["stream"] = bool(values["stream"])
    return LogRow(
        id=r["id"],
        ts=r["ts"],
        request_id=r["request_id"],
        user=r["user"],
        key_id=r["key_id"],
        source=r["source"],
        estimate=r["estimate"],
        charge=r["charge"],
        overage=r["overage"],
        price_version=r["price_version"],
        details=LogDetails(**values),
    )


def log_filter(
    user: str | None,
    since: float | None,
    until: float | None,
    before_id: int | None,
    key_id: str | None = None,
    model: str | None = None,
    end_reason: str | None = None,
) -> tuple[str, list[object]]:
    """The WHERE clause (or "") and its parameters for a consume-log query (`model` is a glob)."""
    clauses: list[str] = []
    params: list[object] = []
    for clause, value in (
        ("user = ?", user),
        ("ts >= ?", since),
        ("ts < ?", until),
        ("id < ?", before_id),
        ("key_id = ?", key_id),
        ("model GLOB ?", model),
        ("end_reason = ?", end_reason),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
