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
    money = f"refunded {r['estimate']} (charged 0)" if r["refund"] else f"charge {r['charge']} (${r['charge_usd']})"
    return (
        f"#{r['id']} {r['time']} {r['user']} key {r['key_id']} {where} {r['end_reason']}/{r['usage_source']}"
        f"  {money} est {r['estimate']}{overage}  {tokens}  [{r['request_id']}]"
    )


def totals_line(t: dict[str, Any]) -> str:
    """What the filter adds up to, for text output."""
    return (
        f"total: {t['requests']} request(s), charged {t['charged_quota']} quota (${t['charged_usd']}),"
        f" {t['refunds']} refund(s) ({t['refunded_quota']} quota given back), overage {t['overage_quota']}"
    )


def _logs(args: argparse.Namespace, config: Config) -> int:
    since, until = time_from(args, "since"), time_from(args, "until")
    data = run(
        config,
        args,
        lambda acc: records.logs(
            acc,
            user=args.user,
            key_id=args.key,
            model=args.model,
            outcome=args.outcome,
            since=since,
            until=until,
            limit=args.limit,
            before=args.before,
            totals=args.totals or not args.json,
        ),
    )
    if args.totals:
        emit(args, data["totals"], totals_line(data["totals"]))
        return 0
    rows = data["logs"]
    text = "\n".join(_log_line(r) for r in rows) or "no log rows"
    if data["next_before"] is not None:
        text += f"\n(more with --before {data['next_before']})"
    if "totals" in data:
        text += "\n" + totals_line(data["totals"])
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
            " (see `weir holds`, then `weir holds resolve`)"
            if a["stuck"]
            else "no stuck holds"
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
    p = sub.add_parser("logs", parents=[common], help="the consume log, newest first, with totals")
    p.add_argument("--user", help="only this user's requests")
    p.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    p.add_argument("--before", type=int, metavar="ID", help="page on: rows older than this log id")
    p.add_argument("--key", metavar="ID", help="only this key's requests")
    p.add_argument("--model", metavar="GLOB", help="only requests for these models (the name the client sent)")
    p.add_argument(
        "--outcome",
        metavar="END_REASON",
        help="only rows that ended so: completed, upstream_error, client_disconnected, orphaned, ...",
    )
    p.add_argument("--since", metavar="ISO8601", help="only rows at or after this time")
    p.add_argument("--until", metavar="ISO8601", help="only rows before this time")
    p.add_argument("--totals", action="store_true", help="print only what every matching row adds up to")
    commands["logs"] = _logs
    audit = sub.add_parser(
        "audit",
        parents=[common],
        help="check every balance against the ledger and look for orphaned and stuck holds (exit 1 if not clean)",
    )
    add_stuck_after(audit)
    commands["audit"] = _audit
