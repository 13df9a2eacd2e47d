"""Price versions in the store: the values and the `PriceStore` protocol (docs/billing-rules.md §9).

The price list that billing charges with is a numbered sequence of versions kept in the
store, so that every instance sharing the store charges the same prices and an edit needs
no restart. Version 1 is proxy.yaml's `pricing.models`; each edit (the price editor,
`PUT /api/admin/prices`, `weir pricing rollback`) appends the next number, atomically with
the number it was based on: a save based on anything but the current head is refused
(`PriceConflict`), never merged.

A version's `document` is the models block as canonical JSON (model → field → decimal
string, keys sorted; see `plugins.billing.prices.document`): the store never parses it,
it keeps it exactly, so no price ever passes through a float on its way to the ledger.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

__all__ = ["PriceConflict", "PriceStore", "PriceVersion", "document_digest"]

#: The longest note a version keeps (an editor's comment, "rollback to 3", ...).
NOTE_MAX = 500


def document_digest(document: str) -> str:
    """A short content hash of a version's document (what `weir pricing history` shows)."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """One saved price list.

    `number` counts from 1; `base` is the version it was based on (0 for the first);
    `source` says who wrote it (`proxy.yaml`, `editor`, `api`, `cli`, `rollback`, `import`);
    `created_at` is epoch seconds from the store's clock.
    """

    number: int
    base: int
    document: str
    digest: str
    source: str
    note: str
    created_at: float


@dataclass(frozen=True, slots=True)
class PriceConflict:
    """A save refused because `base` was not the current head (`head`): someone saved first."""

    base: int
    head: int


class PriceStore(Protocol):
    """The price-version half of the store (both backends implement it)."""

    async def price_head(self) -> int:
        """The number of the newest version, 0 when none was saved. Cheap: instances poll it."""

    async def get_price_version(self, number: int | None = None) -> PriceVersion | None:
        """Version `number` (the newest when None), or None when there is no such version."""

    async def list_price_versions(self, limit: int = 100) -> list[PriceVersion]:
        """The newest `limit` versions, newest first."""

    async def save_price_version(
        self, base: int, document: str, source: str, note: str = ""
    ) -> PriceVersion | PriceConflict:
        """Append version `base + 1` holding `document`, in one atomic step, if `base` is
        the current head (0: no version yet); else change nothing and return the conflict."""
