"""`weir holds [list]` and `weir holds resolve`: open holds, and resolving a stuck one by hand
(see `plugins.billing.accounts.holds` for the rules)."""

from __future__ import annotations

import argparse
from typing import Any

from plugins.billing.accounts import holds
from plugins.billing.accounts.holds import ago, stuck_after_of
from plugins.billing.cli.accounts import checked, run, table
from proxy.cli_frame import emit
from proxy.host import Config


def add_stuck_after(parser: argparse.ArgumentParser) -> None:
    """The `--stuck-after SECONDS` option (default: see `stuck_after_of`)."""
    parser.add_argument(
        "--stuck-after",
        type=float,
        metavar="SECONDS",
        help="an open hold with no checkpoint or creation for this long is stuck"
        " (default max(300, 30 x the billing plugin's checkpoint_every))",
    )


def _instance_text(h: dict[str, Any]) -> str:
    if h["instance_idle_s"] is None:
        return f"{h['instance_id']} (never seen)"
    state = "alive" if h["instance_alive"] else "silent"
    return f"{h['instance_id']} ({state}, seen {ago(h['instance_idle_s'])} ago)"


def _row(h: dict[str, Any]) -> list[str]:
    touched = "never" if h["touched_at"] is None else f"{ago(h['idle_s'])} ago"
    checkpoint = "-" if h["checkpoint"] is None else str(h["checkpoint"])
    return [
        h["request_id"],
        h["user"],
        h["key_id"],
        str(h["amount"]),
        checkpoint,
        ago(h["age_s"]),
        touched,
        _instance_text(h),
        "STUCK" if h["stuck"] else "",
    ]


def _list(args: argparse.Namespace, config: Config) -> int:
    stuck_after = checked(args, lambda: stuck_after_of(config, args.stuck_after))

    data = run(config, args, lambda acc: holds.list_holds(acc, config.store.orphan_after, stuck_after))
    rows = [["REQUEST", "USER", "KEY", "AMOUNT", "CHECKPOINT", "AGE", "TOUCHED", "INSTANCE", ""]] if data else []
    rows += [_row(h) for h in data]
    text = table(rows, "no open holds")
    stuck = sum(1 for h in data if h["stuck"])
    if stuck:
        text += f"\n{stuck} stuck hold(s): no sign of life for over {stuck_after:.0f}s (see `weir holds resolve`)"
    emit(args, data, text)
    return 0


def _resolve_text(r: dict[str, Any]) -> str:
    if not r["resolved_now"]:
        return f"hold {r['request_id']} was already resolved ({r['state']}, charged {r['charged']}): nothing done"
    if r["captured_checkpoint"]:
        what = f"captured its checkpoint {r['charged']} (held {r['held']}"
        what += f", overage {r['overage']} to the wallet)" if r["overage"] else ")"
    else:
        why = ": it has no checkpoint to capture" if r["capture_asked"] else ""
        what = f"released all {r['held']} held{why}"
    return f"resolved hold {r['request_id']} (user {r['user']}) by hand: {what}; note: {r['note']}"


def _resolve(args: argparse.Namespace, config: Config) -> int:
    stuck_after = checked(args, lambda: stuck_after_of(config, args.stuck_after))
    data = run(
        config,
        args,
        lambda acc: holds.resolve_hold(
            acc,
            args.request_id,
            capture_checkpoint=args.capture_checkpoint,
            note=args.note,
            force=args.force,
            orphan_after=config.store.orphan_after,
            stuck_after=stuck_after,
        ),
    )
    emit(args, data, _resolve_text(data))
    return 0


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add `weir holds [list]` and `weir holds resolve`."""
    text = "open holds: list them, resolve a stuck one by hand"
    group = sub.add_parser("holds", parents=[common], help=text, description=text)
    add_stuck_after(group)
    actions = group.add_subparsers(dest="action", metavar="ACTION")
    group.set_defaults(action="list")  # after the subparsers: `weir holds` alone lists
    lister = actions.add_parser(
        "list", parents=[common], help="every open hold with its age, last sign of life and instance"
    )
    add_stuck_after(lister)
    commands["holds list"] = _list
    res = actions.add_parser(
        "resolve",
        parents=[common],
        help="resolve one open hold by hand: capture its checkpoint (release when it has none) or release it",
    )
    res.add_argument("request_id", metavar="REQUEST_ID")
    how = res.add_mutually_exclusive_group(required=True)
    how.add_argument("--capture-checkpoint", action="store_true", help="charge the last checkpoint, release the rest")
    how.add_argument("--release", action="store_true", help="charge nothing, release the whole hold")
    res.add_argument("--note", required=True, help="why (kept in the log row and on the ledger entry)")
    res.add_argument("--force", action="store_true", help="also when a live request may still own the hold")
    add_stuck_after(res)
    commands["holds resolve"] = _resolve
