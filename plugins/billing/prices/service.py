"""`PriceDesk`: what the pricing page, the price editor and their APIs share, so each is a
thin face over the same functions (the CLI uses `PriceBook` and the store directly).

One per billing plugin, built at startup with the store, the upstreams of proxy.yaml and
the LiteLLM reference. The served-model catalog is computed once per adopted price
version (a page view costs a dictionary lookup, not a scan of the reference list).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from plugins.billing.price_data import SNAPSHOT, SNAPSHOT_DATE, LiteLLMPrices
from plugins.billing.prices import document as doc
from plugins.billing.prices import editing
from plugins.billing.prices.book import Current, PriceBook
from plugins.billing.prices.catalog import Listed, is_pattern, served_models, serving
from plugins.billing.prices.conflicts import Conflict, find_conflicts
from plugins.billing.prices.health import ChannelHealth
from plugins.billing.prices.view import REFERENCE_LABEL, plain, price_fields
from plugins.billing.pricing import ModelPrice
from plugins.billing.store.base import PriceConflict, PriceVersion, Store
from proxy.host import Config, ConfigError

__all__ = ["PriceDesk"]

_COMPARED = ("input", "output", "per_request")


class PriceDesk:
    """The price views and edits of one instance (see module doc)."""

    def __init__(
        self, book: PriceBook, store: Store, config: Config, reference: LiteLLMPrices, health: ChannelHealth
    ) -> None:
        self.book = book
        self._store = store
        self.config = config
        self.reference = reference
        self.health = health
        self._cached: tuple[Current, list[Listed]] | None = None

    def store(self) -> Store:
        """The store the versions live in."""
        return self._store

    def catalog(self) -> list[Listed]:
        """The served models under the current price version (cached per version)."""
        cur = self.book.current
        if self._cached is None or self._cached[0] is not cur:
            self._cached = (cur, served_models(self.config, cur.table, cur.table.config.models, self.reference))
        return self._cached[1]

    def _served_for(self, models: doc.Models) -> list[Listed]:
        table = self.book.table_of(models)
        return served_models(self.config, table, table.config.models, self.reference)

    def conflicts_of(self, models: Any) -> list[Conflict]:
        """The conflicts of a pending models block (any shape: a bad one yields what it can)."""
        if not isinstance(models, Mapping):
            return []
        served = self.catalog()
        try:
            served = self._served_for(doc.normalise(models))
        except (ConfigError, ValueError):
            pass  # a model priced both ways, say: judge it against what is served now
        return find_conflicts(models, served, self.reference, self.book.config.fallback == "litellm")

    def preview(self, models: Any) -> dict[str, Any]:
        """The pending change against the current version: `changes` (the diff), `conflicts`,
        and `error` when the block cannot be saved as it is (the model and field named)."""
        conflicts = [c.as_dict() for c in self.conflicts_of(models)]
        try:
            pending = doc.normalise(models)
            self.book.table_of(pending)
        except ConfigError as exc:
            return {"base_version": self.book.current.number, "changes": [], "conflicts": conflicts, "error": str(exc)}
        changes = [c.as_dict() | {"text": c.describe()} for c in doc.diff(self.book.current.models, pending)]
        return {"base_version": self.book.current.number, "changes": changes, "conflicts": conflicts, "error": None}

    def merged(self, imported: Mapping[str, Mapping[str, Any]]) -> doc.Models:
        """The current models with `imported` ones added or replaced (an import keeps the rest)."""
        return {**self.book.current.models, **doc.normalise(imported)}

    async def save(self, base: int, models: Any, source: str, note: str = "") -> PriceVersion | PriceConflict:
        """Save `models` as version `base + 1` (`PriceBook.save`)."""
        return await self.book.save(self._store, base, models, source, note)

    @staticmethod
    def version_dict(v: PriceVersion, *, with_models: bool) -> dict[str, Any]:
        """A version as wire JSON."""
        body: dict[str, Any] = {
            "version": v.number,
            "base_version": v.base,
            "created_at": v.created_at,
            "source": v.source,
            "note": v.note,
            "digest": v.digest,
        }
        if with_models:
            body["models"] = doc.loads(v.document)
        return body

    def editor_state(self) -> dict[str, Any]:
        """`GET /api/admin/prices`: the current version, its models as written, a row per
        served or configured model (configured, reference and the difference), conflicts."""
        cur = self.book.current
        return {
            "version": cur.number,
            "price_version": cur.label,
            "models": cur.models,
            "conflicts": [c.as_dict() for c in self.conflicts_of(cur.models)],
            "unpriced": [i.model for i in self.catalog() if i.source == "unpriced"],
            "rows": self.rows_for(cur.models),
            "reference": self.reference_info(),
        }

    def reference_info(self) -> dict[str, Any]:
        """The reference snapshot, as the pages label it."""
        return {
            "label": REFERENCE_LABEL,
            "snapshot": SNAPSHOT,
            "date": SNAPSHOT_DATE,
            "fallback": self.book.config.fallback == "litellm",
        }

    def rows_for(self, draft: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
        """A row per served or drafted model, priced as `draft` would price it. A drafted
        model that does not validate gets `source` "invalid" and its `error`."""
        good, bad = editing.split({k: dict(v) for k, v in draft.items()})
        items = self.catalog() if good == self.book.current.models else self._served_for(good)
        table_models = self.book.table_of(good).config.models
        rows = []
        for i in items:
            source = "invalid" if i.model in bad else i.source
            rows.append(
                self._row(
                    i.model,
                    draft.get(i.model),
                    i.price,
                    i.reference,
                    i.reference_key,
                    source,
                    i.upstreams,
                    i.pattern,
                    bad.get(i.model, ""),
                )
            )
        listed = {i.model for i in items}
        for name in (m for m in draft if m not in listed):  # drafted, but no upstream serves it
            ref = None if is_pattern(name) else self.reference.lookup(name)
            rows.append(
                self._row(
                    name,
                    draft[name],
                    table_models.get(name),
                    ref[0] if ref else None,
                    ref[1] if ref else "",
                    "invalid" if name in bad else "configured",
                    serving(self.config, name),
                    is_pattern(name),
                    bad.get(name, ""),
                )
            )
        rows.sort(key=lambda r: r["model"])
        return rows

    @staticmethod
    def _row(
        model: str,
        written: Mapping[str, str] | None,
        charged: ModelPrice | None,
        ref: ModelPrice | None,
        ref_key: str,
        source: str,
        upstreams: Sequence[str],
        pattern: bool,
        error: str = "",
    ) -> dict[str, Any]:
        return {
            "model": model,
            "pattern": pattern,
            "source": source,
            "upstreams": list(upstreams),
            "error": error,
            "configured": dict(written) if written is not None else None,
            "charged": price_fields(charged),
            "reference": price_fields(ref),
            "reference_key": ref_key,
            "difference": _difference(written, ref),
        }


def _difference(written: Mapping[str, str] | None, ref: ModelPrice | None) -> dict[str, str]:
    """Per compared field, the configured price relative to the reference: "+20%", "-95%"."""
    if written is None or ref is None:
        return {}
    out: dict[str, str] = {}
    ref_fields = price_fields(ref) or {}
    for f in _COMPARED:
        mine, theirs = written.get(f), ref_fields.get(f)
        if mine is None or theirs is None or Decimal(theirs) == 0:
            continue
        try:
            pct = ((Decimal(mine) - Decimal(theirs)) * 100 / Decimal(theirs)).quantize(Decimal("0.1"), ROUND_HALF_UP)
        except ArithmeticError:  # a draft's price that is not a number yet (InvalidOperation)
            continue
        out[f] = ("+" if pct > 0 else "") + plain(pct) + "%"
    return out
