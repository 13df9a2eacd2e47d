"""The admin's account operations with HTTP inputs: a JSON body or a console form (a dict of
strings) in, the CLI's `--json` shapes out. The admin API and the console call these same
functions, and each calls the account function of `plugins.billing.accounts` that the
matching `weir` command calls ("two faces of the same functions"), acting as "admin" (the
ledger records who moved money).

Inputs are read here (amounts as `usd` or `quota`, lists as JSON arrays or comma-separated
text, times as ISO 8601 or epoch seconds); each refusal is a `BadInput` (400), `NotFound`
(404) or `Conflict` (409) whose code names the problem. An account function's own refusal
keeps its code (`invalid`, `not_found`, `conflict`) and message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from plugins.billing.accounts import CONFLICT, NOT_FOUND, AccountError, Accounts
from plugins.billing.accounts import keys as account_keys
from plugins.billing.accounts import plans as account_plans
from plugins.billing.accounts import records as account_records
from plugins.billing.accounts import users as account_users
from plugins.billing.store.base import Preference, User
from plugins.billing.web.common import BadInput, BillingWeb, check_name, parse_cidrs, parse_int, parse_list, parse_time
from plugins.billing.web.logsearch import LogQuery

PREFERENCES = tuple(p.value for p in Preference)
PERIODS = ("day", "week", "month", "none")
KEY_STATUSES = ("active", "disabled", "revoked")
MAX_NOTE = 500
#: Who the ledger says moved money through the admin API or the console.
ACTOR = "admin"


class NotFound(BadInput):
    """An unknown user, key, plan or subscription (404)."""


class Conflict(BadInput):
    """Input that is fine but that the state refuses (409): a name taken, a revoked key."""


def accounts(web_: BillingWeb, actor: str = ACTOR) -> Accounts:
    """The account functions' context: billing's store and USD rate, and who acts."""
    return Accounts(web_.store, web_.money, actor)


@contextmanager
def refusals() -> Iterator[None]:
    """An account function's refusal as this module's errors (same code and message)."""
    try:
        yield
    except AccountError as exc:
        kind = {NOT_FOUND: NotFound, CONFLICT: Conflict}.get(exc.code, BadInput)
        raise kind(exc.code, exc.message) from None


def _fields(data: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise BadInput(
            "unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}; expected {', '.join(sorted(allowed))}"
        )


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
    """The user `name`, or NotFound (`unknown_user`)."""
    user = await web_.store.get_user(name)
    if user is None:
        raise NotFound("unknown_user", f"unknown user {name!r}")
    return user


async def list_users(web_: BillingWeb) -> list[dict[str, Any]]:
    """Every user, by name (`weir user list --json`)."""
    return await account_users.list_users(accounts(web_))


async def show_user(web_: BillingWeb, name: str) -> dict[str, Any]:
    """A user's totals, key count and subscriptions (`weir user show --json`)."""
    await user_of(web_, name)
    with refusals():
        return await account_users.show_user(accounts(web_), name)


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
    with refusals():
        return await account_users.add_user(accounts(web_), name, group=group, preference=pref.value, quota=quota)


async def edit_user(web_: BillingWeb, name: str, data: dict[str, Any]) -> dict[str, Any]:
    """`PATCH /api/admin/users/{name}`: {"group"?, "preference"?, "disabled"?}. A disabled
    user's keys are refused (403 `user_disabled`); their money stays as it is."""
    _fields(data, {"group", "preference", "disabled"})
    await user_of(web_, name)
    group, pref = _text(data, "group"), _text(data, "preference")
    disabled = None if data.get("disabled") in (None, "") else flag(data["disabled"], "disabled")
    with refusals():
        await account_users.set_user(
            accounts(web_),
            name,
            group=None if group is None else check_name(group, "group"),
            preference=None if pref is None else preference_of(pref).value,
            disabled=disabled,
        )
    return await show_user(web_, name)


async def credit(web_: BillingWeb, name: str, data: dict[str, Any], *, adjust: bool) -> dict[str, Any]:
    """`topup` ({"usd" | "quota", "note"?}: a positive amount) or `adjust` ({"usd" | "quota",
    "note"}: a negative amount, which takes money away and must say why): a `credit` entry in
    the ledger recording the note and who. The answer is the user after it, with
    `credited_quota`, `credited_usd`, `note` and `actor`."""
    _fields(data, {"usd", "quota", "note"})
    quota = amount(web_, data)
    if quota is None or quota == 0:
        raise BadInput("invalid_amount", "give a non-zero amount in usd or quota")
    if not adjust and quota < 0:
        raise BadInput("invalid_amount", "a top-up adds money; take money away with an adjustment and a note")
    if adjust and quota > 0:
        raise BadInput("invalid_amount", "an adjustment takes money away: give a negative amount (to add, top up)")
    note = note_of(data, required=adjust)
    await user_of(web_, name)
    with refusals():
        if adjust:
            return await account_users.adjust(accounts(web_), name, quota, note or "")
        return await account_users.topup(accounts(web_), name, quota, note)


async def ledger(web_: BillingWeb, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """A user's wallet entries, oldest first, each with the balance after it (`weir user
    ledger --json`); `limit`, `before` and `everything` (every account of the user's)."""
    await user_of(web_, name)
    everything = params.get("everything") not in (None, "") and flag(params["everything"], "everything")
    with refusals():
        return await account_users.ledger(
            accounts(web_),
            name,
            limit=parse_int(params.get("limit"), "limit", 1, 10_000, 50) or 50,
            before=parse_int(params.get("before"), "before", 1, 2**62),
            everything=everything,
        )


def key_options(web_: BillingWeb, data: dict[str, Any]) -> dict[str, Any]:
    """An admin's new key: name, a quota (`usd`/`quota`) or `unlimited`, `models`, `ips`,
    `group`, `expires`."""
    _fields(data, {"name", "usd", "quota", "unlimited", "models", "ips", "group", "expires"})
    quota = amount(web_, data)
    if data.get("unlimited") not in (None, "") and flag(data["unlimited"], "unlimited") and quota is not None:
        raise BadInput("invalid_amount", "an unlimited key takes no quota")
    if quota is not None and quota < 0:
        raise BadInput("invalid_amount", "a key quota cannot be negative")
    name, group = _text(data, "name") or "", _text(data, "group")
    return {
        "name": check_name(name, "key") if name else "",
        "quota": quota,
        "models": parse_list(data.get("models"), "models"),
        "ips": parse_cidrs(data.get("ips")),
        "group": None if group is None else check_name(group, "group"),
        "expires_at": _future(parse_time(data.get("expires"), "expires")),
    }


def _future(at: float | None) -> float | None:
    if at is not None and at <= time.time():
        raise BadInput("invalid_time", "expires: that time is in the past")
    return at


async def create_key(web_: BillingWeb, user: str, data: dict[str, Any], actor: str = ACTOR) -> dict[str, Any]:
    """A key for `user` (`weir key create --json`): the clear key is in the answer's "key",
    the only time it is shown."""
    options = key_options(web_, data)
    await user_of(web_, user)
    with refusals():
        return await account_keys.create_key(accounts(web_, actor), user, **options)


async def list_keys(web_: BillingWeb, user: str | None) -> list[dict[str, Any]]:
    """A user's keys (every user's without one), oldest first per user."""
    if user is not None:
        await user_of(web_, user)
    acc = accounts(web_)
    names = [user] if user is not None else [u.name for u in await web_.store.list_users()]
    found: list[dict[str, Any]] = []
    with refusals():
        for name in names:
            found.extend(await account_keys.list_keys(acc, name))
    return found


async def _key(web_: BillingWeb, key_id: str) -> str:
    key = await web_.store.get_key(key_id)
    if key is None:
        raise NotFound("unknown_key", f"unknown key {key_id!r}")
    return key.status


async def show_key(web_: BillingWeb, key_id: str) -> dict[str, Any]:
    """One key (never the key itself)."""
    await _key(web_, key_id)
    with refusals():
        return await account_keys.show_key(accounts(web_), key_id)


async def set_key_status(web_: BillingWeb, key_id: str, status: object, actor: str = ACTOR) -> dict[str, Any]:
    """Set a key "active", "disabled" or "revoked" (revoked is final)."""
    if status not in KEY_STATUSES:
        raise BadInput("invalid_status", f"status: {status!r} is not one of {', '.join(KEY_STATUSES)}")
    if await _key(web_, key_id) == "revoked" and status != "revoked":
        raise Conflict("key_revoked", f"key {key_id} is revoked; make a new one")
    with refusals():
        return await account_keys.set_key_status(accounts(web_, actor), key_id, str(status))


async def edit_key(web_: BillingWeb, key_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """`PATCH /api/admin/keys/{id}`: {"status"?} and/or {"name"?, "usd"? | "quota"? |
    "unlimited"?, "models"?, "ips"?, "group"? ("" removes it), "expires"? (null: never)}. A
    quota sets what the key has left (a ledger entry of the difference)."""
    _fields(data, {"status", "name", "usd", "quota", "unlimited", "models", "ips", "group", "expires"})
    status = data.pop("status", None)
    if status is not None and status not in KEY_STATUSES:
        raise BadInput("invalid_status", f"status: {status!r} is not one of {', '.join(KEY_STATUSES)}")
    if await _key(web_, key_id) == "revoked":
        raise Conflict("key_revoked", f"key {key_id} is revoked; make a new one")
    if status == "revoked":
        if data:
            raise BadInput("invalid_field", "revoke a key on its own, without other changes")
        return await set_key_status(web_, key_id, status)
    changes: dict[str, Any] = {}
    if "name" in data:
        changes["name"] = _text(data, "name") or ""
    if "usd" in data or "quota" in data:
        changes["quota"] = amount(web_, data)
    if data.get("unlimited") not in (None, ""):
        changes["unlimited"] = flag(data["unlimited"], "unlimited")
    for name, parse in (("models", parse_list), ("ips", parse_cidrs)):
        if name in data:
            changes[name] = parse(data[name], name)
    if "group" in data:
        changes["group"] = _text(data, "group") or ""
    if "expires" in data:
        expires = parse_time(data["expires"], "expires")
        changes.update(expires_at=_future(expires), no_expiry=expires is None)
    if status is not None:
        changes["enabled"] = status == "active"
    with refusals():
        return await account_keys.update_key(accounts(web_), key_id, **changes)


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
    with refusals():
        return await account_plans.add_plan(
            accounts(web_),
            name,
            quota=quota,
            period=period,
            days=parse_int(data.get("days"), "days", 1, 36_500),
            models=parse_list(data.get("models"), "models"),
        )


async def list_plans(web_: BillingWeb) -> list[dict[str, Any]]:
    """Every plan."""
    return await account_plans.list_plans(accounts(web_))


async def delete_plan(web_: BillingWeb, name: str) -> dict[str, Any]:
    """Delete a plan (refused while a subscription to it runs)."""
    if await web_.store.get_plan(name) is None:
        raise NotFound("unknown_plan", f"unknown plan {name!r}")
    with refusals():
        return await account_plans.delete_plan(accounts(web_), name)


async def grant(web_: BillingWeb, user: str, data: dict[str, Any]) -> dict[str, Any]:
    """{"plan", "start"?, "end"?}: a subscription for `user` (start now, end after the plan's
    days or 30)."""
    _fields(data, {"plan", "start", "end"})
    await user_of(web_, user)
    plan = check_name(data.get("plan"), "plan")
    if await web_.store.get_plan(plan) is None:
        raise NotFound("unknown_plan", f"unknown plan {plan!r}")
    with refusals():
        return await account_plans.grant(
            accounts(web_),
            user,
            plan,
            start=parse_time(data.get("start"), "start"),
            end=parse_time(data.get("end"), "end"),
        )


async def list_subscriptions(web_: BillingWeb, user: str | None) -> list[dict[str, Any]]:
    """A user's subscriptions (every user's without one)."""
    if user is not None:
        await user_of(web_, user)
    acc = accounts(web_)
    names = [user] if user is not None else [u.name for u in await web_.store.list_users()]
    found: list[dict[str, Any]] = []
    with refusals():
        for name in names:
            found.extend(await account_plans.list_subscriptions(acc, name))
    return found


async def cancel_subscription(web_: BillingWeb, sub_id: str) -> dict[str, Any]:
    """End a subscription now (what its period had left stays unused)."""
    with refusals():
        return await account_plans.cancel_subscription(accounts(web_), sub_id)


async def logs(
    web_: BillingWeb, query: LogQuery, limit: int, before: int | None, totals: bool = True
) -> dict[str, Any]:
    """The consume log with the filters of `query` (`logsearch.LogQuery`), newest first, as
    `weir logs --json`: {"logs", "next_before", "totals"?}."""
    with refusals():
        return await account_records.logs(
            accounts(web_),
            user=query.user,
            key_id=query.key,
            model=query.model,
            outcome=query.outcome,
            since=query.since,
            until=query.until,
            limit=limit,
            before=before,
            totals=totals,
        )
