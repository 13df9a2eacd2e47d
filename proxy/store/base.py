"""The `Store` protocol: users, keys, plans, subscriptions and a two-phase-hold ledger.

Every amount is an integer number of quota units. The ledger is the truth: each movement
is an append-only entry with a signed `d_balance` and `d_reserved` on one account
(`wallet:<user>`, `key:<key id>`, `sub:<subscription id>`), and every stored running total
equals the sum over its entries. `audit()` proves it.

Entry kinds and their deltas (h = held amount, a = actual charge):

| kind    | d_balance | d_reserved | notes                                              |
|---------|-----------|------------|----------------------------------------------------|
| credit  | +x        | 0          | top-up / admin adjustment (x may be negative)      |
| hold    | 0         | +h         | on the funding source and on a limited key         |
| capture | -a        | -h         | a may exceed h; a subscription's overage spills    |
| release | 0         | -h         | the whole hold back                                |
| expire  | -c        | -h         | orphan resolution: c = last checkpoint (or 0)      |
| overage | -o        | 0          | on the wallet: the part a subscription could not pay|

For a subscription, "balance" is what is left in the current period: it is credited with
the plan's quota at each period start (a `credit` entry that the rollover writes), and
what was left of the previous period is written off by a `credit` of minus that amount,
so balance == sum(entries) holds across rollovers.

A hold is resolved exactly once (captured, released or expired); a repeated resolution is
a no-op that returns the first outcome with `first=False`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol


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
    """A paying user. `balance` is the wallet; `reserved` its open holds."""

    name: str
    group: str
    preference: Preference
    balance: int
    reserved: int
    used: int
    request_count: int
    created_at: float

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
    `used` is the total ever captured, `reserved` the open holds.
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


class Store(Protocol):
    """The accounting store. Every method is one atomic step against the backend.

    Implementations: `proxy.store.sqlite_store.SQLiteStore`,
    `proxy.store.redis_store.RedisStore`. All timestamps are epoch seconds from the
    store's clock (injectable for tests). Backend failures raise `StoreUnavailable`.
    """

    async def open(self) -> None:
        """Connect and run migrations. Raises StoreUnavailable naming the setting."""

    async def close(self) -> None:
        """Release connections."""

    async def ping(self) -> bool:
        """True when the backend answers."""

    # users ------------------------------------------------------------------
    async def create_user(
        self, name: str, group: str = "default", preference: Preference = Preference.SUBSCRIPTION_FIRST
    ) -> User:
        """Create a user with an empty wallet. StoreError if the name exists."""

    async def get_user(self, name: str) -> User | None:
        """The user, with current totals, or None."""

    async def list_users(self) -> list[User]:
        """Every user, by name."""

    async def credit(self, user: str, amount: int, note: str = "") -> User:
        """Add `amount` (may be negative: an adjustment) to the wallet, with a ledger entry."""

    async def set_user(
        self, name: str, *, group: str | None = None, preference: Preference | None = None
    ) -> User:
        """Change a user's group or billing preference."""

    # keys -------------------------------------------------------------------
    async def create_key(
        self,
        user: str,
        key_hash: str,
        *,
        name: str = "",
        quota: int | None = None,
        models: Sequence[str] = (),
        ips: Sequence[str] = (),
        group: str | None = None,
        expires_at: float | None = None,
        hint: str = "",
    ) -> ApiKey:
        """Record a key by its hash. `quota` None means unlimited."""

    async def get_key(self, key_id: str) -> ApiKey | None:
        """A key by its public id."""

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """A key by the SHA-256 hex of its clear text."""

    async def list_keys(self, user: str) -> list[ApiKey]:
        """A user's keys, oldest first."""

    async def set_key_status(self, key_id: str, status: str) -> ApiKey:
        """Set "active", "disabled" or "revoked"."""

    # plans and subscriptions -------------------------------------------------
    async def create_plan(self, plan: Plan) -> Plan:
        """Create or replace a plan."""

    async def get_plan(self, name: str) -> Plan | None:
        """A plan by name."""

    async def list_plans(self) -> list[Plan]:
        """Every plan."""

    async def grant_subscription(self, user: str, plan: str, start: float, end: float) -> Subscription:
        """Give `user` a subscription to `plan` from `start` to `end`."""

    async def list_subscriptions(self, user: str) -> list[Subscription]:
        """A user's subscriptions, rolled over to the current period."""

    # holds --------------------------------------------------------------------
    async def hold(
        self,
        request_id: str,
        user: str,
        key_id: str,
        amount: int,
        preference: Preference | None,
        price_version: str,
        ttl: float,
        instance_id: str,
        model: str = "",
    ) -> Hold | HoldRefusal:
        """Check and reserve in one atomic step.

        Checks the key's status and expiry, the key's available quota (limited keys),
        and the funding source's available balance, choosing the source by `preference`
        (the user's own when None), falling back to the other only on insufficient funds.
        A subscription is usable only while `start <= now < end` and, when its plan lists
        models, for a matching `model`. A zero or negative available balance refuses even
        a zero hold. A repeated `request_id` returns the existing hold.
        """

    async def checkpoint(self, request_id: str, charge_so_far: int) -> bool:
        """Record the charge delivered so far on an open hold, stamp its `touched_at` with
        now and move its `expires_at` to now plus its original ttl. False if not open."""

    async def capture(self, request_id: str, actual: int, log: LogDetails) -> Resolution:
        """Charge `actual`, release the rest, bump counters and append the log row, atomically.

        `actual` may exceed the hold. For a subscription, what its period cannot cover is
        charged to the wallet as an `overage` entry. Idempotent.
        """

    async def release(self, request_id: str, log: LogDetails) -> Resolution:
        """Give the whole hold back and append the log row (charge 0). Idempotent."""

    async def get_hold(self, request_id: str) -> Hold | None:
        """A hold in any state."""

    async def open_holds(self) -> list[Hold]:
        """Every unresolved hold."""

    # instances and orphans ---------------------------------------------------------
    async def heartbeat(self, instance_id: str) -> None:
        """Record that `instance_id` is alive now."""

    async def instances(self) -> dict[str, float]:
        """Every instance id that ever heartbeat, with its last heartbeat."""

    async def resolve_orphans(self, now: float, orphan_after: float) -> list[Resolution]:
        """Resolve open holds whose instance's heartbeat is older than `orphan_after`
        (or whose ttl passed): capture the last checkpoint (even above the hold) and
        release the rest; with no checkpoint release everything. Logged as `orphaned`."""

    # records -----------------------------------------------------------------------
    async def query_logs(
        self,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[LogRow]:
        """Consume-log rows, newest first; page with `before_id` (the last row's id)."""

    async def upstream_stats(self) -> dict[str, tuple[int, int]]:
        """Per upstream name: (used quota, request count)."""

    async def audit(self, now: float, orphan_after: float, *, stuck_after: float | None = None) -> AuditReport:
        """Recompute every total from the ledger and list mismatches, orphans, negatives;
        with `stuck_after`, also every open hold whose last sign of life (`touched_at`, else
        `created_at`) is older than `now - stuck_after` (see `stuck_line`)."""
