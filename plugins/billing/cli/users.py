"""`weir user add | topup | adjust | set | show | list` and `weir ledger`: users and their
wallets (see `plugins.billing.accounts.users`)."""

from __future__ import annotations

import argparse
from typing import Any

from plugins.billing.accounts import money_of, users
from plugins.billing.cli.accounts import amount_from, group_parser, run, table
from proxy.cli_frame import emit
from proxy.host import Config


def subscription_line(s: dict[str, Any]) -> str:
    """One subscription, for text output."""
    state = "active" if s["active"] else f"cancelled {s['cancelled_at']}" if s["cancelled_at"] else "inactive"
    models = f"  models {','.join(s['models'])}" if s["models"] else ""
    return (
        f"{s['id']}  plan {s['plan']} ({s['period']}, {state})  {s['start']} -> {s['end']}"
        f"  left {s['balance_quota']} of {s['quota']}  reserved {s['reserved_quota']}  used {s['used_quota']}{models}"
    )


def wallet_text(u: dict[str, Any]) -> str:
    """A user's wallet, for text output."""
    return (
        f"user {u['name']}  group {u['group']}  preference {u['preference']}{'  DISABLED' if u['disabled'] else ''}\n"
        f"  balance    {u['balance_quota']} quota (${u['balance_usd']})\n"
        f"  reserved   {u['reserved_quota']} quota\n"
        f"  available  {u['available_quota']} quota (${u['available_usd']})\n"
        f"  used       {u['used_quota']} quota (${u['used_usd']}) over {u['request_count']} request(s)"
    )


def _add(args: argparse.Namespace, config: Config) -> int:
    quota = amount_from(args, money_of(config))
    data = run(
        config,
        args,
        lambda acc: users.add_user(acc, args.name, group=args.group, preference=args.preference, quota=quota),
    )
    emit(args, data, f"created user {args.name}\n" + wallet_text(data))
    return 0


def _topup(args: argparse.Namespace, config: Config) -> int:
    money = money_of(config)
    quota = amount_from(args, money)
    assert quota is not None  # argparse requires --usd or --quota
    data = run(config, args, lambda acc: users.topup(acc, args.name, quota, args.note))
    sign = "+" if quota > 0 else ""
    emit(args, data, f"credited {sign}{quota} quota (${money.usd(quota)}) to {args.name}\n" + wallet_text(data))
    return 0


def _adjust(args: argparse.Namespace, config: Config) -> int:
    money = money_of(config)
    quota = amount_from(args, money)
    assert quota is not None  # argparse requires --usd or --quota
    data = run(config, args, lambda acc: users.adjust(acc, args.name, quota, args.note))
    emit(
        args, data, f"adjusted {args.name} by {quota} quota (${money.usd(quota)}): {data['note']}\n" + wallet_text(data)
    )
    return 0


def _set(args: argparse.Namespace, config: Config) -> int:
    disabled = None if args.enabled is None else not args.enabled
    data = run(
        config,
        args,
        lambda acc: users.set_user(acc, args.name, group=args.group, preference=args.preference, disabled=disabled),
    )
    emit(args, data, f"changed user {args.name}\n" + wallet_text(data))
    return 0


def _ledger_line(e: dict[str, Any]) -> str:
    amount = f"{e['amount_quota']:+d}" if e["amount_quota"] else "0"
    after = "" if e["balance_quota"] is None else f"  balance {e['balance_quota']} (${e['balance_usd']})"
    held = f"  reserved {e['reserved_quota']:+d}" if e["reserved_quota"] else ""
    who = f"  by {e['actor']}" if e["actor"] else ""
    why = f"  {e['note']}" if e["note"] else ""
    request = f"  [{e['request_id']}]" if e["request_id"] else ""
    return f"#{e['id']} {e['time']}  {e['label']:<10} {e['account']}  {amount}{held}{after}{who}{why}{request}"


def _ledger(args: argparse.Namespace, config: Config) -> int:
    data = run(
        config,
        args,
        lambda acc: users.ledger(acc, args.user, limit=args.limit, before=args.before, everything=args.all),
    )
    lines = [_ledger_line(e) for e in data["entries"]] or ["no ledger entries"]
    if data["next_before"] is not None:
        lines.insert(0, f"(older with --before {data['next_before']})")
    lines.append(f"balance now {data['balance_quota']} quota (${data['balance_usd']})")
    emit(args, data, "\n".join(lines))
    return 0


def _show(args: argparse.Namespace, config: Config) -> int:
    data = run(config, args, lambda acc: users.show_user(acc, args.name))
    lines = [wallet_text(data), f"  keys       {data['keys']}"]
    lines.append("  subscriptions:" if data["subscriptions"] else "  subscriptions: none")
    lines += ["    " + subscription_line(s) for s in data["subscriptions"]]
    emit(args, data, "\n".join(lines))
    return 0


def _list(args: argparse.Namespace, config: Config) -> int:
    data = run(config, args, users.list_users)
    rows = [["NAME", "GROUP", "PREFERENCE", "BALANCE", "USD", "RESERVED", "USED", "REQUESTS"]] + [
        [
            u["name"],
            u["group"],
            u["preference"],
            str(u["balance_quota"]),
            u["balance_usd"],
            str(u["reserved_quota"]),
            str(u["used_quota"]),
            str(u["request_count"]),
        ]
        for u in data
    ]
    emit(args, data, table(rows if data else [], "no users"))
    return 0


def amount_options(parser: argparse.ArgumentParser, required: bool) -> None:
    """`--usd X | --quota N`."""
    amounts = parser.add_mutually_exclusive_group(required=required)
    amounts.add_argument("--usd", metavar="X", help="amount in USD (exact decimal, converted with quota_per_usd)")
    amounts.add_argument("--quota", type=int, metavar="N", help="amount in quota units")


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add `weir user …`."""
    actions = group_parser(sub, "user", "users and their wallets")
    p = actions.add_parser("add", parents=[common], help="create a user, optionally with a starting balance")
    p.add_argument("name")
    p.add_argument("--group", default="default", help="price group (default: default)")
    p.add_argument(
        "--preference",
        choices=users.PREFERENCES,
        default=users.PREFERENCES[0],
        help="which funding source holds draw on first",
    )
    amount_options(p, required=False)
    commands["user add"] = _add
    p = actions.add_parser("topup", parents=[common], help="credit a wallet (to take quota away: adjust)")
    p.add_argument("name")
    amount_options(p, required=True)
    p.add_argument("--note", help="recorded on the ledger entry (default: top-up)")
    commands["user topup"] = _topup
    p = actions.add_parser("adjust", parents=[common], help="take quota away from a wallet, saying why")
    p.add_argument("name")
    amount_options(p, required=True)
    p.add_argument("--note", required=True, help="why (recorded on the ledger entry, with who you are)")
    commands["user adjust"] = _adjust
    p = actions.add_parser("set", parents=[common], help="change a user's group or preference, disable or enable")
    p.add_argument("name")
    p.add_argument("--group", help="price group")
    p.add_argument("--preference", choices=users.PREFERENCES, help="which funding source holds draw on first")
    state = p.add_mutually_exclusive_group()
    state.add_argument(
        "--disable",
        dest="enabled",
        action="store_false",
        default=None,
        help="refuse the user's keys (403 user_disabled)",
    )
    state.add_argument(
        "--enable", dest="enabled", action="store_true", default=None, help="accept the user's keys again"
    )
    commands["user set"] = _set
    p = actions.add_parser("show", parents=[common], help="a user's balances, subscriptions and key count")
    p.add_argument("name")
    commands["user show"] = _show
    actions.add_parser("list", parents=[common], help="every user")
    commands["user list"] = _list
    p = sub.add_parser("ledger", parents=[common], help="a user's top-ups, adjustments and charges, in order")
    p.add_argument("user")
    p.add_argument("--limit", type=int, default=50, help="the newest N entries (default 50)")
    p.add_argument("--before", type=int, metavar="ID", help="page back: entries older than this id")
    p.add_argument("--all", action="store_true", help="every entry: holds and releases, keys and subscriptions too")
    commands["ledger"] = _ledger
