"""The public price list as wire JSON (`GET /api/pricing`) and the query that shapes it.

Prices are strings of exact decimals: USD per 1M tokens for token fields, USD per request
for `per_request`, with the group's multiplier applied (`groups`), and at multiplier 1
(`price`). The same document renders the `/pricing` page, so the page and the API agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, localcontext
from typing import Any

from plugins.billing.price_data import SNAPSHOT, SNAPSHOT_DATE
from plugins.billing.price_table import PriceTable
from plugins.billing.prices.catalog import Listed, filtered, sort_key
from plugins.billing.prices.health import ChannelHealth
from plugins.billing.pricing import ModelPrice

__all__ = ["PricingQuery", "REFERENCE_LABEL", "SORTS", "groups_of", "price_fields", "pricing_document"]

#: What the page says beside a price taken from the LiteLLM snapshot.
REFERENCE_LABEL = "LiteLLM reference price"
TOKEN_FIELDS = (
    "input",
    "output",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "audio_input",
    "audio_output",
    "image_input",
)
SORTS = ("model", "source", "input", "output", "cache_read", "per_request")
_WIDE = Context(prec=80)


def plain(d: Decimal) -> str:
    """An exact decimal as plain text, without trailing zeros (no rounding)."""
    if not d:
        return "0"
    with localcontext(_WIDE):
        return format(d.normalize(), "f")


def price_fields(price: ModelPrice | None, multiplier: Decimal = Decimal(1)) -> dict[str, str] | None:
    """A resolved price as `{field: decimal string}` (defaults filled in), times `multiplier`."""
    if price is None:
        return None
    with localcontext(_WIDE):
        if price.per_second is not None:  # a task model (docs/tasks.md)
            return {k: plain(Decimal(v) * multiplier) for k, v in price.as_dict().items()}
        if price.per_request is not None:
            return {"per_request": plain(price.per_request * multiplier)}
        return {f: plain(getattr(price, f) * multiplier) for f in TOKEN_FIELDS}


def groups_of(table: PriceTable) -> dict[str, Decimal]:
    """Each group a user can be in (the configured ones, and `default`) with its multiplier."""
    names = set(table.config.groups) | {"default"}
    return {g: table.multiplier(g, None) for g in sorted(names)}


@dataclass(frozen=True, slots=True)
class PricingQuery:
    """Search, filters and order, from the query string (the page works without script)."""

    q: str = ""
    provider: str = ""
    group: str = ""
    capability: str = ""
    source: str = ""
    sort: str = "model"
    desc: bool = False

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> PricingQuery:
        """Read `q`, `provider`, `group`, `capability`, `source`, `sort`, `order` (asc|desc);
        raises ValueError naming a bad `sort`, `order` or `source`."""
        sort = query.get("sort", "model") or "model"
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
        order = query.get("order", "asc") or "asc"
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be asc or desc, got {order!r}")
        source = query.get("source", "")
        if source not in ("", "configured", "reference", "unpriced"):
            raise ValueError(f"source must be configured, reference or unpriced, got {source!r}")
        text = {k: query.get(k, "")[:200] for k in ("q", "provider", "group", "capability")}
        return cls(sort=sort, desc=order == "desc", source=source, **text)

    def apply(self, items: Sequence[Listed]) -> list[Listed]:
        """The matching items in the asked order."""
        chosen = filtered(items, q=self.q, provider=self.provider, capability=self.capability, source=self.source)
        key = sort_key(self.sort)
        # Items without the sorted price (unpriced, or the other pricing mode) stay last either way.
        has = [i for i in chosen if not key(i)[0]]
        lacks = [i for i in chosen if key(i)[0]]
        return sorted(has, key=key, reverse=self.desc) + sorted(lacks, key=key)


def _model(item: Listed, groups: Mapping[str, Decimal]) -> dict[str, Any]:
    unit = (
        None
        if item.price is None
        else ("per_task" if item.price.is_task else "per_request" if item.price.is_per_request else "per_1m_tokens")
    )
    return {
        "model": item.model,
        "pattern": item.pattern,
        "source": item.source,
        "unit": unit,
        "price": price_fields(item.price),
        "groups": {g: price_fields(item.price, m) for g, m in groups.items()},
        "matched": item.matched,
        "upstreams": list(item.upstreams),
        "providers": list(item.providers),
        "capabilities": list(item.capabilities),
    }


def pricing_document(
    items: Sequence[Listed],
    table: PriceTable,
    label: str,
    number: int,
    query: PricingQuery,
    upstreams: Sequence[tuple[str, str]],
    health: ChannelHealth,
) -> dict[str, Any]:
    """The `GET /api/pricing` body: the models (filtered and sorted by `query`), the groups,
    the reference snapshot, and the available channels (upstream → models → groups)."""
    groups = groups_of(table)
    shown = {query.group: groups[query.group]} if query.group in groups else groups
    chosen = query.apply(items)
    channels = [
        {
            "upstream": name,
            "type": kind,
            "health": health.status(name),
            "models": [
                {"model": i.model, "pattern": i.pattern, "source": i.source, "groups": list(shown)}
                for i in chosen
                if name in i.upstreams
            ],
        }
        for name, kind in upstreams
    ]
    return {
        "version": number,
        "price_version": label,
        "quota_per_usd": table.config.quota_per_usd,
        "reference": {
            "label": REFERENCE_LABEL,
            "snapshot": SNAPSHOT,
            "date": SNAPSHOT_DATE,
            "fallback": table.config.fallback == "litellm",
        },
        "groups": {g: plain(m) for g, m in shown.items()},
        "filters": {
            "providers": sorted({p for i in items for p in i.providers}),
            "capabilities": sorted({c for i in items for c in i.capabilities}),
            "groups": list(groups),
        },
        "models": [_model(i, shown) for i in chosen],
        "channels": channels,
    }
