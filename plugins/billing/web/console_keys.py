"""Console pages for keys and plans: every key (with status actions), a key made for a user
(shown once, on the page right after), plans and every subscription."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from plugins.billing.web import admin_ops as ops
from plugins.billing.web.common import BadInput, BillingWeb
from plugins.billing.web.console_users import user_page, user_path
from plugins.billing.web.consoleutil import back_to, binder, form_dict, page
from proxy.web import checked_form, error_page, local_path, render, require_admin, take_flash

#: What each status button says it does, for the notice after it.
DONE = {"active": "enabled", "disabled": "disabled: it is refused until enabled again", "revoked": "revoked for good"}


async def keys_page(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """`/admin/keys`: every user's keys, filtered by user or status."""
    require_admin(request)
    keys = await ops.list_keys(web_, None)
    user, status = request.query.get("user", "").strip(), request.query.get("status", "").strip()
    shown = [k for k in keys if (not user or k["user"] == user) and (not status or k["status"] == status)]
    done = take_flash(request) or {}
    return render(
        request,
        "billing/admin_keys.html",
        page(
            "Keys",
            web_,
            keys=shown,
            total=len(keys),
            user=user,
            status=status,
            notice=done.get("notice", ""),
            back="/admin/keys",
        ),
    )


async def create_key(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """A key for the user; the user's page next shows it once."""
    require_admin(request)
    name = request.match_info["name"]
    data = form_dict(await checked_form(request), ("name", "usd", "models", "ips", "group", "expires"))
    try:
        made = await ops.create_key(web_, name, data)
    except ops.NotFound:
        raise error_page(request, 404, "No such user", "There is no user by that name.") from None
    except BadInput as exc:
        return await user_page(request, web_, name, problem=exc.message, status=400)
    return back_to(
        request, user_path(name), created={"key": made["key"], "name": made["name"] or made["id"], "user": name}
    )


async def set_status(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """Enable, disable or revoke a key, then back to the page the button was on."""
    require_admin(request)
    form = await checked_form(request)
    back = local_path(form.get("back"), "/admin/keys")
    key_id = request.match_info["key_id"]
    try:
        key = await ops.set_key_status(web_, key_id, form.get("status", ""))
    except BadInput as exc:
        return back_to(request, back, notice=f"Not done: {exc.message}.")
    return back_to(request, back, notice=f"Key {key['name'] or key['id']} ({key['user']}) {DONE[key['status']]}.")


async def key_page(
    request: web.Request, web_: BillingWeb, *, problem: str = "", status: int = 200
) -> web.StreamResponse:
    """`/admin/keys/{id}`: one key, and the form that edits it."""
    require_admin(request)
    try:
        key = await ops.show_key(web_, request.match_info["key_id"])
    except ops.NotFound:
        raise error_page(request, 404, "No such key", "There is no key with that id.") from None
    done = take_flash(request) or {}
    return render(
        request,
        "billing/admin_key.html",
        page(
            key["name"] or key["id"],
            web_,
            key=key,
            problem=problem,
            notice=done.get("notice", ""),
            back=f"/admin/keys/{key['id']}",
        ),
        status=status,
    )


async def edit_key(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """Save the key form: what changed is sent (an emptied limit means no limit, an emptied
    expiry means never)."""
    require_admin(request)
    key_id = request.match_info["key_id"]
    form = await checked_form(request)
    data: dict[str, Any] = {name: form.get(name, "").strip() for name in ("name", "models", "ips", "group")}
    limit, expires = form.get("usd", "").strip(), form.get("expires", "").strip()
    data.update({"usd": limit} if limit else {"unlimited": True})
    data["expires"] = expires or None
    try:
        await ops.edit_key(web_, key_id, data)
    except ops.NotFound:
        raise error_page(request, 404, "No such key", "There is no key with that id.") from None
    except BadInput as exc:
        return await key_page(request, web_, problem=exc.message, status=400)
    return back_to(request, f"/admin/keys/{key_id}", notice="Saved.")


async def plans_page(
    request: web.Request,
    web_: BillingWeb,
    *,
    problem: str = "",
    status: int = 200,
    entered: dict[str, str] | None = None,
) -> web.StreamResponse:
    """`/admin/plans`: plans, the form to add one, and every subscription."""
    require_admin(request)
    done = take_flash(request) or {}
    return render(
        request,
        "billing/admin_plans.html",
        page(
            "Plans",
            web_,
            plans=await ops.list_plans(web_),
            subscriptions=await ops.list_subscriptions(web_, None),
            periods=ops.PERIODS,
            problem=problem,
            entered=entered or {},
            notice=done.get("notice", ""),
        ),
        status=status,
    )


async def add_plan(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """Create (or replace) a plan."""
    require_admin(request)
    data = form_dict(await checked_form(request), ("name", "usd", "period", "days", "models"))
    try:
        plan = await ops.add_plan(web_, data)
    except BadInput as exc:
        return await plans_page(request, web_, problem=exc.message, status=400, entered=data)
    verb = "replaced" if plan["replaced"] else "created"
    return back_to(
        request,
        "/admin/plans",
        notice=f"Plan {plan['name']} {verb}: {web_.show_usd(plan['quota'])} per {plan['period']}.",
    )


async def delete_plan(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """Delete a plan (refused while a subscription to it runs)."""
    require_admin(request)
    await checked_form(request)
    name = request.match_info["plan"]
    try:
        await ops.delete_plan(web_, name)
    except BadInput as exc:
        return back_to(request, "/admin/plans", notice=f"Not done: {exc.message}.")
    return back_to(request, "/admin/plans", notice=f"Plan {name} deleted.")


async def cancel_subscription(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """End a subscription now."""
    require_admin(request)
    await checked_form(request)
    try:
        sub = await ops.cancel_subscription(web_, request.match_info["sub_id"])
    except BadInput as exc:
        return back_to(request, "/admin/plans", notice=f"Not done: {exc.message}.")
    return back_to(request, "/admin/plans", notice=f"{sub['user']}'s subscription to {sub['plan']} ended.")


def routes(web_: BillingWeb) -> list[web.RouteDef]:
    """The key and plan pages of the console."""

    bind = binder(web_)

    return [
        web.get("/admin/keys", bind(keys_page)),
        web.post("/admin/users/{name}/keys", bind(create_key)),
        web.post("/admin/keys/{key_id}/status", bind(set_status)),
        web.get("/admin/keys/{key_id}", bind(key_page)),
        web.post("/admin/keys/{key_id}/edit", bind(edit_key)),
        web.get("/admin/plans", bind(plans_page)),
        web.post("/admin/plans", bind(add_plan)),
        web.post("/admin/plans/{plan}/delete", bind(delete_plan)),
        web.post("/admin/subscriptions/{sub_id}/cancel", bind(cancel_subscription)),
    ]
