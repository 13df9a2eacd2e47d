"""`/dashboard`: a user's own page, signed in with one of their API keys.

The session (`weir_user`, see proxy.web) names the key by its public id; every page load
re-reads the key, so revoking or disabling it, or its expiry, ends the session at once. The
page shows only what the API key could read through `/api/me` (the same functions).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from plugins.billing.store.base import ApiKey, StoreUnavailable, User
from plugins.billing.web.api_user import create_own_key, me_json, own_logs, revoke_own_key, user_log_json
from plugins.billing.web.common import BadInput, BillingWeb, find_caller, key_problem, manages_account, parse_int
from plugins.billing.web.consoleutil import binder
from plugins.billing.web.stats import day_bars, spend
from proxy.web import (
    checked_form,
    end_session,
    error_page,
    flash,
    local_path,
    render,
    require_session,
    session_of,
    shell_of,
    start_session,
    take_flash,
)

REALM = "user"
#: A dashboard sign-in lasts a week (the key is re-checked on every page).
SESSION_SECONDS = 7 * 24 * 3600
LOGIN = "/dashboard/login"
#: Why a browser was sent back to the sign-in page (a fixed set: nothing from the URL is shown).
REASONS = {"ended": "Your session ended: the key you signed in with is no longer usable.", "out": "You are signed out."}


def _page(title: str, **context: Any) -> dict[str, Any]:
    return {"title": title, "area": "user", **context}


async def signed_in(request: web.Request, web_: BillingWeb) -> tuple[ApiKey, User]:
    """The dashboard's user, or a redirect to the sign-in page (also when the key stopped
    being usable since the sign-in)."""
    session = require_session(request, REALM, LOGIN, SESSION_SECONDS)
    try:
        key = await web_.store.get_key(session.subject)
        user = await web_.store.get_user(key.user) if key is not None else None
    except StoreUnavailable:
        raise error_page(request, 503, "Try again shortly", "The account store is unavailable.") from None
    if key is None or user is None or key_problem(key, user, shell_of(request.app).client_ip(request)):
        response = web.HTTPSeeOther(f"{LOGIN}?reason=ended")
        end_session(request, response, REALM)
        raise response
    return key, user


async def _dashboard(request: web.Request, web_: BillingWeb, *, problem: str = "", status: int = 200) -> web.Response:
    key, user = await signed_in(request, web_)
    # What the last POST left for this page: a key made (its only display), or a notice.
    done = take_flash(request) or {}
    me = await me_json(web_, key, user)
    summary = await spend(web_.store, user.name, time.time(), None if manages_account(key) else key.id)
    top = max((c for _, c, _ in summary.models), default=0) or 1
    models = [
        {"model": m, "usd": web_.show_usd(c), "requests": n, "share": round(c / top * 100, 1)}
        for m, c, n in summary.models[:8]
    ]
    own = await web_.store.list_keys(user.name) if manages_account(key) else [key]
    context = _page(
        "Dashboard",
        me=me,
        user=user,
        key=key,
        usd=web_.show_usd,
        bars=day_bars(summary.days, web_.show_usd),
        spent=web_.show_usd(summary.total),
        peak=web_.show_usd(max(v for _, v in summary.days)),
        requests=summary.requests,
        truncated=summary.truncated,
        models=models,
        recent=[user_log_json(r, web_) for r in summary.rows[:15]],
        keys=own,
        manages=manages_account(key),
        created=done.get("created"),
        notice=done.get("notice", ""),
        problem=problem,
    )
    return render(request, "billing/dashboard.html", context, status=status)


async def _login_form(request: web.Request) -> web.StreamResponse:
    target = local_path(request.query.get("next"), "/dashboard")
    if session_of(request, REALM, SESSION_SECONDS) is not None and "reason" not in request.query:
        raise web.HTTPSeeOther(target)
    notice = REASONS.get(request.query.get("reason", ""), "")
    return render(request, "billing/login.html", _page("Sign in", next=target, problem="", notice=notice))


async def _login(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    shell = shell_of(request.app)
    address = shell.client_ip(request)
    wait = shell.limiter.retry_after(address)
    if wait:
        raise error_page(
            request,
            429,
            "Too many attempts",
            f"Too many wrong keys from your address. Try again in {int(wait) + 1} seconds.",
            {"Retry-After": str(int(wait) + 1)},
        )
    form = await checked_form(request)
    target = local_path(form.get("next"), "/dashboard")
    try:
        found = await find_caller(web_.store, form.get("key", "").strip())
    except StoreUnavailable:
        raise error_page(request, 503, "Try again shortly", "The account store is unavailable.") from None
    problem = "That is not a valid API key." if found is None else None
    if found is not None:
        refused = key_problem(found[0], found[1], address)
        problem = None if refused is None else f"This key cannot sign in: {refused[2]}."
    if problem is not None:
        shell.limiter.failed(address)
        context = _page("Sign in", next=target, problem=problem, notice="")
        return render(request, "billing/login.html", context, status=401)
    shell.limiter.succeeded(address)
    assert found is not None
    response = web.Response(status=303, headers={"Location": target})
    start_session(request, response, REALM, found[0].id, SESSION_SECONDS)
    return response


async def _logout(request: web.Request) -> web.StreamResponse:
    await checked_form(request)
    response = web.Response(status=303, headers={"Location": f"{LOGIN}?reason=out"})
    end_session(request, response, REALM)
    return response


async def _create_key(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    key, _user = await signed_in(request, web_)
    form = await checked_form(request)
    data = {name: form.get(name, "") for name in ("name", "usd", "models", "expires")}
    try:
        made = await create_own_key(web_, key, {k: v for k, v in data.items() if v})
    except BadInput as exc:
        return await _dashboard(request, web_, problem=exc.message, status=400)
    # POST, redirect, GET: a reload shows the page again instead of making another key. The
    # clear key rides in the flash cookie to the one page that shows it.
    response = web.Response(status=303, headers={"Location": "/dashboard#keys"})
    flash(request, response, created={"key": made["key"], "name": made["name"] or made["id"]})
    return response


async def _revoke_key(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    key, _user = await signed_in(request, web_)
    await checked_form(request)
    try:
        await revoke_own_key(web_, key, request.match_info["key_id"])
    except BadInput as exc:
        return await _dashboard(request, web_, problem=exc.message, status=403)
    except LookupError:
        raise error_page(request, 404, "No such key", "This account has no key with that id.") from None
    response = web.Response(status=303, headers={"Location": "/dashboard#keys"})
    flash(request, response, notice=f"Key {request.match_info['key_id']} revoked: it is refused from now on.")
    return response


async def _requests(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    key, user = await signed_in(request, web_)
    try:
        before = parse_int(request.query.get("before"), "before", 1, 2**62)
    except BadInput:
        before = None
    rows = await own_logs(web_, key, user, None, None, 50, before)
    data = [user_log_json(r, web_) for r in rows]
    context = _page(
        "Requests", rows=data, usd=web_.show_usd, user=user, next_before=data[-1]["id"] if len(data) == 50 else None
    )
    return render(request, "billing/requests.html", context)


def routes(web_: BillingWeb) -> list[web.RouteDef]:
    """The dashboard's pages."""
    bind = binder(web_)
    return [
        web.get("/dashboard", bind(_dashboard)),
        web.get(LOGIN, _login_form),
        web.post(LOGIN, bind(_login)),
        web.post("/dashboard/logout", _logout),
        web.post("/dashboard/keys", bind(_create_key)),
        web.post("/dashboard/keys/{key_id}/revoke", bind(_revoke_key)),
        web.get("/dashboard/requests", bind(_requests)),
    ]
