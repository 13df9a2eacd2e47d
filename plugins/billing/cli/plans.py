"""`weir plan add | list` and `weir sub grant | list`: subscription plans and their instances."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.cli_frame import CLIError, emit
from plugins.billing.cli.accounts import (
    Money,
    amount_from,
    check_name,
    group_parser,
    iso,
    money_of,
    now,
    parse_time,
    split_list,
    table,
    with_store,
)
from plugins.billing.cli.users import subscription_json, subscription_line
from proxy.host import Config
from plugins.billing.store.base import Plan, Store, Subscription

PERIODS = ("day", "week", "month", "none")
DEFAULT_DAYS = 30
_DAY = 86400.0


def plan_json(plan: Plan, money: Money) -> dict[str, Any]:
    """A plan as wire JSON: `quota` units per `period`, for `days` (null: 30 at grant)."""
    return {
        "name": plan.name,
        "quota": plan.quota,
        "quota_usd": money.usd(plan.quota),
        "period": plan.period,
        "days": plan.duration_days,
        "models": list(plan.models),
    }


def _plan_line(p: dict[str, Any]) -> str:
    days = f"{p['days']} days" if p["days"] else f"{DEFAULT_DAYS} days by default"
    models = ", ".join(p["models"]) or "any model"
    return f"plan {p['name']}: {p['quota']} quota (${p['quota_usd']}) per {p['period']}, {days}, {models}"


def _add(args: argparse.Namespace, config: Config) -> int:
    name = check_name(args.name, "plan")
    money = money_of(config)
    quota = amount_from(args, money)
    if quota is None or quota <= 0:
        raise CLIError("a plan needs a positive --usd (or --quota) per period")
    if args.days is not None and args.days < 1:
        raise CLIError("--days must be at least 1")
    plan = Plan(name, quota, args.period, args.days, split_list(args.models, "--models"))

    async def work(store: Store) -> bool:
        existed = await store.get_plan(name) is not None
        await store.create_plan(plan)
        return existed

    replaced = with_store(config, work)
    data = plan_json(plan, money)
    verb = "replaced (existing subscriptions keep their terms)" if replaced else "created"
    emit(args, {**data, "replaced": replaced}, f"{_plan_line(data)}\n{verb}")
    return 0


def _list(args: argparse.Namespace, config: Config) -> int:
    money = money_of(config)
    data = [plan_json(p, money) for p in with_store(config, lambda store: store.list_plans())]
    emit(args, data, "\n".join(_plan_line(p) for p in data) or "no plans")
    return 0


def _window(args: argparse.Namespace, plan: Plan) -> tuple[float, float]:
    """The (start, end) of a grant; end defaults to start + the plan's days, else 30 days."""
    start = now() if args.start is None else parse_time(args.start, "--start")
    if args.end is not None:
        end = parse_time(args.end, "--end")
    else:
        end = start + (plan.duration_days or DEFAULT_DAYS) * _DAY
    if end <= start:
        raise CLIError("the subscription must end after it starts")
    if end <= now():
        raise CLIError(f"the subscription would end in the past ({iso(end)})")
    return start, end


def _grant(args: argparse.Namespace, config: Config) -> int:
    money = money_of(config)

    async def work(store: Store) -> Subscription:
        if await store.get_user(args.user) is None:
            raise CLIError(f"unknown user {args.user!r}")
        plan = await store.get_plan(args.plan)
        if plan is None:
            raise CLIError(f"unknown plan {args.plan!r}")
        start, end = _window(args, plan)
        return await store.grant_subscription(args.user, args.plan, start, end)

    data = subscription_json(with_store(config, work), money, now())
    emit(args, data, f"granted to {args.user}: " + subscription_line(data))
    return 0


def _subs(args: argparse.Namespace, config: Config) -> int:
    money = money_of(config)

    async def work(store: Store) -> list[Subscription]:
        if await store.get_user(args.user) is None:
            raise CLIError(f"unknown user {args.user!r}")
        return await store.list_subscriptions(args.user)

    at = now()
    data = [subscription_json(s, money, at) for s in with_store(config, work)]
    rows = [["ID", "PLAN", "PERIOD", "START", "END", "LEFT", "QUOTA", "USED", "ACTIVE"]] + [
        [s["id"], s["plan"], s["period"], s["start"], s["end"], str(s["balance_quota"]), str(s["quota"]),
         str(s["used_quota"]), "yes" if s["active"] else "no"]
        for s in data
    ]
    emit(args, data, table(rows if data else [], f"no subscriptions for {args.user}"))
    return 0


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add `weir plan …` and `weir sub …`."""
    actions = group_parser(sub, "plan", "subscription plans")
    p = actions.add_parser("add", parents=[common], help="create or replace a plan")
    p.add_argument("name")
    amounts = p.add_mutually_exclusive_group(required=True)
    amounts.add_argument("--usd", metavar="X", help="quota per period, in USD")
    amounts.add_argument("--quota", type=int, metavar="N", help="quota per period, in units")
    p.add_argument("--period", choices=PERIODS, required=True, help="when the quota resets")
    p.add_argument("--days", type=int, metavar="N", help=f"how long a grant lasts (default {DEFAULT_DAYS})")
    p.add_argument("--models", metavar="GLOB,...", help="the models it pays for (default: any)")
    commands["plan add"] = _add
    actions.add_parser("list", parents=[common], help="every plan")
    commands["plan list"] = _list
    actions = group_parser(sub, "sub", "subscriptions (a plan granted to a user)")
    p = actions.add_parser("grant", parents=[common], help="give a user a subscription")
    p.add_argument("user")
    p.add_argument("plan")
    p.add_argument("--start", metavar="ISO8601", help="default: now")
    p.add_argument("--end", metavar="ISO8601", help=f"default: start + the plan's days, or {DEFAULT_DAYS} days")
    commands["sub grant"] = _grant
    p = actions.add_parser("list", parents=[common], help="a user's subscriptions")
    p.add_argument("user")
    commands["sub list"] = _subs
