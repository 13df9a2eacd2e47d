"""Price versions on SQLite (`plugins.billing.store.prices`): the `price_versions` table.

A save is one `BEGIN IMMEDIATE` transaction that reads the head and appends the next
number only if the caller's base is that head, so two concurrent saves on one file (or on
two processes sharing it) cannot both win.
"""

from __future__ import annotations

import sqlite3

from plugins.billing.store.prices import NOTE_MAX, PriceConflict, PriceVersion, document_digest
from plugins.billing.store.sqlite.connection import SQLiteConnection
from plugins.billing.store.sqlite.ledger import Clock, Db, fetch_all, fetch_one

_READ = "DEFERRED"
_HEAD = "SELECT COALESCE(MAX(number), 0) FROM price_versions"


def _version(row: sqlite3.Row) -> PriceVersion:
    return PriceVersion(
        number=int(row["number"]),
        base=int(row["base"]),
        document=str(row["document"]),
        digest=str(row["digest"]),
        source=str(row["source"]),
        note=str(row["note"]),
        created_at=float(row["created_at"]),
    )


def _head(db: Db) -> int:
    row = db.execute(_HEAD).fetchone()
    return int(row[0])


def _get(db: Db, number: int | None) -> PriceVersion | None:
    if number is None:
        row = fetch_one(db, "SELECT * FROM price_versions ORDER BY number DESC LIMIT 1")
    else:
        row = fetch_one(db, "SELECT * FROM price_versions WHERE number = ?", (number,))
    return None if row is None else _version(row)


def _list(db: Db, limit: int) -> list[PriceVersion]:
    rows = fetch_all(db, "SELECT * FROM price_versions ORDER BY number DESC LIMIT ?", (limit,))
    return [_version(r) for r in rows]


def _save(db: Db, clock: Clock, base: int, document: str, source: str, note: str) -> PriceVersion | PriceConflict:
    head = _head(db)
    if head != base:
        return PriceConflict(base=base, head=head)
    version = PriceVersion(base + 1, base, document, document_digest(document), source, note[:NOTE_MAX], clock())
    db.execute(
        "INSERT INTO price_versions(number, base, document, digest, source, note, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            version.number,
            version.base,
            version.document,
            version.digest,
            version.source,
            version.note,
            version.created_at,
        ),
    )
    return version


class SQLitePrices(SQLiteConnection):
    """The `PriceStore` methods of `SQLiteStore`."""

    async def price_head(self) -> int:
        """The number of the newest version, 0 when none was saved."""
        return await self.run(_head, mode=_READ, inline=True)

    async def get_price_version(self, number: int | None = None) -> PriceVersion | None:
        """Version `number` (the newest when None), or None."""
        return await self.run(_get, number, mode=_READ)

    async def list_price_versions(self, limit: int = 100) -> list[PriceVersion]:
        """The newest `limit` versions, newest first."""
        return await self.run(_list, max(0, int(limit)), mode=_READ)

    async def save_price_version(
        self, base: int, document: str, source: str, note: str = ""
    ) -> PriceVersion | PriceConflict:
        """Append version `base + 1` if `base` is the head; else the conflict, nothing written."""
        return await self.run(_save, self._clock, int(base), document, source, note)
