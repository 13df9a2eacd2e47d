"""The admin API, `/api/admin/...`, with `Authorization: Bearer <admin.token>`
(`proxy.web.require_admin_api`: 404 without a configured token, 401 without or with a wrong
one). Each route reads its input, calls the operation in `admin_ops` (the same function the
console's forms call) and answers its JSON; errors are `{"error": {"code", "message"}}` with
400 (bad input), 404 (unknown), 409 (refused by the state) or 503 (store unreachable).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from plugins.billing.store.base import StoreError, StoreUnavailable
from plugins.billing.web import admin_ops as ops
from plugins.billing.web.common import MAX_LIMIT, BadInput, BillingWeb, json_body, parse_int, unavailable
from plugins.billing.web.console_records import write_csv
from plugins.billing.web.logsearch import query_from
from plugins.billing.web.records import audit_json, holds_json, upstreams_json
from proxy.host import host_of
from proxy.web import api_error, require_admin_api

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


def admin_route(handler: Handler) -> Handler:
    """Check the admin token first; map refusals and store failures to JSON errors."""

    async def route(request: web.Request) -> web.StreamResponse:
        require_admin_api(request)
        try:
            return await handler(request)
        except ops.NotFound as exc:
            raise api_error(404, exc.code, exc.message) from None
        except ops.Conflict as exc:
            raise api_error(409, exc.code, exc.message) from None
        except BadInput as exc:
            raise api_error(400, exc.code, exc.message) from None
        except StoreUnavailable:
            raise unavailable() from None
        except StoreError as exc:
            raise api_error(409, "conflict", str(exc)) from None

    route.__doc__ = handler.__doc__
    return route


def _user_routes(web_: BillingWeb) -> list[web.RouteDef]:
    async def users(request: web.Request) -> web.StreamResponse:
        return _json({"users": await ops.list_users(web_)})

    async def add(request: web.Request) -> web.StreamResponse:
        return _json(await ops.add_user(web_, await json_body(request)), status=201)

    async def show(request: web.Request) -> web.StreamResponse:
        return _json(await ops.show_user(web_, request.match_info["name"]))

    async def edit(request: web.Request) -> web.StreamResponse:
        return _json(await ops.edit_user(web_, request.match_info["name"], await json_body(request)))

    async def topup(request: web.Request) -> web.StreamResponse:
        return _json(await ops.credit(web_, request.match_info["name"], await json_body(request), adjust=False))

    async def adjust(request: web.Request) -> web.StreamResponse:
        return _json(await ops.credit(web_, request.match_info["name"], await json_body(request), adjust=True))

    async def new_key(request: web.Request) -> web.StreamResponse:
        return _json(await ops.create_key(web_, request.match_info["name"], await json_body(request)), status=201)

    async def ledger(request: web.Request) -> web.StreamResponse:
        return _json(await ops.ledger(web_, request.match_info["name"], dict(request.query)))

    async def new_sub(request: web.Request) -> web.StreamResponse:
        return _json(await ops.grant(web_, request.match_info["name"], await json_body(request)), status=201)

    base = "/api/admin/users"
    return [
        web.get(base, admin_route(users)),
        web.post(base, admin_route(add)),
        web.get(base + "/{name}", admin_route(show)),
        web.patch(base + "/{name}", admin_route(edit)),
        web.post(base + "/{name}/topup", admin_route(topup)),
        web.post(base + "/{name}/adjust", admin_route(adjust)),
        web.post(base + "/{name}/keys", admin_route(new_key)),
        web.get(base + "/{name}/ledger", admin_route(ledger)),
        web.post(base + "/{name}/subscriptions", admin_route(new_sub)),
    ]


def _key_routes(web_: BillingWeb) -> list[web.RouteDef]:
    async def keys(request: web.Request) -> web.StreamResponse:
        return _json({"keys": await ops.list_keys(web_, request.query.get("user") or None)})

    async def show(request: web.Request) -> web.StreamResponse:
        return _json(await ops.show_key(web_, request.match_info["key_id"]))

    async def edit(request: web.Request) -> web.StreamResponse:
        return _json(await ops.edit_key(web_, request.match_info["key_id"], await json_body(request)))

    async def revoke(request: web.Request) -> web.StreamResponse:
        return _json(await ops.set_key_status(web_, request.match_info["key_id"], "revoked"))

    async def plans(request: web.Request) -> web.StreamResponse:
        return _json({"plans": await ops.list_plans(web_)})

    async def add_plan(request: web.Request) -> web.StreamResponse:
        return _json(await ops.add_plan(web_, await json_body(request)), status=201)

    async def drop_plan(request: web.Request) -> web.StreamResponse:
        return _json(await ops.delete_plan(web_, request.match_info["plan"]))

    async def cancel(request: web.Request) -> web.StreamResponse:
        return _json(await ops.cancel_subscription(web_, request.match_info["sub_id"]))

    async def subs(request: web.Request) -> web.StreamResponse:
        return _json({"subscriptions": await ops.list_subscriptions(web_, request.query.get("user") or None)})

    return [
        web.get("/api/admin/keys", admin_route(keys)),
        web.get("/api/admin/keys/{key_id}", admin_route(show)),
        web.patch("/api/admin/keys/{key_id}", admin_route(edit)),
        web.delete("/api/admin/keys/{key_id}", admin_route(revoke)),
        web.get("/api/admin/plans", admin_route(plans)),
        web.post("/api/admin/plans", admin_route(add_plan)),
        web.delete("/api/admin/plans/{plan}", admin_route(drop_plan)),
        web.get("/api/admin/subscriptions", admin_route(subs)),
        web.delete("/api/admin/subscriptions/{sub_id}", admin_route(cancel)),
    ]


def _record_routes(web_: BillingWeb) -> list[web.RouteDef]:
    async def logs(request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        fmt = params.pop("format", "json")
        query = query_from(params)
        if fmt == "csv":
            return await write_csv(request, web_, query)
        if fmt != "json":
            raise BadInput("invalid_format", f"format: {fmt!r} is not json or csv")
        limit = parse_int(params.get("limit"), "limit", 1, MAX_LIMIT, 50) or 50
        before = parse_int(params.get("before"), "before", 1, 2**62)
        return _json(await ops.logs(web_, query, limit, before, totals=params.get("totals") != "false"))

    async def audit(request: web.Request) -> web.StreamResponse:
        return _json(await audit_json(host_of(request.app), web_))

    async def upstreams(request: web.Request) -> web.StreamResponse:
        return _json(await upstreams_json(host_of(request.app), web_))

    async def holds(request: web.Request) -> web.StreamResponse:
        return _json(await holds_json(host_of(request.app), web_))

    return [
        web.get("/api/admin/logs", admin_route(logs)),
        web.get("/api/admin/audit", admin_route(audit)),
        web.get("/api/admin/upstreams", admin_route(upstreams)),
        web.get("/api/admin/holds", admin_route(holds)),
    ]


def routes(web_: BillingWeb) -> list[web.RouteDef]:
    """Every admin API route."""
    return [*_user_routes(web_), *_key_routes(web_), *_record_routes(web_)]
