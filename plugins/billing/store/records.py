"""The store's values: errors, enums and the immutable records its methods take and return.

`plugins.billing.store.base` re-exports every name here, next to the `Store` protocol that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

__all__ = [
    "StoreError",
    "StoreUnavailable",
    "Preference",
    "FundingSource",
    "HoldState",
    "Refusal",
    "User",
    "ApiKey",
    "Plan",
    "Subscription",
    "Hold",
    "HoldRefusal",
    "LogDetails",
    "LogRow",
    "Resolution",
    "AuditReport",
    "KeyChanges",
    "LedgerEntry",
    "LedgerPage",
    "LogTotals",
]


class StoreError(Exception):
    """A store operation failed for a reason other than unavailability (bad input, conflict)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or timed out. Requests are refused with 503."""


class Preference(StrEnum):
    """Which funding source a user's holds draw on first."""

    SUBSCRIPTION_FIRST = "subscription_first"
    WALLET_FIRST = "wallet_first"
    SUBSCRIPTION_ONLY = "subscription_only"
    WALLET_ONLY = "wallet_only"


class FundingSource(StrEnum):
    """Where a hold's money comes from."""

    WALLET = "wallet"
    SUBSCRIPTION = "subscription"


class HoldState(StrEnum):
    """The life of a hold: open, then exactly one of the three resolutions."""

    OPEN = "open"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class Refusal(StrEnum):
    """Why a hold was refused."""

    INSUFFICIENT_WALLET = "insufficient_wallet"
    INSUFFICIENT_SUBSCRIPTION = "insufficient_subscription"
    INSUFFICIENT_KEY_QUOTA = "insufficient_key_quota"
    KEY_EXPIRED = "key_expired"
    KEY_DISABLED = "key_disabled"
    UNKNOWN_KEY = "unknown_key"


@dataclass(frozen=True, slots=True)
class User:
    """A paying user. `balance` is the wallet; `reserved` its open holds. A `disabled`
    user's keys are refused by billing's authentication (403 `user_disabled`)."""

    name: str
    group: str
    preference: Preference
    balance: int
    reserved: int
    used: int
    request_count: int
    created_at: float
    disabled: bool = False

    @property
    def available(self) -> int:
        """Wallet balance minus open holds."""
        return self.balance - self.reserved


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key. Only its SHA-256 hash is stored; the clear key is shown once.

    `quota` is None for an unlimited key; otherwise `balance` is the key's remaining quota
    and `reserved` its open holds. `status` is "active", "disabled" or "revoked".
    """

    id: str
    user: str
    name: str
    status: str
    expires_at: float | None
    quota: int | None
    balance: int
    reserved: int
    used: int
    request_count: int
    models: tuple[str, ...]
    ips: tuple[str, ...]
    group: str | None
    created_at: float
    hint: str = ""

    @property
    def unlimited(self) -> bool:
        """True when the key has no quota of its own."""
        return self.quota is None


@dataclass(frozen=True, slots=True)
class Plan:
    """A subscription plan: `quota` units per `period` (day|week|month|none)."""

    name: str
    quota: int
    period: str
    duration_days: int | None = None
    models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Subscription:
    """An instance of a plan for a user, valid from `start` to `end` (epoch seconds).

    `balance` is what is left in the current period, which began at `period_start`;
    `used` is the total ever captured, `reserved` the open holds. A cancelled subscription
    has `cancelled_at` set and ended then (`end` was moved to it).
    """

    id: str
    user: str
    plan: str
    quota: int
    period: str
    start: float
    end: float
    period_start: float
    balance: int
    reserved: int
    used: int
    models: tuple[str, ...] = ()
    cancelled_at: float | None = None

    @property
    def available(self) -> int:
        """Left in the current period minus open holds."""
        return self.balance - self.reserved


# The three values below are made on every billed request (a hold, its log details, its
# resolution): immutable named tuples, because a frozen dataclass costs ~1.4k instructions
# per field to build (object.__setattr__ for each), ten times a tuple's. Build them
# positionally on hot paths; keywords build a dict first.


class Hold(NamedTuple):
    """A recorded reservation. `request_id` is its idempotency key. `touched_at` is the last
    checkpoint's time (None before the first), which also restarted the ttl (`expires_at`)."""

    request_id: str
    user: str
    key_id: str
    source: FundingSource
    subscription_id: str | None
    amount: int
    key_amount: int
    price_version: str
    instance_id: str
    created_at: float
    expires_at: float
    state: HoldState
    checkpoint: int | None = None
    touched_at: float | None = None

    @property
    def last_sign_of_life(self) -> float:
        """When the hold was last checkpointed, else when it was taken."""
        return self.created_at if self.touched_at is None else self.touched_at


@dataclass(frozen=True, slots=True)
class HoldRefusal:
    """A hold that was not taken. `available` is what the deciding source had."""

    reason: Refusal
    available: int
    needed: int


class LogDetails(NamedTuple):
    """What the caller knows about a request when it resolves its hold.

    The store adds user, key, estimate and charge from the hold itself.
    """

    end_reason: str
    usage_source: str
    model: str = ""
    upstream_model: str = ""
    upstream: str = ""
    key_name: str = ""
    group: str = ""
    multiplier: str = "1"
    stream: bool = False
    input: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output: int = 0
    audio_in: int = 0
    audio_out: int = 0
    images: int = 0
    latency_ms: int = 0
    ttft_ms: int | None = None
    status: int = 0
    error: str = ""
    seconds: int = 0  # an async task's seconds of output (spec §9); 0 for requests


@dataclass(frozen=True, slots=True)
class LogRow:
    """One consume-log row: one per request that held funds."""

    id: int
    ts: float
    request_id: str
    user: str
    key_id: str
    source: str
    estimate: int
    charge: int
    overage: int
    price_version: str
    details: LogDetails


class Resolution(NamedTuple):
    """How a hold was resolved. `first` is False when this call was a repeat."""

    request_id: str
    state: HoldState
    charged: int
    overage: int
    first: bool


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What `weir audit` found. `ok` is True only when mismatches, orphans and stuck are
    empty (negatives are information). `stuck` lists open holds with no sign of life for
    longer than the audit's `stuck_after` (empty when it was not given)."""

    mismatches: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the ledger is consistent and no orphaned or stuck hold is left."""
        return not (self.mismatches or self.orphans or self.stuck)


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """What `Store.update_key` changes on a key; a field left None stays as it is.

    `quota` sets the key's remaining quota to that many units (a `credit` entry of the
    difference on the key's account; an unlimited key becomes limited); `unlimited` drops
    the key's own quota (refused while requests in flight hold some of it). `group` ""
    removes the key's group; `no_expiry` removes its expiry. A revoked key cannot change.
    """

    name: str | None = None
    status: str | None = None
    quota: int | None = None
    unlimited: bool = False
    models: tuple[str, ...] | None = None
    ips: tuple[str, ...] | None = None
    group: str | None = None
    expires_at: float | None = None
    no_expiry: bool = False


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ledger entry. `id` orders a user's entries (SQLite: the row id; Redis: the
    position in the user's ledger list, from 1). `actor` is who made a movement by hand
    (a top-up, an adjustment, a key quota set): the OS user for the CLI, "admin" for the
    admin API, "" for the system."""

    id: int
    ts: float
    account: str
    kind: str
    d_balance: int
    d_reserved: int
    request_id: str
    note: str
    actor: str


@dataclass(frozen=True, slots=True)
class LedgerPage:
    """Some of a user's ledger entries, newest first, read in one snapshot; `balance` is the
    wallet's balance right after the newest entry of the page."""

    balance: int
    entries: list[LedgerEntry]


@dataclass(frozen=True, slots=True)
class LogTotals:
    """Sums over the consume-log rows a filter matches. A refund is a row that held
    something and charged nothing (the hold was given back whole); `refunded` is what
    those rows had held."""

    requests: int = 0
    charged: int = 0
    overage: int = 0
    refunds: int = 0
    refunded: int = 0
