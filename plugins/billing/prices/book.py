"""The price list an instance charges with, kept in step with the store's price versions.

`PriceBook.current` is what `on_request` reads: one immutable `Current` (version number,
`PriceTable`, and the label written on holds), replaced whole when a new version arrives,
so a request sees one consistent table. A request keeps the `ModelPrice` it was estimated
with until it settles (`plugin.Billing.price`), and its hold records the label: an edit
while it streams never re-prices it (spec §2, §9).

At startup (`start`) proxy.yaml's models become version 1 of an empty store; a store that
already has versions keeps them, unless proxy.yaml's models changed since the last version
taken from it, in which case the file wins as a new version (an operator who edits the file
and restarts expects the edit to apply). Afterwards every instance polls the head
(`poll_forever`, every `price_poll_every` seconds) and adopts a new version without a
restart. A saved version is adopted at once by the instance that saved it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from plugins.billing.price_table import PriceTable
from plugins.billing.prices import document as doc
from plugins.billing.pricing import FallbackPrices, PricingConfig
from plugins.billing.store.base import PriceConflict, PriceStore, PriceVersion, StoreError
from proxy.host import ConfigError

log = logging.getLogger(__name__)

#: Where version 1 and later file-driven versions come from (`PriceVersion.source`).
FROM_CONFIG = "proxy.yaml"
#: How far back `start` looks for the last version taken from proxy.yaml.
_HISTORY_SCAN = 1000
_SEED_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class Current:
    """One adopted price version. `number` 0: proxy.yaml's prices before the store was read.

    `label` is what a hold and its log row record as `price_version`: `v<number>:<table
    hash>` (the hash alone before the store was read); computed once, read per request.
    """

    number: int
    table: PriceTable
    models: doc.Models
    version: PriceVersion | None = None
    label: str = field(init=False)

    def __post_init__(self) -> None:
        label = f"v{self.number}:{self.table.version}" if self.number else self.table.version
        object.__setattr__(self, "label", label)


class PriceBook:
    """The instance's current prices and the loop that keeps them current (see module doc)."""

    def __init__(self, block: Mapping[str, Any], fallback: FallbackPrices | None) -> None:
        """`block`: the billing config's pricing keys (`BillingConfig.pricing_block()`)."""
        self.config = PricingConfig.from_plugin_config(block)
        self.fallback = fallback
        pricing = block.get("pricing") or {}
        self.config_models = doc.normalise(pricing.get("models"), "pricing.models")
        self.current = Current(0, PriceTable(self.config, fallback), self.config_models)
        #: A version that failed to parse: not retried (and not logged again) on every poll.
        self._refused = 0

    def table_of(self, models: doc.Models) -> PriceTable:
        """The price table for a document, with proxy.yaml's quota, groups and fallback."""
        return PriceTable(dataclasses.replace(self.config, models=doc.parse(models)), self.fallback)

    def adopt(self, version: PriceVersion) -> Current:
        """Charge `version` from now on (the caller checked it is newer). Raises
        `ConfigError` when its document does not parse: the current prices stay."""
        models = doc.loads(version.document)
        self.current = Current(version.number, self.table_of(models), models, version)
        log.info(
            "prices: charging price version %d (%s, %s, %d models, %s)",
            version.number,
            version.source,
            version.digest,
            len(models),
            self.current.label,
        )
        return self.current

    async def start(self, store: PriceStore) -> None:
        """Seed or reconcile the store with proxy.yaml, then adopt the head (see module doc).
        A store error is logged; `poll_forever` tries again."""
        text = doc.dumps(self.config_models)
        for _ in range(_SEED_ATTEMPTS):
            head = await store.get_price_version()
            if head is not None and not await self._config_changed(store, head, text):
                self._adopt_checked(head)
                return
            base = head.number if head is not None else 0
            note = "proxy.yaml's prices" if head is None else f"proxy.yaml's prices changed (head was version {base})"
            saved = await store.save_price_version(base, text, FROM_CONFIG, note)
            if isinstance(saved, PriceVersion):
                if head is not None:
                    log.warning(
                        "prices: proxy.yaml's models changed since they were last saved: "
                        "saved as price version %d, replacing version %d",
                        saved.number,
                        base,
                    )
                self._adopt_checked(saved)
                return
            # Another instance saved meanwhile (a `--workers` start): look again.
        log.error("prices: could not settle the price version after %d attempts; charging proxy.yaml's", _SEED_ATTEMPTS)

    async def _config_changed(self, store: PriceStore, head: PriceVersion, text: str) -> bool:
        if head.document == text:
            return False
        for version in await store.list_price_versions(_HISTORY_SCAN):
            if version.source == FROM_CONFIG:
                return version.document != text
        return False  # no version from the file within reach: the store's edits stand

    def _adopt_checked(self, version: PriceVersion) -> None:
        if version.number == self.current.number:
            return
        try:
            self.adopt(version)
        except ConfigError as exc:
            self._refused = version.number
            log.error(
                "prices: price version %d cannot be used (%s); still charging %s",
                version.number,
                exc,
                self.current.label,
            )

    async def refresh(self, store: PriceStore) -> bool:
        """Adopt the store's head if it moved; True when the prices changed."""
        if self.current.number == 0 and not self._refused:
            await self.start(store)
            return self.current.number != 0
        head = await store.price_head()
        if head in (self.current.number, self._refused):
            return False
        version = await store.get_price_version(head)
        if version is None:
            return False
        before = self.current.number
        self._adopt_checked(version)
        return self.current.number != before

    async def poll_forever(self, store: PriceStore, every: float) -> None:
        """Every `every` seconds, `refresh`; a store error is logged and retried next round."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh(store)
            except StoreError as exc:
                log.warning("prices: cannot read the price version: %s", exc)

    async def save(
        self, store: PriceStore, base: int, models: Any, source: str, note: str = ""
    ) -> PriceVersion | PriceConflict:
        """Validate `models` (a models block: `ConfigError` when it is not one), save it as
        version `base + 1` and adopt it here at once; a stale `base` is a `PriceConflict`."""
        canonical = doc.normalise(models)
        self.table_of(canonical)  # refuse what could not be charged before it is stored
        saved = await store.save_price_version(base, doc.dumps(canonical), source, note)
        if isinstance(saved, PriceConflict):
            log.info("prices: save based on version %d refused: version %d is newer", base, saved.head)
            return saved
        log.info(
            "prices: %s saved price version %d (based on %d)%s", source, saved.number, base, f": {note}" if note else ""
        )
        if saved.number > self.current.number:
            self._adopt_checked(saved)
        return saved
