"""The consume log and the audit."""

from __future__ import annotations

from typing import Any

from plugins.billing.accounts.errors import invalid
from plugins.billing.accounts.service import Accounts, key_of, user_of
from plugins.billing.accounts.shapes import log_json, totals_json
from plugins.billing.accounts.values import iso

MAX_LIMIT = 10_000
"""The most log rows one call returns."""


async def logs(
    acc: Accounts,
    *,
    user: str | None = None,
    key_id: str | None = None,
    model: str | None = None,
    outcome: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 50,
    before: int | None = None,
    totals: bool = True,
) -> dict[str, Any]:
    """Consume-log rows, newest first, with the filters: `user`, `key_id`, `model` (a glob
    on the requested model), `outcome` (the row's `end_reason`: completed, upstream_error,
    client_disconnected, orphaned, resolved_by_hand, ...) and `since <= time < until`.

    Answers {"logs": [...], "next_before": id or null, "totals": {...}}: pass `next_before`
    as `before` for the next page (null: this was the last); the totals add up every row the
    filters match, not only this page (`totals=False` skips them). A row whose hold was given
    back whole says `"refund": true`."""
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"limit must be between 1 and {MAX_LIMIT}")
    if since is not None and until is not None and until <= since:
        raise invalid("until must be later than since")
    for field, value in (("model", model), ("outcome", outcome)):
        if value is not None and not value.strip():
            raise invalid(f"{field} must not be empty")
    if user is not None:
        await user_of(acc, user)
    if key_id is not None:
        await key_of(acc, key_id)
    found = dict(key_id=key_id, model=model, end_reason=outcome)
    rows = await acc.store.query_logs(user, since, until, limit, before, **found)
    data = [log_json(r, acc.money) for r in rows]
    answer: dict[str, Any] = {"logs": data, "next_before": data[-1]["id"] if len(data) == limit else None}
    if totals:
        answer["totals"] = totals_json(await acc.store.log_totals(user, since, until, **found), acc.money)
    return answer


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
