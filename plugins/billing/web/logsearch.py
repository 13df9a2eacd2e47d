"""The consume log with the admin's filters: user, key, model, outcome and time range.

The store indexes the log by id and filters by user and time; key, model and outcome are
matched here, page by page, newest first. A search stops after `MAX_SCAN` rows so that a rare
match over a huge log cannot hold a request for long: the answer then says where it stopped
(`next_before`), and the next page goes on from there.
"""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator
from dataclasses import dataclass

from plugins.billing.store.base import LogRow, Store
from plugins.billing.web.common import BadInput, check_name, parse_time

PAGE = 1000
MAX_SCAN = 50_000
#: The end reasons a log row can carry, and `error` for all but `completed`.
OUTCOMES = ("completed", "error", "client_disconnected", "upstream_truncated", "upstream_error", "plugin_failed",
            "shutdown", "client_stalled", "orphaned", "store_unavailable", "rejected")


@dataclass(frozen=True, slots=True)
class LogQuery:
    """What to look for. `model` may be a glob (`gpt-4o*`); `outcome` is an end reason
    (`completed`, `client_disconnected`, …) or `error` for every one but `completed`."""

    user: str | None = None
    key: str | None = None
    model: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, row: LogRow) -> bool:
        """Whether `row` passes the filters the store does not apply."""
        if self.key is not None and row.key_id != self.key:
            return False
        if self.model is not None and not fnmatch.fnmatchcase(row.details.model, self.model):
            return False
        if self.outcome == "error":
            return row.details.end_reason != "completed"
        return self.outcome is None or row.details.end_reason == self.outcome

    @property
    def simple(self) -> bool:
        """True when the store can answer on its own."""
        return self.key is None and self.model is None and self.outcome is None


def query_from(params: dict[str, str]) -> LogQuery:
    """The filters in a query string or form (`user`, `key`, `model`, `outcome`, `since`,
    `until`; empty means any)."""

    def text(name: str) -> str | None:
        value = (params.get(name) or "").strip()
        return value or None

    user = text("user")
    outcome = text("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise BadInput("invalid_outcome", f"outcome: {outcome!r} is not one of {', '.join(OUTCOMES)}")
    return LogQuery(
        user=None if user is None else check_name(user, "user"), key=text("key"), model=text("model"),
        outcome=outcome, since=parse_time(text("since"), "since"), until=parse_time(text("until"), "until"),
    )


async def search(store: Store, query: LogQuery, limit: int, before: int | None = None) -> tuple[list[LogRow], int | None]:
    """Up to `limit` matching rows, newest first, and the `before` to pass for the next page
    (None when the log holds no older row)."""
    if query.simple:
        rows = await store.query_logs(query.user, query.since, query.until, limit, before)
        return rows, (rows[-1].id if len(rows) == limit else None)
    found: list[LogRow] = []
    scanned = 0
    cursor = before
    while True:
        page = await store.query_logs(query.user, query.since, query.until, PAGE, cursor)
        for row in page:
            scanned += 1
            cursor = row.id
            if query.matches(row):
                found.append(row)
                if len(found) == limit:
                    return found, row.id
        if len(page) < PAGE:
            return found, None
        if scanned >= MAX_SCAN:
            return found, cursor


async def every_row(store: Store, query: LogQuery, cap: int) -> AsyncIterator[LogRow]:
    """Every matching row, newest first, at most `cap` (the CSV export)."""
    before: int | None = None
    sent = 0
    while sent < cap:
        rows, before = await search(store, query, min(PAGE, cap - sent), before)
        for row in rows:
            yield row
        sent += len(rows)
        if before is None:
            return
