"""The consume log's filters as the admin API and the console's log page read them: user,
key, model (a glob), outcome (an end reason) and a time range. The account function
`plugins.billing.accounts.records.logs` applies them in the store."""

from __future__ import annotations

from dataclasses import dataclass

from plugins.billing.web.common import check_name, parse_time

#: The end reasons the console's outcome filter offers (the API takes any).
OUTCOMES = (
    "completed",
    "client_disconnected",
    "upstream_truncated",
    "upstream_error",
    "plugin_failed",
    "shutdown",
    "client_stalled",
    "orphaned",
    "resolved_by_hand",
    "store_unavailable",
    "rejected",
)


@dataclass(frozen=True, slots=True)
class LogQuery:
    """What to look for; None is "any"."""

    user: str | None = None
    key: str | None = None
    model: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None


def query_from(params: dict[str, str]) -> LogQuery:
    """The filters in a query string or form (`user`, `key`, `model`, `outcome`, `since`,
    `until`; empty means any)."""

    def text(name: str) -> str | None:
        value = (params.get(name) or "").strip()
        return value or None

    user = text("user")
    return LogQuery(
        user=None if user is None else check_name(user, "user"),
        key=text("key"),
        model=text("model"),
        outcome=text("outcome"),
        since=parse_time(text("since"), "since"),
        until=parse_time(text("until"), "until"),
    )
