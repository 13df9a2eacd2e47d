"""The JSON of records the admin API answers and the console shows: log rows, the audit and
the upstreams with their health and use."""

from __future__ import annotations

import time
from typing import Any

from plugins.billing.accounts.shapes import log_json
from plugins.billing.web.common import BillingWeb, iso
from proxy.host import Host

#: An open hold with no sign of life for this many checkpoint intervals is stuck (as the CLI).
STUCK_CHECKPOINTS = 30
MIN_STUCK_AFTER = 300.0


def log_row_json(row: Any, web_: BillingWeb) -> dict[str, Any]:
    """A consume-log row as the CLI's `weir logs --json` prints it."""
    return log_json(row, web_.money)


async def audit_json(host: Host, web_: BillingWeb) -> dict[str, Any]:
    """`weir audit --json`: every balance against the ledger, orphaned and stuck holds."""
    at = time.time()
    orphan_after = host.config.store.orphan_after
    stuck_after = max(MIN_STUCK_AFTER, STUCK_CHECKPOINTS * web_.checkpoint_every)
    report = await web_.store.audit(at, orphan_after, stuck_after=stuck_after)
    return {
        "ok": report.ok, "consistent": not report.mismatches, "checked_at": iso(at),
        "orphan_after": orphan_after, "stuck_after": stuck_after, "mismatches": list(report.mismatches),
        "orphans": list(report.orphans), "stuck": list(report.stuck), "negatives": list(report.negatives),
    }


async def upstreams_json(host: Host, web_: BillingWeb) -> dict[str, Any]:
    """Each configured upstream: its health (the host's view over five minutes) and what it
    served (quota and requests, from the ledger)."""
    used = await web_.store.upstream_stats()
    found = []
    for status in host.upstreams():
        quota, requests = used.get(status.name, (0, 0))
        found.append({
            "name": status.name, "type": status.type, "models": list(status.models), "healthy": status.healthy,
            "breaker_open": status.breaker_open,
            "recent_errors": status.recent_errors, "recent_attempts": status.recent_attempts,
            "p50_ms": status.p50_ms, "last_error": status.last_error, "last_error_at": iso(status.last_error_at),
            "used_quota": quota, "used_usd": web_.usd(quota), "request_count": requests,
        })
    return {"upstreams": found}
