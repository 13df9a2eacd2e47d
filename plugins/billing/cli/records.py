"""`weir logs` (the consume log) and `weir audit` (the ledger check)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from proxy.cli_frame import CLIError, emit
from plugins.billing.cli.accounts import iso, money_of, now, parse_time, with_store
from plugins.billing.cli.holds import add_stuck_after, stuck_after_of
from proxy.host import Config
from plugins.billing.store.base import AuditReport, LogRow, Store

MAX_LIMIT = 10_000


def log_json(row: LogRow, usd: str) -> dict[str, Any]:
    """A consume-log row as flat wire JSON (the request details beside the money)."""
    return {
        "id": row.id,
        "time": iso(row.ts),
        "ts": row.ts,
        "request_id": row.request_id,
        "user": row.user,
        "key_id": row.key_id,
        "source": row.source,
        "estimate": row.estimate,
        "charge": row.charge,
        "charge_usd": usd,
        "overage": row.overage,
        "price_version": row.price_version,
        **row.details._asdict(),
    }


def _log_line(r: dict[str, Any]) -> str:
    where = f"{r['model'] or '-'} via {r['upstream'] or '-'}"
    tokens = f"in {r['input']} cache {r['cache_read']} out {r['output']}"
    overage = f" overage {r['overage']}" if r["overage"] else ""
    return (
        f"#{r['id']} {r['time']} {r['user']} key {r['key_id']} {where} {r['end_reason']}/{r['usage_source']}"
        f"  charge {r['charge']} (${r['charge_usd']}) est {r['estimate']}{overage}  {tokens}  [{r['request_id']}]"
    )


def _logs(args: argparse.Namespace, config: Config) -> int:
    if not 1 <= args.limit <= MAX_LIMIT:
        raise CLIError(f"--limit must be between 1 and {MAX_LIMIT}")
    since = None if args.since is None else parse_time(args.since, "--since")
    money = money_of(config)

    async def work(store: Store) -> list[LogRow]:
        if args.user is not None and await store.get_user(args.user) is None:
            raise CLIError(f"unknown user {args.user!r}")
        return await store.query_logs(user=args.user, since=since, limit=args.limit, before_id=args.before)

    data = [log_json(r, money.usd(r.charge)) for r in with_store(config, work)]
    text = "\n".join(_log_line(r) for r in data) or "no log rows"
    if len(data) == args.limit:
        text += f"\n(more with --before {data[-1]['id']})"
    emit(args, data, text)
    return 0


def audit_text(report: AuditReport, stuck_after: float | None = None) -> str:
    """A readable audit report: each finding on its own line, then the verdict."""
    lines = [f"MISMATCH  {m}" for m in report.mismatches]
    lines.append("ledger inconsistent" if report.mismatches else "ledger consistent")
    lines += [f"ORPHAN    {o}" for o in report.orphans]
    lines.append(f"{len(report.orphans)} orphaned hold(s) left" if report.orphans else "no orphaned holds")
    if stuck_after is not None:
        lines += [f"STUCK     {s}" for s in report.stuck]
        lines.append(
            f"{len(report.stuck)} stuck hold(s): no sign of life for over {stuck_after:.0f}s"
            " (see `weir holds`, then `weir holds resolve`)" if report.stuck else "no stuck holds"
        )
    if report.negatives:
        lines.append("negative balances (overage charged above a hold; not a failure):")
        lines += [f"NEGATIVE  {n}" for n in report.negatives]
    return "\n".join(lines)


def _audit(args: argparse.Namespace, config: Config) -> int:
    orphan_after, stuck_after = config.store.orphan_after, stuck_after_of(args, config)
    at = now()
    report = with_store(config, lambda store: store.audit(at, orphan_after, stuck_after=stuck_after))
    data = {
        "ok": report.ok,
        "consistent": not report.mismatches,
        "checked_at": iso(at),
        "orphan_after": orphan_after,
        "stuck_after": stuck_after,
        "mismatches": list(report.mismatches),
        "orphans": list(report.orphans),
        "stuck": list(report.stuck),
        "negatives": list(report.negatives),
    }
    emit(args, data, audit_text(report, stuck_after))
    if report.ok:
        return 0
    print(
        f"weir: audit failed: {len(report.mismatches)} mismatch(es), {len(report.orphans)} orphaned hold(s),"
        f" {len(report.stuck)} stuck hold(s)",
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
