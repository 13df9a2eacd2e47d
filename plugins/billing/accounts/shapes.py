"""The wire JSON of accounts: what `weir … --json` prints and the admin API answers.

Quota amounts are integers (`*_quota`), USD amounts 6-place Decimal strings (`*_usd`),
times ISO 8601 UTC with a `Z`. Key material never appears: a key is named by its id.
"""

from __future__ import annotations

from typing import Any

from plugins.billing.accounts.values import Money, iso
from plugins.billing.store.base import ApiKey, LedgerEntry, LogRow, LogTotals, Plan, Subscription, User


def user_json(user: User, money: Money) -> dict[str, Any]:
    """A user's totals."""
    return {
        "name": user.name,
        "group": user.group,
        "preference": user.preference.value,
        "balance_quota": user.balance,
        "reserved_quota": user.reserved,
        "available_quota": user.available,
        "used_quota": user.used,
        "request_count": user.request_count,
        "balance_usd": money.usd(user.balance),
        "available_usd": money.usd(user.available),
        "used_usd": money.usd(user.used),
        "created_at": iso(user.created_at),
        "disabled": user.disabled,
    }


def subscription_json(sub: Subscription, money: Money, at: float) -> dict[str, Any]:
    """A subscription; `balance_quota` is what is left of the current period."""
    return {
        "id": sub.id,
        "user": sub.user,
        "plan": sub.plan,
        "period": sub.period,
        "quota": sub.quota,
        "quota_usd": money.usd(sub.quota),
        "start": iso(sub.start),
        "end": iso(sub.end),
        "period_start": iso(sub.period_start),
        "active": sub.start <= at < sub.end,
        "balance_quota": sub.balance,
        "reserved_quota": sub.reserved,
        "available_quota": sub.available,
        "used_quota": sub.used,
        "models": list(sub.models),
        "cancelled_at": iso(sub.cancelled_at),
    }


def key_json(key: ApiKey, money: Money, at: float) -> dict[str, Any]:
    """A key (never the key itself). `quota`/`remaining_quota` are null for an unlimited key."""
    expired = key.expires_at is not None and key.expires_at <= at
    return {
        "id": key.id,
        "user": key.user,
        "name": key.name,
        "status": key.status,
        "usable": key.status == "active" and not expired,
        "expires_at": iso(key.expires_at),
        "unlimited": key.unlimited,
        "quota": key.quota,
        "remaining_quota": None if key.unlimited else key.balance,
        "remaining_usd": None if key.unlimited else money.usd(key.balance),
        "reserved_quota": key.reserved,
        "used_quota": key.used,
        "used_usd": money.usd(key.used),
        "request_count": key.request_count,
        "models": list(key.models),
        "ips": list(key.ips),
        "group": key.group,
        "created_at": iso(key.created_at),
    }


def plan_json(plan: Plan, money: Money) -> dict[str, Any]:
    """A plan: `quota` units per `period`, for `days` (null: 30 at grant)."""
    return {
        "name": plan.name,
        "quota": plan.quota,
        "quota_usd": money.usd(plan.quota),
        "period": plan.period,
        "days": plan.duration_days,
        "models": list(plan.models),
    }


def is_refund(charge: int, estimate: int) -> bool:
    """A request that held something and was charged nothing: its hold was given back whole."""
    return charge == 0 and estimate > 0


def log_json(row: LogRow, money: Money) -> dict[str, Any]:
    """A consume-log row, flat: the request's details beside the money. `refund` is true when
    the hold was given back whole (nothing was charged)."""
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
        "charge_usd": money.usd(row.charge),
        "overage": row.overage,
        "price_version": row.price_version,
        "refund": is_refund(row.charge, row.estimate),
        **row.details._asdict(),
    }


def totals_json(totals: LogTotals, money: Money) -> dict[str, Any]:
    """What a consume-log filter adds up to."""
    return {
        "requests": totals.requests,
        "charged_quota": totals.charged,
        "charged_usd": money.usd(totals.charged),
        "overage_quota": totals.overage,
        "refunds": totals.refunds,
        "refunded_quota": totals.refunded,
        "refunded_usd": money.usd(totals.refunded),
    }


LABELS = {"capture": "charge", "expire": "charge", "overage": "overage", "hold": "hold", "release": "release"}


def entry_label(entry: LedgerEntry) -> str:
    """What a ledger entry is, for people: a wallet credit is a top-up (positive) or an
    adjustment (negative); a capture or an orphan's expiry is a charge."""
    if entry.kind == "credit":
        if not entry.account.startswith("wallet:"):
            return "credit"
        return "top-up" if entry.d_balance > 0 else "adjustment"
    return LABELS.get(entry.kind, entry.kind)


def entry_json(entry: LedgerEntry, money: Money, balance: int | None) -> dict[str, Any]:
    """A ledger entry; `balance_quota` is the wallet's balance right after it (null for the
    entries of other accounts)."""
    return {
        "id": entry.id,
        "time": iso(entry.ts),
        "ts": entry.ts,
        "account": entry.account,
        "kind": entry.kind,
        "label": entry_label(entry),
        "amount_quota": entry.d_balance,
        "amount_usd": money.usd(entry.d_balance),
        "reserved_quota": entry.d_reserved,
        "balance_quota": balance,
        "balance_usd": None if balance is None else money.usd(balance),
        "request_id": entry.request_id or None,
        "note": entry.note,
        "actor": entry.actor,
    }
