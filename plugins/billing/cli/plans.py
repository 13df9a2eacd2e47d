"""`weir plan add | list | delete` and `weir sub grant | list | cancel`: subscription plans and their instances
(see `plugins.billing.accounts.plans`)."""

from __future__ import annotations

import argparse
from typing import Any

from plugins.billing.accounts import money_of, plans
from plugins.billing.cli.accounts import amount_from, group_parser, run, table, time_from
from plugins.billing.cli.keys import list_option
from plugins.billing.cli.users import subscription_line
from plugins.billing.store.rules import PERIODS
from proxy.cli_frame import emit
from proxy.host import Config


def plan_line(p: dict[str, Any]) -> str:
    """One plan, for text output."""
    days = f"{p['days']} days" if p["days"] else f"{plans.DEFAULT_DAYS} days by default"
    models = ", ".join(p["models"]) or "any model"
    return f"plan {p['name']}: {p['quota']} quota (${p['quota_usd']}) per {p['period']}, {days}, {models}"


def _add(args: argparse.Namespace, config: Config) -> int:
    quota = amount_from(args, money_of(config))
    models = list_option(args, "models") or ()
    data = run(
        config,
        args,
        lambda acc: plans.add_plan(acc, args.name, quota=quota, period=args.period, days=args.days, models=models),
    )
    verb = "replaced (existing subscriptions keep their terms)" if data["replaced"] else "created"
    emit(args, data, f"{plan_line(data)}\n{verb}")
    return 0


def _list(args: argparse.Namespace, config: Config) -> int:
    data = run(config, args, plans.list_plans)
    emit(args, data, "\n".join(plan_line(p) for p in data) or "no plans")
    return 0


def _delete(args: argparse.Namespace, config: Config) -> int:
    data = run(config, args, lambda acc: plans.delete_plan(acc, args.name))
    emit(args, data, f"deleted {plan_line(data)}")
    return 0


def _cancel(args: argparse.Namespace, config: Config) -> int:
    data = run(config, args, lambda acc: plans.cancel_subscription(acc, args.id))
    emit(args, data, f"cancelled: {subscription_line(data)}")
    return 0


def _grant(args: argparse.Namespace, config: Config) -> int:
    start, end = time_from(args, "start"), time_from(args, "end")
    data = run(config, args, lambda acc: plans.grant(acc, args.user, args.plan, start=start, end=end))
    emit(args, data, f"granted to {args.user}: " + subscription_line(data))
    return 0


def _subs(args: argparse.Namespace, config: Config) -> int:
    data = run(config, args, lambda acc: plans.list_subscriptions(acc, args.user))
    rows = [["ID", "PLAN", "PERIOD", "START", "END", "LEFT", "QUOTA", "USED", "ACTIVE"]] + [
        [
            s["id"],
            s["plan"],
            s["period"],
            s["start"],
            s["end"],
            str(s["balance_quota"]),
            str(s["quota"]),
            str(s["used_quota"]),
            "yes" if s["active"] else "no",
        ]
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
    p.add_argument("--days", type=int, metavar="N", help=f"how long a grant lasts (default {plans.DEFAULT_DAYS})")
    p.add_argument("--models", metavar="GLOB,...", help="the models it pays for (default: any)")
    commands["plan add"] = _add
    actions.add_parser("list", parents=[common], help="every plan")
    commands["plan list"] = _list
    p = actions.add_parser("delete", parents=[common], help="delete a plan nobody is subscribed to")
    p.add_argument("name")
    commands["plan delete"] = _delete
    actions = group_parser(sub, "sub", "subscriptions (a plan granted to a user)")
    p = actions.add_parser("grant", parents=[common], help="give a user a subscription")
    p.add_argument("user")
    p.add_argument("plan")
    p.add_argument("--start", metavar="ISO8601", help="default: now")
    p.add_argument("--end", metavar="ISO8601", help=f"default: start + the plan's days, or {plans.DEFAULT_DAYS} days")
    commands["sub grant"] = _grant
    p = actions.add_parser("list", parents=[common], help="a user's subscriptions")
    p.add_argument("user")
    commands["sub list"] = _subs
    p = actions.add_parser("cancel", parents=[common], help="end a subscription now (see `weir sub list USER` for ids)")
    p.add_argument("id")
    commands["sub cancel"] = _cancel
