"""Backend-neutral billing rules shared by every store: pure functions, no I/O.

Both backends must make the same decisions, so the decisions live here and the backends only
move numbers. The rules, in one place:

- **Key checks** come first: unknown key (or a key of another user) → `UNKNOWN_KEY`; status
  "disabled" or "revoked" → `KEY_DISABLED`; `expires_at <= now` → `KEY_EXPIRED`; a limited key
  whose available quota cannot cover the amount → `INSUFFICIENT_KEY_QUOTA`.
- **Affording**: a source affords `amount` when its available balance is positive *and* at least
  `amount`. A zero or negative available balance refuses even a zero hold.
- **Funding choice**: sources are tried in the preference's order; the second one only when the
  first cannot afford the amount; `*_only` preferences have one source. A subscription source
  *exists* for a request only when the user has a subscription that is active
  (`start <= now < end`) and allows the model. When no source affords the amount, the refusal
  names the first source in the order that exists; so a `subscription_first` user without any
  usable subscription is refused with `INSUFFICIENT_WALLET` (the wallet was the only real
  candidate), while `subscription_only` without one is refused with `INSUFFICIENT_SUBSCRIPTION`
  and `available` 0.
- **Which subscription**: among usable ones, the one ending soonest that affords the amount
  (ties broken by id).
- **Periods**: `day` = 86 400 s and `week` = 7 days counted from `start`; `month` = calendar
  months counted from `start` in UTC (a start on the 31st falls on the last day of shorter
  months); `none` = one period for the whole subscription.
- **Settlement** (the capture rule, `settlement`: what resolving a hold writes, defined here
  once): a subscription pays what is left of its period balance; the rest is the overage,
  charged to the wallet. A wallet pays everything.
- **Request counts** (user, key and upstream): a capture counts; an orphan expiry counts only
  when it captured a checkpoint; a release never counts (and charges nothing).
- **Hand resolutions** (`weir holds resolve`): an ordinary capture or release whose log
  details say `end_reason` `resolved_by_hand` and carry the operator's note in `error`; the
  funding source's ledger entry carries the note too (`ledger_note`).
- **Stuck holds**: an open hold whose last sign of life (its last checkpoint, else its
  creation) is older than the audit's `stuck_after` (`stuck_line` describes one).
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from fnmatch import fnmatchcase

from plugins.billing.store.base import FundingSource, Hold, HoldRefusal, HoldState, LogDetails, Preference, Refusal

DAY = 86400.0
WEEK = 7 * DAY
PERIODS = ("day", "week", "month", "none")
KEY_STATUSES = ("active", "disabled", "revoked")
HAND_RESOLVED = "resolved_by_hand"
"""The `end_reason` of a hold resolved by an operator (`weir holds resolve`)."""


def validate_period(period: str) -> None:
    """Raise ValueError unless `period` is one of day, week, month, none."""
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}: expected one of {', '.join(PERIODS)}")


_EPOCH = date(1970, 1, 1)


def _utc_date(t: float) -> tuple[date, int]:
    """The UTC calendar date of `t` and its whole-day number since the epoch.

    `divmod` by a whole day is exact for any float time, unlike `datetime.fromtimestamp`,
    which rounds to the microsecond and so can even land on the next day.
    """
    days = int(divmod(t, DAY)[0])
    return _EPOCH + timedelta(days=days), days


def add_months(start: float, months: int) -> float:
    """`start` moved `months` calendar months later (UTC), clamped to the month's last day.

    The result is `start` plus a whole number of days (UTC has no DST, so the time of day is
    the same), which keeps `start`'s fractional seconds exactly: `add_months(s, 0) == s`.
    Going through `datetime` instead would round to the microsecond, and a subscription
    granted at `start = time.time()` would then see a "new period" later in its first month.
    """
    if months == 0:
        return start
    base, base_days = _utc_date(start)
    years, month0 = divmod(base.month - 1 + months, 12)
    year = base.year + years
    day = min(base.day, calendar.monthrange(year, month0 + 1)[1])
    offset = date(year, month0 + 1, day).toordinal() - _EPOCH.toordinal() - base_days
    return start + offset * DAY


def period_start(start: float, period: str, now: float) -> float:
    """The start of the period containing `now` for a subscription that began at `start`.

    Every boundary is `start` plus whole days, so the first period starts exactly at `start`
    and a boundary compares equal however often it is recomputed.
    """
    validate_period(period)
    if now <= start or period == "none":
        return start
    if period in ("day", "week"):
        step = DAY if period == "day" else WEEK
        count = int((now - start) // step)
        # Settle the count on the boundaries as they are computed (a sum can round when it
        # crosses a power of two), so a boundary always lies inside its own period.
        while count > 0 and start + count * step > now:
            count -= 1
        while start + (count + 1) * step <= now:
            count += 1
        return start + count * step
    base, _ = _utc_date(start)
    current, _ = _utc_date(now)
    months = (current.year - base.year) * 12 + (current.month - base.month)
    # The calendar estimate is exact or one too many (when `now` is earlier in its month
    # than `start` was in its own); the loops settle it either way.
    while months > 0 and add_months(start, months) > now:
        months -= 1
    while add_months(start, months + 1) <= now:
        months += 1
    return add_months(start, months)


def is_active(start: float, end: float, now: float) -> bool:
    """A subscription is usable while `start <= now < end`."""
    return start <= now < end


def model_allowed(patterns: Sequence[str], model: str) -> bool:
    """True when `patterns` is empty or one of its globs matches `model`."""
    return not patterns or any(fnmatchcase(model, p) for p in patterns)


def affords(available: int, amount: int) -> bool:
    """A source can take a hold of `amount` only with a positive available balance covering it."""
    return available > 0 and available >= amount


def key_refusal(status: str, expires_at: float | None, now: float) -> Refusal | None:
    """Why a key may not be used now, or None when it may."""
    if status != "active":
        return Refusal.KEY_DISABLED
    if expires_at is not None and expires_at <= now:
        return Refusal.KEY_EXPIRED
    return None


@dataclass(frozen=True, slots=True)
class SubOffer:
    """A usable subscription as the funding choice sees it."""

    id: str
    end: float
    available: int


@dataclass(frozen=True, slots=True)
class FundingChoice:
    """The source a hold draws on; `subscription_id` is set for a subscription."""

    source: FundingSource
    subscription_id: str | None = None


_ORDERS = {
    Preference.SUBSCRIPTION_FIRST: (FundingSource.SUBSCRIPTION, FundingSource.WALLET),
    Preference.WALLET_FIRST: (FundingSource.WALLET, FundingSource.SUBSCRIPTION),
    Preference.SUBSCRIPTION_ONLY: (FundingSource.SUBSCRIPTION,),
    Preference.WALLET_ONLY: (FundingSource.WALLET,),
}
_WALLET_CHOICE = FundingChoice(FundingSource.WALLET)


def pick_subscription(offers: Sequence[SubOffer], amount: int) -> SubOffer | None:
    """The usable subscription ending soonest that affords `amount`, or None."""
    for offer in sorted(offers, key=lambda o: (o.end, o.id)):
        if affords(offer.available, amount):
            return offer
    return None


def choose_funding(
    preference: Preference, wallet_available: int, offers: Sequence[SubOffer], amount: int
) -> FundingChoice | HoldRefusal:
    """Apply the preference order and the fallback rule (see the module docstring)."""
    refusal: HoldRefusal | None = None
    for source in _ORDERS[preference]:
        if source is FundingSource.WALLET:
            if affords(wallet_available, amount):
                return _WALLET_CHOICE  # immutable: one instance serves every hold
            refusal = refusal or HoldRefusal(Refusal.INSUFFICIENT_WALLET, wallet_available, amount)
            continue
        if not offers:
            continue
        offer = pick_subscription(offers, amount)
        if offer is not None:
            return FundingChoice(source, offer.id)
        best = max(o.available for o in offers)
        refusal = refusal or HoldRefusal(Refusal.INSUFFICIENT_SUBSCRIPTION, best, amount)
    return refusal or HoldRefusal(Refusal.INSUFFICIENT_SUBSCRIPTION, 0, amount)


def split_charge(source: FundingSource, charge: int, sub_balance: int) -> tuple[int, int]:
    """(paid by the funding source, overage for the wallet) for a settlement of `charge`."""
    if source is FundingSource.WALLET:
        return charge, 0
    paid = min(charge, max(sub_balance, 0))
    return paid, charge - paid


# Enum members as module constants: `HoldState.CAPTURED` is a class attribute lookup through
# the enum's metaclass, which costs more than the rest of a hot-path test.
_CAPTURED, _EXPIRED, _WALLET = HoldState.CAPTURED, HoldState.EXPIRED, FundingSource.WALLET


def counts_as_request(state: HoldState, checkpoint: int | None) -> bool:
    """Whether a resolution bumps the request counters."""
    if state is _CAPTURED:
        return True
    return state is _EXPIRED and checkpoint is not None


def account(kind: str, ident: str) -> str:
    """A ledger account name: `wallet:<user>`, `key:<key id>` or `sub:<subscription id>`."""
    return f"{kind}:{ident}"


def ledger_note(log: LogDetails) -> str:
    """The note on a resolution's funding-source ledger entry: the operator's note for a
    hand resolution, none for any other."""
    return f"resolved by hand: {log.error}" if log.end_reason == HAND_RESOLVED else ""


SETTLE_KINDS = {HoldState.CAPTURED: "capture", HoldState.RELEASED: "release", HoldState.EXPIRED: "expire"}
"""The ledger entry kind of each resolution."""


Entry = tuple[str, str, str, int, int, str]
"""One ledger entry: (owner, ident, kind, d_balance, d_reserved, note), on account
`owner:ident` (owner: wallet, sub or key)."""

Settlement = tuple[HoldState, int, int, int, int, str, tuple[Entry, ...]]
"""What resolving one open hold writes (see `settlement`): (state, charge, overage,
counted, sub_used, upstream, entries). `counted` is 1 when the user's and the key's
`request_count` grow by one; `sub_used` what the subscription paid (its `used` grows by
it); `upstream` the upstream whose counters grow by (charge, 1), empty for none; `entries`
the ledger entries in the order they are written, the funding source's first."""
# Plain tuples, not named tuples or dataclasses: a settlement makes up to four per capture
# on the store's hot path, and making a named tuple costs about as much as the rest of the
# rule (~2k instructions each under callgrind, against ~100 for a tuple).


def settlement(
    held: Hold, state: HoldState, charge: int, log: LogDetails, *, key_limited: bool, sub_balance: int = 0
) -> Settlement:
    """The capture rule: what resolving the open hold `held` as `state` with `charge` writes.
    Of the hold it reads the user, key, source, subscription, amounts and checkpoint.

    Defined once, here. SQLite writes it as it is (`sqlite.ledger.settle`, and
    `sqlite.group_commit.resolve_many` for a batch); Redis encodes the same rule in
    `redis/lua/settle.lib.lua`, which cannot call Python. tests/plugins/billing/store/test_capture_rule.py
    runs one table of cases against this function and every store.

    - The funding source's entry (kind capture, release or expire) frees the whole hold
      (`-amount` reserved) and takes what the source pays: a wallet pays the charge; a
      subscription pays what is left of its period balance (`sub_balance`, after any
      period roll) and the rest, the overage, is a second entry on the wallet (kind
      `overage`, nothing reserved, a note naming the subscription). A hand resolution's
      funding entry carries the operator's note.
    - A key with a quota (`key_limited`) has its own account: an entry takes the charge
      and frees `key_amount`.
    - Counters: the user's and the key's `used` grow by the charge and their
      `request_count` by `counted`; the subscription's `used` by what it paid; a capture
      that names an upstream adds (charge, 1) to that upstream's counters.
    - The hold records (state, charge, overage); the consume-log row the hold's amount as
      its estimate, and the charge and overage.
    - A resolution that does not count charges nothing (a release, an expiry without a
      checkpoint): asking otherwise is a ValueError.
    """
    counted = 1 if counts_as_request(state, held.checkpoint) else 0
    if charge and not counted:
        raise ValueError(f"a {state.value} hold that does not count cannot charge {charge}")
    kind = "capture" if state is _CAPTURED else SETTLE_KINDS[state]  # an enum hashes in Python: skip it
    note = "" if log.end_reason != HAND_RESOLVED else ledger_note(log)  # a call only when there is a note
    upstream = log.upstream if state is _CAPTURED else ""
    key: tuple[Entry, ...] = (("key", held.key_id, kind, -charge, -held.key_amount, ""),) if key_limited else ()
    if held.source is _WALLET:
        return state, charge, 0, counted, 0, upstream, (("wallet", held.user, kind, -charge, -held.amount, note),) + key
    sub_id = held.subscription_id or ""
    paid, overage = split_charge(held.source, charge, sub_balance)
    entries: tuple[Entry, ...] = (("sub", sub_id, kind, -paid, -held.amount, note),)
    if overage:
        cover = f"subscription {sub_id} could not cover {overage}"
        entries += (("wallet", held.user, "overage", -overage, 0, cover),)
    return state, charge, overage, counted, paid, upstream, entries + key


def is_stuck(hold: Hold, now: float, stuck_after: float | None) -> bool:
    """Whether an open hold has shown no sign of life for longer than `stuck_after`."""
    return stuck_after is not None and hold.last_sign_of_life < now - stuck_after


def stuck_line(hold: Hold, now: float, last_seen: float | None) -> str:
    """One audit line for a stuck hold; `last_seen` is its instance's last heartbeat."""
    checkpoint = "none" if hold.checkpoint is None else str(hold.checkpoint)
    touched = "never checkpointed" if hold.touched_at is None else f"last checkpoint {now - hold.touched_at:.0f}s ago"
    beat = "never seen" if last_seen is None else f"last seen {now - last_seen:.0f}s ago"
    return (
        f"hold {hold.request_id} (user {hold.user}, key {hold.key_id}) amount {hold.amount}, checkpoint"
        f" {checkpoint}: open for {now - hold.created_at:.0f}s, {touched}; instance {hold.instance_id} {beat}"
    )
