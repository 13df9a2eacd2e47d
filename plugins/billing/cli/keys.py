"""`weir key create | show | list | set | revoke | disable | enable`: API keys (see
`plugins.billing.accounts.keys`).

The clear key is printed once, by `key create`; nothing else derived from it (not the hash,
not a hint) is ever printed. Keys are named by their public id (`k_…`) and optional name.
"""

from __future__ import annotations

import argparse
from typing import Any

from plugins.billing.accounts import keys, money_of
from plugins.billing.accounts.values import split_list
from plugins.billing.cli.accounts import amount_from, checked, group_parser, run, table, time_from
from proxy.cli_frame import emit
from proxy.host import Config


def limit_text(k: dict[str, Any]) -> str:
    """A key's own quota, short."""
    return "unlimited" if k["unlimited"] else f"{k['remaining_quota']} of {k['quota']} left"


def key_text(k: dict[str, Any]) -> str:
    """A key's details, for text output."""
    lines = [
        f"key {k['id']}  user {k['user']}  name {k['name'] or '-'}  status {k['status']}",
        f"  quota      {limit_text(k)}  (reserved {k['reserved_quota']})",
        f"  used       {k['used_quota']} quota (${k['used_usd']}) over {k['request_count']} request(s)",
        f"  expires    {k['expires_at'] or 'never'}",
        f"  models     {', '.join(k['models']) or 'any'}",
        f"  ips        {', '.join(k['ips']) or 'any'}",
        f"  group      {k['group'] or '(the user group)'}",
        f"  created    {k['created_at']}",
    ]
    return "\n".join(lines)


def list_option(args: argparse.Namespace, name: str) -> tuple[str, ...] | None:
    """A comma-separated option as a tuple (None when not given, () for "")."""
    text: str | None = getattr(args, name)
    if text is None:
        return None
    return checked(args, lambda: split_list(text, name))


def _create(args: argparse.Namespace, config: Config) -> int:
    quota = None if args.unlimited else amount_from(args, money_of(config))
    models, ips = list_option(args, "models") or (), list_option(args, "ips") or ()
    expires_at = time_from(args, "expires")
    data = run(
        config,
        args,
        lambda acc: keys.create_key(
            acc,
            args.user,
            name=args.name or "",
            quota=quota,
            models=models,
            ips=ips,
            group=args.group,
            expires_at=expires_at,
        ),
    )
    text = (
        f"created key {data['id']} for {data['user']} ({limit_text(data)})\n{data['key']}\n"
        "This is the only time the key is shown: store it now."
    )
    emit(args, data, text)
    return 0


def _show(args: argparse.Namespace, config: Config) -> int:
    data = run(config, args, lambda acc: keys.show_key(acc, args.id))
    emit(args, data, key_text(data))
    return 0


def _list(args: argparse.Namespace, config: Config) -> int:
    data = run(config, args, lambda acc: keys.list_keys(acc, args.user))
    rows = [["ID", "NAME", "STATUS", "QUOTA", "USED", "REQUESTS", "EXPIRES"]] + [
        [
            k["id"],
            k["name"] or "-",
            k["status"],
            limit_text(k),
            str(k["used_quota"]),
            str(k["request_count"]),
            k["expires_at"] or "never",
        ]
        for k in data
    ]
    emit(args, data, table(rows if data else [], f"no keys for {args.user}"))
    return 0


def _set(args: argparse.Namespace, config: Config) -> int:
    quota = None if args.unlimited else amount_from(args, money_of(config))
    never = args.expires is not None and args.expires.strip().lower() == "never"
    expires_at = None if never else time_from(args, "expires")
    models, ips = list_option(args, "models"), list_option(args, "ips")
    data = run(
        config,
        args,
        lambda acc: keys.update_key(
            acc,
            args.id,
            name=args.name,
            quota=quota,
            unlimited=args.unlimited,
            models=models,
            ips=ips,
            group=args.group,
            expires_at=expires_at,
            no_expiry=never,
            enabled=args.enabled,
        ),
    )
    emit(args, data, f"changed key {data['id']}\n" + key_text(data))
    return 0


def _set_status(args: argparse.Namespace, config: Config) -> int:
    status = keys.STATUS_OF_ACTION[args.action]
    data = run(config, args, lambda acc: keys.set_key_status(acc, args.id, status))
    emit(args, data, f"key {data['id']} ({data['user']}) is now {data['status']}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add `weir key …`."""
    actions = group_parser(sub, "key", "API keys (stored as hashes; the key is shown once)")
    p = actions.add_parser("create", parents=[common], help="create a key and print it once")
    p.add_argument("user")
    p.add_argument("--name", help="a label for the key")
    limits = p.add_mutually_exclusive_group()
    limits.add_argument("--quota", type=int, metavar="N", help="the key's own quota in units (default: unlimited)")
    limits.add_argument("--usd", metavar="X", help="the key's own quota in USD")
    limits.add_argument("--unlimited", action="store_true", help="no quota of its own (the default)")
    p.add_argument("--models", metavar="GLOB,...", help="allowed models (globs)")
    p.add_argument("--ips", metavar="CIDR,...", help="allowed client networks")
    p.add_argument("--group", help="the key's price group (the using group)")
    p.add_argument("--expires", metavar="ISO8601", help="expiry; a time without offset is UTC")
    commands["key create"] = _create
    p = actions.add_parser("show", parents=[common], help="one key (never the key itself)")
    p.add_argument("id")
    commands["key show"] = _show
    p = actions.add_parser("list", parents=[common], help="a user's keys")
    p.add_argument("user")
    commands["key list"] = _list
    p = actions.add_parser("set", parents=[common], help="change a key: name, quota, allowlists, group, expiry, state")
    p.add_argument("id")
    p.add_argument("--name", help="a new label")
    limits = p.add_mutually_exclusive_group()
    limits.add_argument("--quota", type=int, metavar="N", help="the key may spend N more units (its remaining quota)")
    limits.add_argument("--usd", metavar="X", help="the same, in USD")
    limits.add_argument("--unlimited", action="store_true", help="drop the key's own quota")
    p.add_argument("--models", metavar="GLOB,...", help="replace the allowed models ('' allows any)")
    p.add_argument("--ips", metavar="CIDR,...", help="replace the allowed client networks ('' allows any)")
    p.add_argument("--group", help="the key's price group ('' removes it)")
    p.add_argument("--expires", metavar="ISO8601", help="a new expiry, or 'never'")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_true", default=None, help="enable a disabled key")
    state.add_argument("--disable", dest="enabled", action="store_false", default=None, help="disable the key")
    commands["key set"] = _set
    for action, help_text in (
        ("revoke", "revoke a key for good"),
        ("disable", "stop a key until it is enabled again"),
        ("enable", "re-enable a disabled key"),
    ):
        p = actions.add_parser(action, parents=[common], help=help_text)
        p.add_argument("id")
        commands[f"key {action}"] = _set_status
