"""The user API: `/api/me`, `/api/me/logs` and `/api/me/keys`, with the user's own API key
as `Authorization: Bearer`. A caller only ever reaches its own user (BOLA): the user comes from
the key, never from the URL, and a key id of another user is answered as unknown (404).

A key with limits of its own (quota, models, IPs) sees only its own requests and cannot manage
keys (`common.manages_account`). The shapes are the CLI's `--json` shapes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from plugins.billing.accounts import Accounts
from plugins.billing.accounts import keys as account_keys
from plugins.billing.accounts.shapes import key_json, log_json, subscription_json, user_json
from plugins.billing.store.base import ApiKey, LogRow, StoreError, StoreUnavailable, User
from plugins.billing.web.admin_ops import refusals
from plugins.billing.web.common import (
    MAX_LIMIT,
    BadInput,
    BillingWeb,
    caller_of,
    check_name,
    json_body,
    manages_account,
    parse_int,
    parse_list,
    parse_time,
    unavailable,
)
from proxy.web import api_error

#: Operator-side details a user's log rows leave out (which upstream served them, and how).
PRIVATE_LOG_FIELDS = ("upstream", "upstream_model")


def user_log_json(row: LogRow, web_: BillingWeb) -> dict[str, Any]:
    """A consume-log row as its user sees it."""
    data = log_json(row, web_.money)
    for name in PRIVATE_LOG_FIELDS:
        data.pop(name, None)
    return data


async def me_json(web_: BillingWeb, key: ApiKey, user: User) -> dict[str, Any]:
    """`GET /api/me`: the user's totals, subscriptions and the calling key."""
    at = time.time()
    subs = await web_.store.list_subscriptions(user.name)
    return {
        "user": user_json(user, web_.money),
        "key": key_json(key, web_.money, time.time()),
        "subscriptions": [subscription_json(s, web_.money, at) for s in subs],
        "manages_account": manages_account(key),
    }


async def own_logs(
    web_: BillingWeb, key: ApiKey, user: User, since: float | None, until: float | None, limit: int, before: int | None
) -> list[LogRow]:
    """The user's log rows, newest first (only the key's own when it is a limited key)."""
    own = None if manages_account(key) else key.id
    return await web_.store.query_logs(user.name, since, until, limit, before, key_id=own)


def _require_manager(key: ApiKey) -> None:
    if not manages_account(key):
        raise BadInput(
            "key_not_allowed",
            "this key has limits of its own (quota, models or IPs): "
            "manage keys with an unrestricted key of the account",
        )


def key_options(web_: BillingWeb, data: dict[str, Any]) -> dict[str, Any]:
    """Validated options for a key a user makes for themselves: name, a quota (`quota` units
    or `usd`) or `unlimited`, `models`, `expires`. Not a price group or an IP list: those are
    the operator's."""
    unknown = set(data) - {"name", "quota", "usd", "unlimited", "models", "expires"}
    if unknown:
        raise BadInput("unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}")
    name = data.get("name") or ""
    if name:
        check_name(name, "key")
    if data.get("quota") not in (None, "") and data.get("usd") not in (None, ""):
        raise BadInput("invalid_amount", "give quota or usd, not both")
    quota = parse_int(data.get("quota"), "quota", 0, 10**15)
    if data.get("usd") not in (None, ""):
        quota = web_.quota_of_usd(data["usd"], "usd")
    if data.get("unlimited") is True:
        if quota is not None:
            raise BadInput("invalid_amount", "an unlimited key takes no quota")
    if quota is not None and quota < 0:
        raise BadInput("invalid_amount", "a key quota cannot be negative")
    expires = parse_time(data.get("expires"), "expires")
    if expires is not None and expires <= time.time():
        raise BadInput("invalid_time", "expires: that time is in the past")
    return {"name": name, "quota": quota, "models": parse_list(data.get("models"), "models"), "expires_at": expires}


async def create_own_key(web_: BillingWeb, key: ApiKey, data: dict[str, Any]) -> dict[str, Any]:
    """Make a key for the caller's own user with `weir key create`'s function (acting as the
    user); the answer's "key" is the clear key, returned this once and never stored."""
    _require_manager(key)
    options = key_options(web_, data)
    with refusals():
        return await account_keys.create_key(Accounts(web_.store, web_.money, f"user {key.user}"), key.user, **options)


async def revoke_own_key(web_: BillingWeb, key: ApiKey, key_id: str) -> dict[str, Any]:
    """Revoke one of the caller's user's keys; another user's key id is unknown (404)."""
    _require_manager(key)
    target = await web_.store.get_key(key_id)
    if target is None or target.user != key.user:
        raise LookupError(key_id)
    with refusals():
        return await account_keys.set_key_status(
            Accounts(web_.store, web_.money, f"user {key.user}"), key_id, "revoked"
        )


def routes(web_: BillingWeb) -> list[web.RouteDef]:
    """The user API's routes."""

    async def me(request: web.Request) -> web.Response:
        key, user = await caller_of(request, web_)
        return _json(await me_json(web_, key, user))

    async def logs(request: web.Request) -> web.Response:
        key, user = await caller_of(request, web_)
        q = request.query
        try:
            limit = parse_int(q.get("limit"), "limit", 1, MAX_LIMIT, 50) or 50
            rows = await own_logs(
                web_,
                key,
                user,
                parse_time(q.get("since"), "since"),
                parse_time(q.get("until"), "until"),
                limit,
                parse_int(q.get("before"), "before", 1, 2**62),
            )
        except BadInput as exc:
            raise api_error(400, exc.code, exc.message) from None
        data = [user_log_json(r, web_) for r in rows]
        return _json({"logs": data, "next_before": data[-1]["id"] if len(data) == limit else None})

    async def keys(request: web.Request) -> web.Response:
        key, _user = await caller_of(request, web_)
        own = await web_.store.list_keys(key.user) if manages_account(key) else [key]
        return _json({"keys": [key_json(k, web_.money, time.time()) for k in own]})

    async def create(request: web.Request) -> web.Response:
        key, _user = await caller_of(request, web_)
        data = await json_body(request)
        try:
            made = await create_own_key(web_, key, data)
        except BadInput as exc:
            raise api_error(403 if exc.code == "key_not_allowed" else 400, exc.code, exc.message) from None
        return _json(made, status=201)

    async def revoke(request: web.Request) -> web.Response:
        key, _user = await caller_of(request, web_)
        try:
            done = await revoke_own_key(web_, key, request.match_info["key_id"])
        except BadInput as exc:
            raise api_error(403, exc.code, exc.message) from None
        except LookupError:
            raise api_error(404, "unknown_key", "no such key for this account") from None
        return _json(done)

    return [
        web.get("/api/me", _guard(me)),
        web.get("/api/me/logs", _guard(logs)),
        web.get("/api/me/keys", _guard(keys)),
        web.post("/api/me/keys", _guard(create)),
        web.delete("/api/me/keys/{key_id}", _guard(revoke)),
    ]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guard(handler: Handler) -> Handler:
    """Store failures as JSON errors: unavailable is a 503, a refused write a 409."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreUnavailable:
            raise unavailable() from None
        except StoreError as exc:
            raise api_error(409, "conflict", str(exc)) from None

    guarded.__doc__ = handler.__doc__
    return guarded
