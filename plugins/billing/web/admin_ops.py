"""The admin's account operations with HTTP inputs: a JSON body or a console form (a dict of
strings) in, the CLI's `--json` shapes out. The admin API and the console call these same
functions, so the two can never disagree; each refusal is a `BadInput` (400), `NotFound`
(404) or `Conflict` (409) whose message names the field.
"""

from __future__ import annotations

import time
from typing import Any

from plugins.billing.apikeys import generate_key
from plugins.billing.accounts.shapes import key_json, subscription_json, user_json
from plugins.billing.store.base import Plan, Preference, StoreError, StoreUnavailable, User
from plugins.billing.web.common import BadInput, BillingWeb, check_name, parse_cidrs, parse_int, parse_list, parse_time

PREFERENCES = tuple(p.value for p in Preference)
PERIODS = ("day", "week", "month", "none")
KEY_STATUSES = ("active", "disabled", "revoked")
MAX_NOTE = 500
DAY = 86400.0


class NotFound(BadInput):
    """An unknown user, key or plan (404)."""


class Conflict(BadInput):
    """Input that is fine but that the state refuses (409): a name taken, a revoked key."""


def _fields(data: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise BadInput("unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}; expected "
                                        f"{', '.join(sorted(allowed))}")


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadInput("invalid_field", f"{name}: expected a string, got {value!r}")
    return value.strip() or None


def amount(web_: BillingWeb, data: dict[str, Any]) -> int | None:
    """An amount given as `usd` (a decimal string or number) or `quota` (integer units)."""
    usd, quota = data.get("usd"), data.get("quota")
    if usd not in (None, "") and quota not in (None, ""):
        raise BadInput("invalid_amount", "give usd or quota, not both")
    if usd not in (None, ""):
        return web_.quota_of_usd(usd, "usd")
    return parse_int(quota, "quota", -(10**15), 10**15)


def note_of(data: dict[str, Any], required: bool) -> str | None:
    """A ledger note: one line of at most 500 characters (required for an adjustment)."""
    note = _text(data, "note")
    if note is None:
        if required:
            raise BadInput("note_required", "note: say why (an adjustment is kept in the ledger with its note)")
        return None
    if len(note) > MAX_NOTE or any(ord(c) < 32 for c in note):
        raise BadInput("invalid_note", f"note: one line of at most {MAX_NOTE} characters")
    return note


def preference_of(value: object) -> Preference:
    """A billing preference by name."""
    try:
        return Preference(str(value))
    except ValueError:
        raise BadInput("invalid_preference", f"preference: {value!r} is not one of {', '.join(PREFERENCES)}") from None


def flag(value: object, name: str) -> bool:
    """A boolean from JSON, or from a form ("true"/"false", "on", "1"/"0")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "on", "1", "yes", "false", "off", "0", "no"):
        return value.lower() in ("true", "on", "1", "yes")
    raise BadInput("invalid_field", f"{name}: expected true or false, got {value!r}")


async def user_of(web_: BillingWeb, name: str) -> User:
    """The user `name`, or NotFound."""
    user = await web_.store.get_user(name)
    if user is None:
        raise NotFound("unknown_user", f"unknown user {name!r}")
    return user


async def _user_json(web_: BillingWeb, user: User) -> dict[str, Any]:
    keys = await web_.store.list_keys(user.name)
    data = user_json(user, web_.money)
    data["keys"] = len(keys)
    # A user is disabled when none of their keys may be used and at least one is only
    # disabled (not revoked): `PATCH disabled` switches every such key.
    data["disabled"] = bool(keys) and all(k.status != "active" for k in keys) and any(
        k.status == "disabled" for k in keys)
    return data


async def list_users(web_: BillingWeb) -> list[dict[str, Any]]:
    """Every user, by name."""
    return [await _user_json(web_, u) for u in await web_.store.list_users()]


async def show_user(web_: BillingWeb, name: str) -> dict[str, Any]:
    """A user's totals, key count, `disabled` and subscriptions."""
    user = await user_of(web_, name)
    data = await _user_json(web_, user)
    at = time.time()
    data["subscriptions"] = [{**subscription_json(s, web_.money, at), "user": s.user}
                             for s in await web_.store.list_subscriptions(name)]
    return data


async def add_user(web_: BillingWeb, data: dict[str, Any]) -> dict[str, Any]:
    """`POST /api/admin/users`: {"name", "group"?, "usd"? | "quota"?, "preference"?}."""
    _fields(data, {"name", "group", "usd", "quota", "preference"})
    name = check_name(data.get("name"), "user")
    group = check_name(_text(data, "group") or "default", "group")
    pref = preference_of(_text(data, "preference") or Preference.SUBSCRIPTION_FIRST.value)
    quota = amount(web_, data)
    if quota is not None and quota < 0:
        raise BadInput("invalid_amount", "the starting balance cannot be negative")
    if await web_.store.get_user(name) is not None:
        raise Conflict("user_exists", f"user {name!r} already exists")
    try:
        user = await web_.store.create_user(name, group, pref)
        if quota:
            user = await web_.store.credit(name, quota, "initial balance")
    except StoreUnavailable:
        raise
    except StoreError as exc:
        raise Conflict("conflict", str(exc)) from None
    return await _user_json(web_, user)


async def edit_user(web_: BillingWeb, name: str, data: dict[str, Any]) -> dict[str, Any]:
    """`PATCH /api/admin/users/{name}`: {"group"?, "preference"?, "disabled"?}."""
    _fields(data, {"group", "preference", "disabled"})
    await user_of(web_, name)
    group = _text(data, "group")
    pref = _text(data, "preference")
    if group is not None or pref is not None:
        await web_.store.set_user(name, group=None if group is None else check_name(group, "group"),
                                  preference=None if pref is None else preference_of(pref))
    if data.get("disabled") not in (None, ""):
        to, frm = ("disabled", "active") if flag(data["disabled"], "disabled") else ("active", "disabled")
        for key in await web_.store.list_keys(name):
            if key.status == frm:
                await web_.store.set_key_status(key.id, to)
    return await show_user(web_, name)


async def credit(web_: BillingWeb, name: str, data: dict[str, Any], *, adjust: bool) -> dict[str, Any]:
    """`topup` ({"usd" | "quota", "note"?}: a positive amount) or `adjust` ({"usd" | "quota",
    "note"}: a negative amount, which takes money away and must say why): a `credit` entry in
    the ledger. The answer is the user after it, with `credited_quota` / `credited_usd` and
    the `note`."""
    _fields(data, {"usd", "quota", "note"})
    quota = amount(web_, data)
    if quota is None or quota == 0:
        raise BadInput("invalid_amount", "give a non-zero amount in usd or quota")
    if not adjust and quota < 0:
        raise BadInput("invalid_amount", "a top-up adds money; take money away with an adjustment and a note")
    if adjust and quota > 0:
        raise BadInput("invalid_amount", "an adjustment takes money away: give a negative amount (to add, top up)")
    note = note_of(data, required=adjust) or "top-up"
    await user_of(web_, name)
    user = await web_.store.credit(name, quota, note)
    result = await _user_json(web_, user)
    result.update(credited_quota=quota, credited_usd=web_.usd(quota), note=note)
    return result


def key_options(web_: BillingWeb, data: dict[str, Any]) -> dict[str, Any]:
    """An admin's key options: name, a quota (`usd`/`quota`) or `unlimited`, `models`, `ips`,
    `group`, `expires`."""
    _fields(data, {"name", "usd", "quota", "unlimited", "models", "ips", "group", "expires"})
    quota = amount(web_, data)
    if data.get("unlimited") not in (None, "") and flag(data["unlimited"], "unlimited") and quota is not None:
        raise BadInput("invalid_amount", "an unlimited key takes no quota")
    if quota is not None and quota < 0:
        raise BadInput("invalid_amount", "a key quota cannot be negative")
    name = _text(data, "name") or ""
    group = _text(data, "group")
    expires = parse_time(data.get("expires"), "expires")
    if expires is not None and expires <= time.time():
        raise BadInput("invalid_time", "expires: that time is in the past")
    return {"name": check_name(name, "key") if name else "", "quota": quota,
            "models": parse_list(data.get("models"), "models"), "ips": parse_cidrs(data.get("ips")),
            "group": None if group is None else check_name(group, "group"), "expires_at": expires}


async def create_key(web_: BillingWeb, user: str, data: dict[str, Any]) -> dict[str, Any]:
    """A key for `user`; the clear key is in the answer's "key", the only time it is shown."""
    options = key_options(web_, data)
    await user_of(web_, user)
    clear, digest, hint = generate_key()
    key = await web_.store.create_key(user, digest, hint=hint, **options)
    made = key_json(key, web_.money, time.time())
    return {"id": key.id, "key": clear, **made}


async def list_keys(web_: BillingWeb, user: str | None) -> list[dict[str, Any]]:
    """A user's keys (every user's without one), oldest first per user."""
    if user is not None:
        await user_of(web_, user)
    names = [user] if user is not None else [u.name for u in await web_.store.list_users()]
    return [key_json(k, web_.money, time.time()) for name in names for k in await web_.store.list_keys(name)]


async def show_key(web_: BillingWeb, key_id: str) -> dict[str, Any]:
    """One key (never the key itself)."""
    key = await web_.store.get_key(key_id)
    if key is None:
        raise NotFound("unknown_key", f"unknown key {key_id!r}")
    return key_json(key, web_.money, time.time())


async def set_key_status(web_: BillingWeb, key_id: str, status: object) -> dict[str, Any]:
    """Set a key "active", "disabled" or "revoked" (revoked is final)."""
    if status not in KEY_STATUSES:
        raise BadInput("invalid_status", f"status: {status!r} is not one of {', '.join(KEY_STATUSES)}")
    key = await web_.store.get_key(key_id)
    if key is None:
        raise NotFound("unknown_key", f"unknown key {key_id!r}")
    if key.status == "revoked" and status != "revoked":
        raise Conflict("key_revoked", f"key {key_id} is revoked; make a new one")
    return key_json(await web_.store.set_key_status(key_id, str(status)), web_.money, time.time())


async def add_plan(web_: BillingWeb, data: dict[str, Any]) -> dict[str, Any]:
    """{"name", "usd" | "quota" (per period), "period", "days"?, "models"?}: create or replace."""
    _fields(data, {"name", "usd", "quota", "period", "days", "models"})
    name = check_name(data.get("name"), "plan")
    quota = amount(web_, data)
    if quota is None or quota <= 0:
        raise BadInput("invalid_amount", "a plan needs a positive amount (usd or quota) per period")
    period = _text(data, "period") or ""
    if period not in PERIODS:
        raise BadInput("invalid_period", f"period: {period!r} is not one of {', '.join(PERIODS)}")
    plan = Plan(name, quota, period, parse_int(data.get("days"), "days", 1, 36_500),
                parse_list(data.get("models"), "models"))
    replaced = await web_.store.get_plan(name) is not None
    await web_.store.create_plan(plan)
    return {**plan_json(plan, web_), "replaced": replaced}


def plan_json(plan: Plan, web_: BillingWeb) -> dict[str, Any]:
    """A plan as the CLI prints it."""
    return {"name": plan.name, "quota": plan.quota, "quota_usd": web_.usd(plan.quota), "period": plan.period,
            "days": plan.duration_days, "models": list(plan.models)}


async def list_plans(web_: BillingWeb) -> list[dict[str, Any]]:
    """Every plan."""
    return [plan_json(p, web_) for p in await web_.store.list_plans()]


async def grant(web_: BillingWeb, user: str, data: dict[str, Any]) -> dict[str, Any]:
    """{"plan", "start"?, "end"?}: a subscription for `user` (start now, end after the plan's
    days or 30)."""
    _fields(data, {"plan", "start", "end"})
    await user_of(web_, user)
    plan = await web_.store.get_plan(check_name(data.get("plan"), "plan"))
    if plan is None:
        raise NotFound("unknown_plan", f"unknown plan {data.get('plan')!r}")
    at = time.time()
    start = parse_time(data.get("start"), "start") or at
    end = parse_time(data.get("end"), "end") or start + (plan.duration_days or 30) * DAY
    if end <= start or end <= at:
        raise BadInput("invalid_time", "the subscription must end after it starts, and after now")
    sub = await web_.store.grant_subscription(user, plan.name, start, end)
    return {**subscription_json(sub, web_.money, at), "user": sub.user}


async def list_subscriptions(web_: BillingWeb, user: str | None) -> list[dict[str, Any]]:
    """A user's subscriptions (every user's without one)."""
    if user is not None:
        await user_of(web_, user)
    names = [user] if user is not None else [u.name for u in await web_.store.list_users()]
    at = time.time()
    return [{**subscription_json(s, web_.money, at), "user": s.user}
            for n in names for s in await web_.store.list_subscriptions(n)]
