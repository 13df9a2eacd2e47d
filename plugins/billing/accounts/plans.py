"""Subscription plans and subscriptions (a plan granted to a user)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plugins.billing.accounts.errors import invalid, not_found, refused_as_conflict
from plugins.billing.accounts.service import Accounts, plan_of, user_of
from plugins.billing.accounts.shapes import plan_json, subscription_json
from plugins.billing.accounts.values import check_items, check_name, iso
from plugins.billing.store.base import Plan
from plugins.billing.store.rules import PERIODS

DEFAULT_DAYS = 30
"""How long a grant lasts when neither the grant nor its plan says."""
DAY = 86400.0


async def add_plan(
    acc: Accounts,
    name: str,
    *,
    quota: int | None,
    period: str,
    days: int | None = None,
    models: Sequence[str] = (),
) -> dict[str, Any]:
    """Create or replace a plan (existing subscriptions keep their terms); the answer says
    whether it `replaced` one."""
    name = check_name(name, "plan")
    if quota is None or quota <= 0:
        raise invalid("a plan needs a positive amount (usd or quota) per period")
    if period not in PERIODS:
        raise invalid(f"period: {period!r} is not one of {', '.join(PERIODS)}")
    if days is not None and days < 1:
        raise invalid("days must be at least 1")
    plan = Plan(name, quota, period, days, check_items(models, "models"))
    replaced = await acc.store.get_plan(name) is not None
    with refused_as_conflict():
        await acc.store.create_plan(plan)
    return {**plan_json(plan, acc.money), "replaced": replaced}


async def list_plans(acc: Accounts) -> list[dict[str, Any]]:
    """Every plan, by name."""
    return [plan_json(p, acc.money) for p in await acc.store.list_plans()]


def grant_window(acc: Accounts, plan: Plan, start: float | None, end: float | None) -> tuple[float, float]:
    """The (start, end) of a grant: start defaults to now, end to start + the plan's days
    (else 30 days). It must end after it starts, and after now."""
    at = acc.now()
    start = at if start is None else start
    if end is None:
        end = start + (plan.duration_days or DEFAULT_DAYS) * DAY
    if end <= start:
        raise invalid("the subscription must end after it starts")
    if end <= at:
        raise invalid(f"the subscription would end in the past ({iso(end)})")
    return start, end


async def grant(
    acc: Accounts, user: str, plan: str, *, start: float | None = None, end: float | None = None
) -> dict[str, Any]:
    """Give `user` a subscription to `plan`; its first period is credited at once."""
    await user_of(acc, user)
    found = await plan_of(acc, plan)
    begin, finish = grant_window(acc, found, start, end)
    with refused_as_conflict():
        sub = await acc.store.grant_subscription(user, plan, begin, finish)
    return subscription_json(sub, acc.money, acc.now())


async def list_subscriptions(acc: Accounts, user: str) -> list[dict[str, Any]]:
    """A user's subscriptions, each brought to its current period, ending soonest first."""
    await user_of(acc, user)
    at = acc.now()
    return [subscription_json(s, acc.money, at) for s in await acc.store.list_subscriptions(user)]


async def delete_plan(acc: Accounts, name: str) -> dict[str, Any]:
    """Delete a plan; refused (conflict) while a subscription to it has not ended. Ended and
    cancelled subscriptions keep their own copy of its terms."""
    plan = await plan_of(acc, name)
    with refused_as_conflict():
        await acc.store.delete_plan(name)
    return {**plan_json(plan, acc.money), "deleted": True}


async def cancel_subscription(acc: Accounts, sub_id: str) -> dict[str, Any]:
    """End a subscription now (at its start if it has not begun). No new request draws on
    it; requests already holding on it settle on it; what its period had left stays on it,
    unused (nothing goes to the wallet: a grant is not a purchase)."""
    if await acc.store.get_subscription(sub_id) is None:
        raise not_found(f"unknown subscription {sub_id!r}")
    with refused_as_conflict():
        sub = await acc.store.cancel_subscription(sub_id)
    return subscription_json(sub, acc.money, acc.now())
