"""`weir logs` (the consume log) and `weir audit` (the ledger check); see
`plugins.billing.accounts.records`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from plugins.billing.accounts import records
from plugins.billing.accounts.holds import stuck_after_of
from plugins.billing.cli.accounts import checked, run, time_from
from plugins.billing.cli.holds import add_stuck_after
from proxy.cli_frame import emit
from proxy.host import Config


def _log_line(r: dict[str, Any]) -> str:
    where = f"{r['model'] or '-'} via {r['upstream'] or '-'}"
    tokens = f"in {r['input']} cache {r['cache_read']} out {r['output']}"
    overage = f" overage {r['overage']}" if r["overage"] else ""
    return (
        f"#{r['id']} {r['time']} {r['user']} key {r['key_id']} {where} {r['end_reason']}/{r['usage_source']}"
        f"  charge {r['charge']} (${r['charge_usd']}) est {r['estimate']}{overage}  {tokens}  [{r['request_id']}]"
    )


def _logs(args: argparse.Namespace, config: Config) -> int:
    since = time_from(args, "since")
    data = run(config, args, lambda acc: records.logs(
        acc, user=args.user, since=since, limit=args.limit, before=args.before))
    rows = data["logs"]
    text = "\n".join(_log_line(r) for r in rows) or "no log rows"
    if data["next_before"] is not None:
        text += f"\n(more with --before {data['next_before']})"
    emit(args, rows, text)
    return 0


def audit_text(a: dict[str, Any]) -> str:
    """A readable audit report: each finding on its own line, then the verdict."""
    lines = [f"MISMATCH  {m}" for m in a["mismatches"]]
    lines.append("ledger inconsistent" if a["mismatches"] else "ledger consistent")
    lines += [f"ORPHAN    {o}" for o in a["orphans"]]
    lines.append(f"{len(a['orphans'])} orphaned hold(s) left" if a["orphans"] else "no orphaned holds")
    if a["stuck_after"] is not None:
        lines += [f"STUCK     {s}" for s in a["stuck"]]
        lines.append(
            f"{len(a['stuck'])} stuck hold(s): no sign of life for over {a['stuck_after']:.0f}s"
            " (see `weir holds`, then `weir holds resolve`)" if a["stuck"] else "no stuck holds"
        )
    if a["negatives"]:
        lines.append("negative balances (overage charged above a hold; not a failure):")
        lines += [f"NEGATIVE  {n}" for n in a["negatives"]]
    return "\n".join(lines)


def _audit(args: argparse.Namespace, config: Config) -> int:
    stuck_after = checked(args, lambda: stuck_after_of(config, args.stuck_after))
    data = run(config, args, lambda acc: records.audit(acc, config.store.orphan_after, stuck_after))
    emit(args, data, audit_text(data))
    if data["ok"]:
        return 0
    print(
        f"weir: audit failed: {len(data['mismatches'])} mismatch(es), {len(data['orphans'])} orphaned hold(s),"
        f" {len(data['stuck'])} stuck hold(s)",
        file=sys.stderr,
    )
    return 1


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add `weir logs` and `weir audit`."""
    p = sub.add_parser("logs", parents=[common], help="the consume log, newest first")
    p.add_argument("--user", help="only this user's requests")
    p.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    p.add_argument("--before", type=int, metavar="ID", help="page on: rows older than this log id")
    p.add_argument("--since", metavar="ISO8601", help="only rows at or after this time")
    commands["logs"] = _logs
    audit = sub.add_parser(
        "audit", parents=[common],
        help="check every balance against the ledger and look for orphaned and stuck holds (exit 1 if not clean)",
    )
    add_stuck_after(audit)
    commands["audit"] = _audit
