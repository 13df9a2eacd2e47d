"""The consume log and the audit."""

from __future__ import annotations

from typing import Any

from plugins.billing.accounts.errors import invalid
from plugins.billing.accounts.service import Accounts, user_of
from plugins.billing.accounts.shapes import log_json
from plugins.billing.accounts.values import iso

MAX_LIMIT = 10_000
"""The most log rows one call returns."""


async def logs(
    acc: Accounts, *, user: str | None = None, since: float | None = None, until: float | None = None,
    limit: int = 50, before: int | None = None,
) -> dict[str, Any]:
    """Consume-log rows, newest first, as {"logs": [...], "next_before": id or null}: pass
    `next_before` as `before` for the next page (null: this was the last)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"limit must be between 1 and {MAX_LIMIT}")
    if user is not None:
        await user_of(acc, user)
    rows = await acc.store.query_logs(user=user, since=since, until=until, limit=limit, before_id=before)
    data = [log_json(r, acc.money) for r in rows]
    return {"logs": data, "next_before": data[-1]["id"] if len(data) == limit else None}


async def audit(acc: Accounts, orphan_after: float, stuck_after: float | None) -> dict[str, Any]:
    """Every balance against the ledger, and the orphaned and stuck holds; `ok` is the verdict."""
    at = acc.now()
    report = await acc.store.audit(at, orphan_after, stuck_after=stuck_after)
    return {
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
