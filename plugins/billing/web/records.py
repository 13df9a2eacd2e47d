"""The JSON of records the admin API answers and the console shows: the audit, the open holds
and the upstreams with their health and use."""

from __future__ import annotations

from typing import Any

from plugins.billing.accounts import Accounts
from plugins.billing.accounts import holds as account_holds
from plugins.billing.accounts import records as account_records
from plugins.billing.web.common import BillingWeb, iso
from proxy.host import Host


async def audit_json(host: Host, web_: BillingWeb) -> dict[str, Any]:
    """`weir audit --json` (the same account function, with the CLI's default thresholds):
    every balance against the ledger, orphaned and stuck holds."""
    stuck_after = account_holds.stuck_after_of(host.config)
    return await account_records.audit(
        Accounts(web_.store, web_.money, "admin"), host.config.store.orphan_after, stuck_after
    )


async def holds_json(host: Host, web_: BillingWeb) -> dict[str, Any]:
    """`weir holds --json`: every open hold, with how long its instance has been silent and
    whether it is orphaned or stuck."""
    acc = Accounts(web_.store, web_.money, "admin")
    found = await account_holds.list_holds(
        acc, host.config.store.orphan_after, account_holds.stuck_after_of(host.config)
    )
    return {"holds": found}


async def upstreams_json(host: Host, web_: BillingWeb) -> dict[str, Any]:
    """Each configured upstream: its health (the host's view over five minutes) and what it
    served (quota and requests, from the ledger)."""
    used = await web_.store.upstream_stats()
    found = []
    for status in host.upstreams():
        quota, requests = used.get(status.name, (0, 0))
        found.append(
            {
                "name": status.name,
                "type": status.type,
                "models": list(status.models),
                "healthy": status.healthy,
                "breaker_open": status.breaker_open,
                "recent_errors": status.recent_errors,
                "recent_attempts": status.recent_attempts,
                "p50_ms": status.p50_ms,
                "last_error": status.last_error,
                "last_error_at": iso(status.last_error_at),
                "used_quota": quota,
                "used_usd": web_.usd(quota),
                "request_count": requests,
            }
        )
    return {"upstreams": found}
