"""`weir key create | show | list | revoke | disable | enable`: API keys.

The clear key exists only inside `key create`: it is generated, hashed, written to stdout
once and dropped. Nothing else derived from it (not the hash, not a hint) is ever printed;
keys are named by their public id (`k_…`) and optional name.
"""

from __future__ import annotations

import argparse
from typing import Any

from plugins.billing.apikeys import generate_key
from proxy.cli_frame import CLIError, emit
from plugins.billing.cli.accounts import (
    Money,
    amount_from,
    check_name,
    group_parser,
    iso,
    money_of,
    now,
    parse_cidrs,
    parse_time,
    split_list,
    table,
    with_store,
)
from proxy.host import Config
from plugins.billing.store.base import ApiKey, Store

_STATUS_ACTIONS = {"revoke": "revoked", "disable": "disabled", "enable": "active"}


def key_json(key: ApiKey, money: Money) -> dict[str, Any]:
    """A key as wire JSON. `quota`/`remaining_quota` are null for an unlimited key."""
    expired = key.expires_at is not None and key.expires_at <= now()
    return {
        "id": key.id,
        "user": key.user,
        "name": key.name,
        "status": key.status,
        "usable": key.status == "active" and not expired,
        "expires_at": iso(key.expires_at),
        "unlimited": key.unlimited,
        "quota": key.quota,
        "remaining_quota": None if key.unlimited else key.balance,
        "remaining_usd": None if key.unlimited else money.usd(key.balance),
        "reserved_quota": key.reserved,
        "used_quota": key.used,
        "used_usd": money.usd(key.used),
        "request_count": key.request_count,
        "models": list(key.models),
        "ips": list(key.ips),
        "group": key.group,
        "created_at": iso(key.created_at),
    }


def _limit(k: dict[str, Any]) -> str:
    return "unlimited" if k["unlimited"] else f"{k['remaining_quota']} of {k['quota']} left"


def key_text(k: dict[str, Any]) -> str:
    """A key's details, for text output."""
    lines = [
        f"key {k['id']}  user {k['user']}  name {k['name'] or '-'}  status {k['status']}",
        f"  quota      {_limit(k)}  (reserved {k['reserved_quota']})",
        f"  used       {k['used_quota']} quota (${k['used_usd']}) over {k['request_count']} request(s)",
        f"  expires    {k['expires_at'] or 'never'}",
        f"  models     {', '.join(k['models']) or 'any'}",
        f"  ips        {', '.join(k['ips']) or 'any'}",
        f"  group      {k['group'] or '(the user group)'}",
        f"  created    {k['created_at']}",
    ]
    return "\n".join(lines)


def _create_options(args: argparse.Namespace, money: Money) -> dict[str, Any]:
    """The validated `create_key` keyword arguments (everything but the hash)."""
    quota = None if args.unlimited else amount_from(args, money)
    if quota is not None and quota < 0:
        raise CLIError("a key quota cannot be negative")
    expires_at = None
    if args.expires is not None:
        expires_at = parse_time(args.expires, "--expires")
        if expires_at <= now():
            raise CLIError(f"--expires: {args.expires!r} is in the past")
    return {
        "name": args.name or "",
        "quota": quota,
        "models": split_list(args.models, "--models"),
        "ips": parse_cidrs(args.ips),
        "group": None if args.group is None else check_name(args.group, "group"),
        "expires_at": expires_at,
    }


def _create(args: argparse.Namespace, config: Config) -> int:
    money = money_of(config)
    options = _create_options(args, money)
    clear, digest, _hint = generate_key()

    async def work(store: Store) -> ApiKey:
        if await store.get_user(args.user) is None:
            raise CLIError(f"unknown user {args.user!r}")
        return await store.create_key(args.user, digest, **options)

    data = key_json(with_store(config, work), money)
    text = (
        f"created key {data['id']} for {data['user']} ({_limit(data)})\n{clear}\n"
        "This is the only time the key is shown: store it now."
    )
    emit(args, {"id": data["id"], "key": clear, **data}, text)
    return 0


def _show(args: argparse.Namespace, config: Config) -> int:
    money = money_of(config)
    key = with_store(config, lambda store: store.get_key(args.id))
    if key is None:
        raise CLIError(f"unknown key {args.id!r}")
    data = key_json(key, money)
    emit(args, data, key_text(data))
    return 0


def _list(args: argparse.Namespace, config: Config) -> int:
    money = money_of(config)

    async def work(store: Store) -> list[ApiKey]:
        if await store.get_user(args.user) is None:
            raise CLIError(f"unknown user {args.user!r}")
        return await store.list_keys(args.user)

    data = [key_json(k, money) for k in with_store(config, work)]
    rows = [["ID", "NAME", "STATUS", "QUOTA", "USED", "REQUESTS", "EXPIRES"]] + [
        [k["id"], k["name"] or "-", k["status"], _limit(k), str(k["used_quota"]), str(k["request_count"]),
         k["expires_at"] or "never"]
        for k in data
    ]
    emit(args, data, table(rows if data else [], f"no keys for {args.user}"))
    return 0


def _set_status(args: argparse.Namespace, config: Config) -> int:
    status = _STATUS_ACTIONS[args.action]

    async def work(store: Store) -> ApiKey:
        if await store.get_key(args.id) is None:
            raise CLIError(f"unknown key {args.id!r}")
        return await store.set_key_status(args.id, status)

    data = key_json(with_store(config, work), money_of(config))
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
    for action, help_text in (
        ("revoke", "revoke a key for good"),
        ("disable", "stop a key until it is enabled again"),
        ("enable", "re-enable a disabled key"),
    ):
        p = actions.add_parser(action, parents=[common], help=help_text)
        p.add_argument("id")
        commands[f"key {action}"] = _set_status
