"""Account storage: the `Store` protocol and its SQLite and Redis implementations."""

from __future__ import annotations

from plugins.billing.store.base import (
    ApiKey,
    AuditReport,
    FundingSource,
    Hold,
    HoldRefusal,
    HoldState,
    LogDetails,
    LogRow,
    Plan,
    Preference,
    Refusal,
    Resolution,
    Store,
    StoreError,
    StoreUnavailable,
    Subscription,
    User,
)

__all__ = [
    "ApiKey",
    "AuditReport",
    "FundingSource",
    "Hold",
    "HoldRefusal",
    "HoldState",
    "LogDetails",
    "LogRow",
    "Plan",
    "Preference",
    "Refusal",
    "Resolution",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Subscription",
    "User",
]
