"""`GET /api/pricing` (public) and the admin price API (`/api/admin/prices...`).

The admin API is the price editor's backend and the contract of docs/design.md:

    GET  /api/admin/prices                    {"version", "models", "conflicts", "unpriced", "rows", ...}
    PUT  /api/admin/prices                    {"base_version", "models", "confirm"?, "note"?} -> {"version"}
    POST /api/admin/prices/preview            {"base_version"?, "models"} -> {"changes", "conflicts"}
    GET  /api/admin/prices/versions           {"head", "versions": [...]}
    GET  /api/admin/prices/versions/{n}       one version with its models
    POST /api/admin/prices/rollback           {"version", "base_version"} -> {"version"}
    POST /api/admin/prices/import-ratios      a new-api/one-api ratio export -> {"models", "warnings", "changes", "conflicts"}

A save whose `base_version` is not the newest version answers 409 (`stale_base_version`);
one with conflicts answers 422 (`price_conflicts`, the list in `conflicts`) unless
`confirm: true`, except a model priced both ways, which is never saved. Bodies are read
with `parse_float=Decimal`; prices may be JSON numbers or strings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from plugins.billing.prices import document as doc
from plugins.billing.prices.service import PriceDesk
from plugins.billing.prices.view import PricingQuery, pricing_document
from plugins.billing.ratios import convert_ratios
from plugins.billing.store.base import PriceConflict, PriceVersion
from proxy.host import ConfigError, host_of
from proxy.web import api_error, require_admin_api

__all__ = ["pricing_api_routes"]

#: The largest price API body (a price list of thousands of models fits easily).
MAX_BODY = 1024 * 1024


async def _json(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise api_error(413, "body_too_large", f"the body must be at most {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise api_error(413, "body_too_large", f"the body must be at most {MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"null", parse_float=Decimal)
    except ValueError as exc:
        raise api_error(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise api_error(400, "invalid_request", "the body must be a JSON object")
    return body


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise api_error(400, "invalid_request", f"`{name}` must be a version number (an integer >= 0)")
    return value


def _saved(result: PriceVersion | PriceConflict) -> web.Response:
    if isinstance(result, PriceConflict):
        raise api_error(
            409,
            "stale_base_version",
            f"the prices were changed meanwhile: version {result.head} is newer than base_version "
            f"{result.base}; reload them and edit again",
        )
    return web.json_response({"version": result.number, "base_version": result.base, "digest": result.digest})


class _PricingAPI:
    """The handlers, on the plugin's `PriceDesk` (bound at startup)."""

    def __init__(self, desk: Callable[[], PriceDesk], pricing_page: bool) -> None:
        self.desk = desk
        self.pricing_page = pricing_page

    async def public(self, request: web.Request) -> web.Response:
        """`GET /api/pricing`."""
        if not self.pricing_page:
            raise api_error(404, "not_found", "the price list is not published (billing: pricing_page: false)")
        try:
            query = PricingQuery.from_query(request.query)
        except ValueError as exc:
            raise api_error(400, "invalid_query", str(exc)) from None
        d = self.desk()
        cur = d.book.current
        ups = [(u.name, u.type) for u in host_of(request.app).config.upstreams]
        body = pricing_document(d.catalog(), cur.table, cur.label, cur.number, query, ups, d.health)
        return web.json_response(body, headers={"Cache-Control": "no-cache"})

    async def get_prices(self, request: web.Request) -> web.Response:
        """`GET /api/admin/prices`."""
        require_admin_api(request)
        return web.json_response(self.desk().editor_state())

    async def put_prices(self, request: web.Request) -> web.Response:
        """`PUT /api/admin/prices`: 409 on a stale base, 422 on unconfirmed conflicts."""
        require_admin_api(request)
        body = await _json(request)
        base = _int(body, "base_version")
        d = self.desk()
        conflicts = d.conflicts_of(body.get("models"))
        blocking = [c for c in conflicts if c.blocking]
        if blocking or (conflicts and body.get("confirm") is not True):
            what = "cannot be saved" if blocking else 'need confirming: send "confirm": true to save anyway'
            raise api_error(
                422,
                "price_conflicts",
                f"{len(conflicts)} conflicts {what}: " + "; ".join(c.message for c in conflicts[:5]),
                {"X-Weir-Conflicts": str(len(conflicts))},
            )
        note = str(body.get("note") or "")
        try:
            return _saved(await d.save(base, body.get("models"), "api", note))
        except ConfigError as exc:
            raise api_error(400, "invalid_prices", str(exc)) from None

    async def preview(self, request: web.Request) -> web.Response:
        """`POST /api/admin/prices/preview`."""
        require_admin_api(request)
        body = await _json(request)
        return web.json_response(self.desk().preview(body.get("models")))

    async def versions(self, request: web.Request) -> web.Response:
        """`GET /api/admin/prices/versions`."""
        require_admin_api(request)
        limit = request.query.get("limit", "100")
        found = await self.desk().store().list_price_versions(int(limit) if limit.isdigit() else 100)
        head = found[0].number if found else 0
        return web.json_response(
            {"head": head, "versions": [PriceDesk.version_dict(v, with_models=False) for v in found]}
        )

    async def one_version(self, request: web.Request) -> web.Response:
        """`GET /api/admin/prices/versions/{n}`."""
        require_admin_api(request)
        number = request.match_info["number"]
        found = await self.desk().store().get_price_version(int(number)) if number.isdigit() else None
        if found is None:
            raise api_error(404, "not_found", f"there is no price version {number}")
        return web.json_response(PriceDesk.version_dict(found, with_models=True))

    async def rollback(self, request: web.Request) -> web.Response:
        """`POST /api/admin/prices/rollback`."""
        require_admin_api(request)
        body = await _json(request)
        number, base = _int(body, "version"), _int(body, "base_version")
        d = self.desk()
        target = await d.store().get_price_version(number)
        if target is None:
            raise api_error(404, "not_found", f"there is no price version {number}")
        return _saved(await d.save(base, doc.loads(target.document), "rollback", f"rollback to version {number}"))

    async def import_ratios(self, request: web.Request) -> web.Response:
        """`POST /api/admin/prices/import-ratios`: a proposal, not saved."""
        require_admin_api(request)
        body = await _json(request)
        d = self.desk()
        try:
            result = convert_ratios(body.get("export", body), d.book.config.quota_per_usd)
        except ValueError as exc:
            raise api_error(400, "invalid_export", str(exc)) from None
        proposal = d.merged(result.config["pricing"]["models"])
        return web.json_response({**d.preview(proposal), "models": proposal, "warnings": list(result.warnings)})


def pricing_api_routes(desk: Callable[[], PriceDesk], pricing_page: bool) -> list[web.RouteDef]:
    """The routes above, on the plugin's `PriceDesk` (bound at startup)."""
    api = _PricingAPI(desk, pricing_page)
    return [
        web.get("/api/pricing", api.public),
        web.get("/api/admin/prices", api.get_prices),
        web.put("/api/admin/prices", api.put_prices),
        web.post("/api/admin/prices/preview", api.preview),
        web.get("/api/admin/prices/versions", api.versions),
        web.get("/api/admin/prices/versions/{number}", api.one_version),
        web.post("/api/admin/prices/rollback", api.rollback),
        web.post("/api/admin/prices/import-ratios", api.import_ratios),
    ]
