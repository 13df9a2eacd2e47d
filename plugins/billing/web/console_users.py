"""Console pages for users: the list (with search and the add form), one user's page (totals,
keys, subscriptions, edit), and money movements, which always go through a confirmation page
that shows the balance before and after, then land on the user's page with the resulting
balance (POST, redirect, GET: a reload never moves money twice).
"""

from __future__ import annotations

from aiohttp import web

from plugins.billing.web import admin_ops as ops
from plugins.billing.web.common import BadInput, BillingWeb
from plugins.billing.web.consoleutil import back_to, binder, form_dict, page
from proxy.web import checked_form, error_page, render, require_admin, take_flash


async def users_page(
    request: web.Request,
    web_: BillingWeb,
    *,
    problem: str = "",
    status: int = 200,
    entered: dict[str, str] | None = None,
) -> web.StreamResponse:
    """`/admin/users`: every user (search by name or group), and the form to add one."""
    require_admin(request)
    users = await ops.list_users(web_)
    q = request.query.get("q", "").strip().lower()
    shown = [u for u in users if q in u["name"].lower() or q in u["group"].lower()] if q else users
    done = take_flash(request) or {}
    return render(
        request,
        "billing/admin_users.html",
        page(
            "Users",
            web_,
            users=shown,
            total=len(users),
            q=q,
            problem=problem,
            entered=entered or {},
            notice=done.get("notice", ""),
            preferences=ops.PREFERENCES,
        ),
        status=status,
    )


async def add_user(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """The add-user form: the user's page next, or the list with what was wrong."""
    require_admin(request)
    data = form_dict(await checked_form(request), ("name", "group", "usd", "preference"))
    try:
        user = await ops.add_user(web_, data)
    except BadInput as exc:
        return await users_page(request, web_, problem=exc.message, status=400, entered=data)
    return back_to(
        request,
        user_path(user["name"]),
        notice=f"User {user['name']} created with {web_.show_usd(user['balance_quota'])}.",
    )


def user_path(name: str) -> str:
    """The console page of user `name`."""
    from urllib.parse import quote

    return "/admin/users/" + quote(name, safe="")


async def user_page(
    request: web.Request, web_: BillingWeb, name: str | None = None, *, problem: str = "", status: int = 200
) -> web.StreamResponse:
    """`/admin/users/{name}`: totals, keys, subscriptions, and the forms that act on them."""
    require_admin(request)
    name = name or request.match_info["name"]
    try:
        user = await ops.show_user(web_, name)
    except ops.NotFound:
        raise error_page(request, 404, "No such user", "There is no user by that name.") from None
    keys = await ops.list_keys(web_, name)
    plans = await ops.list_plans(web_)
    ledger = await ops.ledger(web_, name, {"limit": "10"})
    done = take_flash(request) or {}
    return render(
        request,
        "billing/admin_user.html",
        page(
            user["name"],
            web_,
            user=user,
            keys=keys,
            plans=plans,
            ledger=ledger,
            problem=problem,
            notice=done.get("notice", ""),
            created=done.get("created"),
            preferences=ops.PREFERENCES,
            back=user_path(name),
        ),
        status=status,
    )


async def edit_user(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """Group, preference, or disabled (all the user's keys)."""
    require_admin(request)
    name = request.match_info["name"]
    data = form_dict(await checked_form(request), ("group", "preference", "disabled"))
    try:
        user = await ops.edit_user(web_, name, data)
    except BadInput as exc:
        return await user_page(request, web_, name, problem=exc.message, status=400)
    state = " Disabled: every key of theirs is refused (their money stays as it is)." if user["disabled"] else ""
    return back_to(request, user_path(name), notice=f"Saved.{state}")


async def review_credit(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """Step 1 of a top-up or a deduction (an adjustment, with a note): check the input, then
    show the confirmation page with the balance before and after. Nothing moves yet."""
    require_admin(request)
    name = request.match_info["name"]
    data = form_dict(await checked_form(request), ("usd", "note", "kind"))
    adjust = data.pop("kind", "topup") == "adjust"
    try:
        user = await ops.show_user(web_, name)
        quota = ops.amount(web_, data)
        if quota is None or quota <= 0:
            raise BadInput("invalid_amount", "give a positive amount in USD: the button says which way it moves")
        ops.note_of(data, required=adjust)
        quota = -quota if adjust else quota  # a deduction is a negative credit
    except ops.NotFound:
        raise error_page(request, 404, "No such user", "There is no user by that name.") from None
    except BadInput as exc:
        return await user_page(request, web_, name, problem=exc.message, status=400)
    context = page(
        "Confirm",
        web_,
        user=user,
        quota=quota,
        adjust=adjust,
        data=data,
        after=user["balance_quota"] + quota,
        token=web_.once.new(),
        back=user_path(name),
    )
    return render(request, "billing/admin_confirm.html", context)


async def confirm_credit(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """Step 2: the confirmed movement (once per confirmation page), then the user's page with
    the resulting balance."""
    require_admin(request)
    name = request.match_info["name"]
    form = await checked_form(request)
    data = form_dict(form, ("quota", "note"))  # the exact units the confirmation page showed
    if not web_.once.use(form.get("token", "")):
        return back_to(
            request,
            user_path(name),
            notice="That confirmation was already used (or is too old): "
            "nothing more was moved. Check the balance below.",
        )
    try:
        user = await ops.credit(web_, name, data, adjust=form.get("kind") == "adjust")
    except ops.NotFound:
        raise error_page(request, 404, "No such user", "There is no user by that name.") from None
    except BadInput as exc:
        return await user_page(request, web_, name, problem=exc.message, status=400)
    moved = web_.show_usd(user["credited_quota"])
    verb = f"Added {moved}" if user["credited_quota"] > 0 else f"Took {moved.lstrip('-')}"
    return back_to(
        request,
        user_path(name),
        notice=f"{verb} ({user['note']}). The balance is now {web_.show_usd(user['balance_quota'])}.",
    )


async def grant(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """Give the user a subscription to a plan."""
    require_admin(request)
    name = request.match_info["name"]
    data = form_dict(await checked_form(request), ("plan", "start", "end"))
    try:
        sub = await ops.grant(web_, name, data)
    except BadInput as exc:
        return await user_page(request, web_, name, problem=exc.message, status=400)
    return back_to(request, user_path(name), notice=f"Subscribed to {sub['plan']} until {sub['end']}.")


def routes(web_: BillingWeb) -> list[web.RouteDef]:
    """The user pages of the console."""

    bind = binder(web_)

    base = "/admin/users"
    return [
        web.get(base, bind(users_page)),
        web.post(base, bind(add_user)),
        web.get(base + "/{name}", bind(user_page)),
        web.post(base + "/{name}/edit", bind(edit_user)),
        web.post(base + "/{name}/credit/review", bind(review_credit)),
        web.post(base + "/{name}/credit", bind(confirm_credit)),
        web.post(base + "/{name}/subscriptions", bind(grant)),
    ]
