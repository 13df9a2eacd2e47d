"""Price versions on Redis (`plugins.billing.store.prices`), for instances sharing one store.

Two keys under their own hash tag, so the save script stays in one Cluster slot:

    P:{prices}:head      string   the newest version number (absent: none yet)
    P:{prices}:versions  hash     number -> the version record as JSON

A save is the `save_prices` script: it compares the caller's base with the head and
appends the next number in the same step. Instances poll the head (one GET).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from plugins.billing.store.base import StoreError
from plugins.billing.store.prices import NOTE_MAX, PriceConflict, PriceVersion, document_digest
from plugins.billing.store.redis.client import RedisCore, guarded
from plugins.billing.store.redis.layout import Layout


def _version(raw: str) -> PriceVersion:
    d = json.loads(raw)
    return PriceVersion(
        number=int(d["number"]),
        base=int(d["base"]),
        document=str(d["document"]),
        digest=str(d["digest"]),
        source=str(d["source"]),
        note=str(d["note"]),
        created_at=float(d["created_at"]),
    )


class RedisPrices:
    """The `PriceStore` methods of `RedisStore` (which sets `_core`, `_k` and `_clock`)."""

    _core: RedisCore
    _k: Layout
    _clock: Callable[[], float]

    def _price_keys(self) -> tuple[str, str]:
        base = f"{self._k.prefix}:{{prices}}"
        return f"{base}:head", f"{base}:versions"

    @guarded
    async def price_head(self) -> int:
        """The number of the newest version, 0 when none was saved."""
        raw = await self._core.call("get", self._price_keys()[0])
        return int(raw) if raw else 0

    @guarded
    async def get_price_version(self, number: int | None = None) -> PriceVersion | None:
        """Version `number` (the newest when None), or None."""
        if number is None:
            number = await self.price_head()
        if number <= 0:
            return None
        raw: str | None = await self._core.hget(self._price_keys()[1], str(number))
        return None if raw is None else _version(raw)

    @guarded
    async def list_price_versions(self, limit: int = 100) -> list[PriceVersion]:
        """The newest `limit` versions, newest first."""
        head = await self.price_head()
        numbers = [str(n) for n in range(head, max(0, head - int(limit)), -1)]
        if not numbers:
            return []
        raws: list[Any] = await self._core.call("hmget", self._price_keys()[1], *numbers)
        return [_version(r) for r in raws if r is not None]

    @guarded
    async def save_price_version(
        self, base: int, document: str, source: str, note: str = ""
    ) -> PriceVersion | PriceConflict:
        """Append version `base + 1` if `base` is the head; else the conflict, nothing written."""
        if base < 0:
            raise StoreError("a price version's base must be >= 0")
        version = PriceVersion(
            base + 1, base, document, document_digest(document), source, note[:NOTE_MAX], self._clock()
        )
        record = json.dumps(
            {
                "number": version.number,
                "base": version.base,
                "document": version.document,
                "digest": version.digest,
                "source": version.source,
                "note": version.note,
                "created_at": version.created_at,
            },
            separators=(",", ":"),
        )
        saved, number = await self._core.run("save_prices", list(self._price_keys()), [int(base), record])
        if int(saved) != 1:
            return PriceConflict(base=base, head=int(number))
        return version
