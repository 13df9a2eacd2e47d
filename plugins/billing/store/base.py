"""The `Store` protocol: users, keys, plans, subscriptions and a two-phase-hold ledger.

Every amount is an integer number of quota units. The ledger is the truth: each movement
is an append-only entry with a signed `d_balance` and `d_reserved` on one account
(`wallet:<user>`, `key:<key id>`, `sub:<subscription id>`), and every stored running total
equals the sum over its entries. `audit()` proves it.

Entry kinds and their deltas (h = held amount, a = actual charge):

| kind    | d_balance | d_reserved | notes                                              |
|---------|-----------|------------|----------------------------------------------------|
| credit  | +x        | 0          | top-up / admin adjustment (x may be negative); a   |
|         |           |            | hand movement records its `actor` (who)            |
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
from typing import Protocol

from plugins.billing.store.prices import PriceConflict, PriceStore, PriceVersion
from plugins.billing.store.records import (
    ApiKey,
    AuditReport,
    FundingSource,
    Hold,
    HoldRefusal,
    HoldState,
    KeyChanges,
    LedgerEntry,
    LedgerPage,
    LogDetails,
    LogRow,
    LogTotals,
    Plan,
    Preference,
    Refusal,
    Resolution,
    StoreError,
    StoreUnavailable,
    Subscription,
    User,
)
from plugins.billing.store.tasks import TaskStore

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
    "PriceConflict",
    "PriceStore",
    "PriceVersion",
    "KeyChanges",
    "LedgerEntry",
    "LedgerPage",
    "LogTotals",
    "Store",
]


class Store(PriceStore, TaskStore, Protocol):
    """The accounting store. Every method is one atomic step against the backend.

    The price versions (`PriceStore`, `plugins.billing.store.prices`) and the async tasks
    (`TaskStore`, `plugins.billing.store.tasks`) are part of it.

    Implementations: `plugins.billing.store.sqlite.store.SQLiteStore`,
    `plugins.billing.store.redis.store.RedisStore`. All timestamps are epoch seconds from the
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

    async def credit(self, user: str, amount: int, note: str = "", *, actor: str = "") -> User:
        """Add `amount` (may be negative: an adjustment) to the wallet, with a ledger entry
        that records `note` and who made it (`actor`)."""

    async def set_user(
        self,
        name: str,
        *,
        group: str | None = None,
        preference: Preference | None = None,
        disabled: bool | None = None,
    ) -> User:
        """Change a user's group, billing preference or disabled flag (None keeps it)."""

    async def ledger_entries(
        self, user: str, *, limit: int = 50, before_id: int | None = None, everything: bool = False
    ) -> LedgerPage:
        """The user's wallet entries that moved its balance (credits, charges, overages),
        newest first, below `before_id`; with `everything`, every entry of every account of
        the user (holds and releases, its keys and subscriptions too). StoreError for an
        unknown user."""

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

    async def update_key(self, key_id: str, changes: KeyChanges, *, actor: str = "") -> ApiKey:
        """Apply `changes` (see KeyChanges) in one atomic step; a quota change is a `credit`
        entry on the key's account recording `actor`. StoreError for an unknown or revoked
        key, or for `unlimited` while requests in flight hold some of the key's quota."""

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

    async def get_subscription(self, sub_id: str) -> Subscription | None:
        """A subscription by id, as stored (not rolled over), or None."""

    async def cancel_subscription(self, sub_id: str) -> Subscription:
        """End a subscription now: roll it to its current period, then set `end` and
        `cancelled_at` to now (to its start, if it has not started), in one atomic step. No
        new hold draws on it; holds already open settle on it as usual; what its period had
        left stays on it, unused. StoreError if unknown, cancelled or ended already."""

    async def delete_plan(self, name: str) -> None:
        """Delete a plan. StoreError if unknown, or while a subscription to it has not ended
        (existing subscriptions keep their own copy of the terms, but a plan people are
        subscribed to is kept so that the listing still explains them)."""

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
        *,
        key_id: str | None = None,
        model: str | None = None,
        end_reason: str | None = None,
    ) -> list[LogRow]:
        """Consume-log rows, newest first, `since <= ts < until`; page with `before_id` (the
        last row's id). `model` is a glob on the requested model."""

    async def log_totals(
        self,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        *,
        key_id: str | None = None,
        model: str | None = None,
        end_reason: str | None = None,
    ) -> LogTotals:
        """Sums over every consume-log row the filters match (as `query_logs`, unpaged)."""

    async def upstream_stats(self) -> dict[str, tuple[int, int]]:
        """Per upstream name: (used quota, request count)."""

    async def audit(self, now: float, orphan_after: float, *, stuck_after: float | None = None) -> AuditReport:
        """Recompute every total from the ledger and list mismatches, orphans, negatives;
        with `stuck_after`, also every open hold whose last sign of life (`touched_at`, else
        `created_at`) is older than `now - stuck_after` (see `stuck_line`)."""
