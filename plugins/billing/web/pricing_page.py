"""`GET /pricing`: the public price list (no key), server-rendered from the same document as
`GET /api/pricing`: search, filters and sorting are query parameters, so it works without
script. Off with `pricing_page: false` (404)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from plugins.billing.prices.service import PriceDesk
from plugins.billing.prices.view import SORTS, PricingQuery, pricing_document
from proxy.host import host_of
from proxy.web import error_page, render

__all__ = ["pricing_page_routes"]

#: Price columns of the page: (field, heading).
COLUMNS = (
    ("input", "Input"),
    ("output", "Output"),
    ("cache_read", "Cache read"),
    ("cache_write", "Cache write"),
    ("per_request", "Per request"),
)
#: The rarer prices, shown together in one column: (field, label).
OTHERS = (
    ("cache_write_1h", "cache 1h"),
    ("audio_input", "audio in"),
    ("audio_output", "audio out"),
    ("image_input", "image in"),
    ("per_second", "per second of a task"),
)


def _links(query: Mapping[str, str], current: PricingQuery) -> dict[str, str]:
    """For each sortable column, the URL that sorts by it (again: the other way round)."""
    out = {}
    for field in SORTS:
        order = "desc" if current.sort == field and not current.desc else "asc"
        params = {k: v for k, v in query.items() if v and k not in ("sort", "order")}
        out[field] = "/pricing?" + urlencode({**params, "sort": field, "order": order})
    return out


def pricing_page_routes(desk: Callable[[], PriceDesk], enabled: bool) -> list[web.RouteDef]:
    """`/pricing`."""

    async def page(request: web.Request) -> web.StreamResponse:
        if not enabled:
            raise error_page(request, 404, "Not found", "This Weir does not publish its prices.")
        try:
            query = PricingQuery.from_query(request.query)
        except ValueError as exc:
            raise error_page(request, 400, "Bad filter", str(exc)) from None
        d = desk()
        cur = d.book.current
        groups = {g: None for g in sorted(set(cur.table.config.groups) | {"default"})}
        group = query.group if query.group in groups else "default"
        shown = PricingQuery(query.q, query.provider, group, query.capability, query.source, query.sort, query.desc)
        ups = [(u.name, u.type) for u in host_of(request.app).config.upstreams]
        body = pricing_document(d.catalog(), cur.table, cur.label, cur.number, shown, ups, d.health)
        all_groups = pricing_document([], cur.table, cur.label, cur.number, PricingQuery(), ups, d.health)["groups"]
        context: dict[str, Any] = {
            "title": "Prices",
            "doc": body,
            "group": group,
            "all_groups": all_groups,
            "query": query,
            "columns": COLUMNS,
            "others": OTHERS,
            "sort_links": _links(request.query, query),
            "has_reference": any(m["source"] == "reference" for m in body["models"]),
        }
        return render(request, "pricing/pricing.html", context)

    return [web.get("/pricing", page)]
