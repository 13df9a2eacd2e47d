"""`weir user add | topup | show | list`: users and their wallets."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.cli_frame import CLIError, emit
from plugins.billing.cli.accounts import Money, amount_from, check_name, group_parser, iso, money_of, now, table, with_store
from proxy.host import Config
from plugins.billing.store.base import Preference, Store, Subscription, User

PREFERENCES = tuple(p.value for p in Preference)


def user_json(user: User, money: Money) -> dict[str, Any]:
    """A user's totals as wire JSON (quota units, and USD as 6-place Decimal strings)."""
    return {
        "name": user.name,
        "group": user.group,
        "preference": user.preference.value,
        "balance_quota": user.balance,
        "reserved_quota": user.reserved,
        "available_quota": user.available,
        "used_quota": user.used,
        "request_count": user.request_count,
        "balance_usd": money.usd(user.balance),
        "available_usd": money.usd(user.available),
        "used_usd": money.usd(user.used),
        "created_at": iso(user.created_at),
    }


def subscription_json(sub: Subscription, money: Money, at: float) -> dict[str, Any]:
    """A subscription as wire JSON; `balance_quota` is what is left of the current period."""
    return {
        "id": sub.id,
        "plan": sub.plan,
        "period": sub.period,
        "quota": sub.quota,
        "quota_usd": money.usd(sub.quota),
        "start": iso(sub.start),
        "end": iso(sub.end),
        "period_start": iso(sub.period_start),
        "active": sub.start <= at < sub.end,
        "balance_quota": sub.balance,
        "reserved_quota": sub.reserved,
        "available_quota": sub.available,
        "used_quota": sub.used,
        "models": list(sub.models),
    }


def subscription_line(s: dict[str, Any]) -> str:
    """One subscription, for text output."""
    state = "active" if s["active"] else "inactive"
    models = f"  models {','.join(s['models'])}" if s["models"] else ""
    return (
        f"{s['id']}  plan {s['plan']} ({s['period']}, {state})  {s['start']} -> {s['end']}"
        f"  left {s['balance_quota']} of {s['quota']}  reserved {s['reserved_quota']}  used {s['used_quota']}{models}"
    )


def _wallet_text(u: dict[str, Any]) -> str:
    return (
        f"user {u['name']}  group {u['group']}  preference {u['preference']}\n"
        f"  balance    {u['balance_quota']} quota (${u['balance_usd']})\n"
        f"  reserved   {u['reserved_quota']} quota\n"
        f"  available  {u['available_quota']} quota (${u['available_usd']})\n"
        f"  used       {u['used_quota']} quota (${u['used_usd']}) over {u['request_count']} request(s)"
    )


def _add(args: argparse.Namespace, config: Config) -> int:
    name, group = check_name(args.name, "user"), check_name(args.group, "group")
    money = money_of(config)
    amount = amount_from(args, money)
    if amount is not None and amount < 0:
        raise CLIError("the initial balance cannot be negative")

    async def work(store: Store) -> User:
        if await store.get_user(name) is not None:
            raise CLIError(f"user {name!r} already exists")
        user = await store.create_user(name, group, Preference(args.preference))
        if amount:
            user = await store.credit(name, amount, "initial balance")
        return user

    data = user_json(with_store(config, work), money)
    emit(args, data, f"created user {name}\n" + _wallet_text(data))
    return 0


def _topup(args: argparse.Namespace, config: Config) -> int:
    money = money_of(config)
    amount = amount_from(args, money)
    if not amount:
        raise CLIError("a top-up must move a non-zero amount")
    note = args.note if args.note is not None else ("top-up" if amount > 0 else "adjustment")

    async def work(store: Store) -> User:
        if await store.get_user(args.name) is None:
            raise CLIError(f"unknown user {args.name!r}")
        return await store.credit(args.name, amount, note)

    data = user_json(with_store(config, work), money)
    data["credited_quota"] = amount
    data["credited_usd"] = money.usd(amount)
    sign = "+" if amount > 0 else ""
    emit(args, data, f"credited {sign}{amount} quota (${money.usd(amount)}) to {args.name}\n" + _wallet_text(data))
    return 0


def _show(args: argparse.Namespace, config: Config) -> int:
    money = money_of(config)

    async def work(store: Store) -> tuple[User, list[Subscription], int]:
        user = await store.get_user(args.name)
        if user is None:
            raise CLIError(f"unknown user {args.name!r}")
        return user, await store.list_subscriptions(args.name), len(await store.list_keys(args.name))

    user, subs, n_keys = with_store(config, work)
    at = now()
    data = user_json(user, money)
    data["subscriptions"] = [subscription_json(s, money, at) for s in subs]
    data["keys"] = n_keys
    lines = [_wallet_text(data), f"  keys       {n_keys}"]
    lines.append("  subscriptions:" if subs else "  subscriptions: none")
    lines += ["    " + subscription_line(s) for s in data["subscriptions"]]
    emit(args, data, "\n".join(lines))
    return 0


def _list(args: argparse.Namespace, config: Config) -> int:
    money = money_of(config)
    users = with_store(config, lambda store: store.list_users())
    data = [user_json(u, money) for u in users]
    rows = [["NAME", "GROUP", "PREFERENCE", "BALANCE", "USD", "RESERVED", "USED", "REQUESTS"]] + [
        [u["name"], u["group"], u["preference"], str(u["balance_quota"]), u["balance_usd"],
         str(u["reserved_quota"]), str(u["used_quota"]), str(u["request_count"])]
        for u in data
    ]
    emit(args, data, table(rows if data else [], "no users"))
    return 0


def _amount_options(parser: argparse.ArgumentParser, required: bool) -> None:
    amounts = parser.add_mutually_exclusive_group(required=required)
    amounts.add_argument("--usd", metavar="X", help="amount in USD (exact decimal, converted with quota_per_usd)")
    amounts.add_argument("--quota", type=int, metavar="N", help="amount in quota units")


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add `weir user …`."""
    actions = group_parser(sub, "user", "users and their wallets")
    p = actions.add_parser("add", parents=[common], help="create a user, optionally with a starting balance")
    p.add_argument("name")
    p.add_argument("--group", default="default", help="price group (default: default)")
    p.add_argument("--preference", choices=PREFERENCES, default=Preference.SUBSCRIPTION_FIRST.value,
                   help="which funding source holds draw on first")
    _amount_options(p, required=False)
    commands["user add"] = _add
    p = actions.add_parser("topup", parents=[common], help="credit (or, negative, debit) a wallet")
    p.add_argument("name")
    _amount_options(p, required=True)
    p.add_argument("--note", help="recorded on the ledger entry")
    commands["user topup"] = _topup
    p = actions.add_parser("show", parents=[common], help="a user's balances, subscriptions and key count")
    p.add_argument("name")
    commands["user show"] = _show
    actions.add_parser("list", parents=[common], help="every user")
    commands["user list"] = _list
