"""The store contract, part 2: plans, subscriptions, funding preferences, periods, overage."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from plugins.billing.store.base import (
    FundingSource,
    HoldRefusal,
    Plan,
    Preference,
    Refusal,
    StoreError,
    Subscription,
)

from .conftest import World

DAY = 86400.0
FAR = 10 * 365 * DAY


async def grant(
    world: World,
    quota: int,
    period: str = "day",
    *,
    user: str = "alice",
    start: float | None = None,
    length: float = FAR,
    models: tuple[str, ...] = (),
) -> Subscription:
    """A plan named after its terms, and a subscription to it."""
    name = f"p{quota}-{period}-{'-'.join(models)}"
    await world.store.create_plan(Plan(name, quota, period, models=models))
    begin = world.clock.now if start is None else start
    return await world.store.grant_subscription(user, name, begin, begin + length)


async def sub_now(world: World, sub_id: str) -> Subscription:
    """The subscription as the store sees it now (rolled over)."""
    [found] = [s for s in await world.store.list_subscriptions("alice") if s.id == sub_id]
    return found


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Epoch seconds of a UTC date-time."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


async def test_plans_and_grants(world: World) -> None:
    await world.user("alice")
    plan = await world.store.create_plan(Plan("pro", 500, "month", duration_days=30, models=("gpt-*",)))
    assert await world.store.get_plan("pro") == plan
    await world.store.create_plan(Plan("pro", 700, "week"))
    assert (await world.store.get_plan("pro")) == Plan("pro", 700, "week")
    assert [p.name for p in await world.store.list_plans()] == ["pro"]
    sub = await world.store.grant_subscription("alice", "pro", world.clock.now, world.clock.now + FAR)
    assert sub.id and (sub.quota, sub.period, sub.balance, sub.reserved, sub.used) == (700, "week", 700, 0, 0)
    assert sub.period_start == world.clock.now
    with pytest.raises(StoreError):
        await world.store.grant_subscription("alice", "nope", world.clock.now, world.clock.now + 1)
    with pytest.raises(StoreError):
        await world.store.grant_subscription("alice", "pro", world.clock.now, world.clock.now)
    with pytest.raises(StoreError):
        await world.store.create_plan(Plan("bad", 1, "fortnight"))


W, S = FundingSource.WALLET, FundingSource.SUBSCRIPTION
IW, IS = Refusal.INSUFFICIENT_WALLET, Refusal.INSUFFICIENT_SUBSCRIPTION


@pytest.mark.parametrize(
    ("preference", "wallet", "sub_quota", "amount", "expected"),
    [
        (Preference.SUBSCRIPTION_FIRST, 1000, 500, 300, S),
        (Preference.SUBSCRIPTION_FIRST, 1000, 100, 300, W),  # falls back on insufficient funds
        (Preference.SUBSCRIPTION_FIRST, 100, 200, 300, (IS, 200)),  # both short: first choice's reason
        (Preference.SUBSCRIPTION_FIRST, 0, None, 10, (IW, 0)),  # no subscription: the wallet decides
        (Preference.WALLET_FIRST, 1000, 500, 300, W),
        (Preference.WALLET_FIRST, 100, 500, 300, S),
        (Preference.WALLET_FIRST, 100, 200, 300, (IW, 100)),
        (Preference.WALLET_FIRST, 0, None, 10, (IW, 0)),
        (Preference.SUBSCRIPTION_ONLY, 1000, 500, 300, S),
        (Preference.SUBSCRIPTION_ONLY, 10_000, 100, 300, (IS, 100)),  # never the wallet
        (Preference.SUBSCRIPTION_ONLY, 10_000, None, 10, (IS, 0)),
        (Preference.WALLET_ONLY, 1000, 500, 300, W),
        (Preference.WALLET_ONLY, 0, 10_000, 10, (IW, 0)),  # never the subscription
    ],
)
async def test_funding_preference_and_fallback(
    world: World,
    preference: Preference,
    wallet: int,
    sub_quota: int | None,
    amount: int,
    expected: FundingSource | tuple[Refusal, int],
) -> None:
    key = await world.user("alice", wallet, preference=preference)
    sub = await grant(world, sub_quota) if sub_quota is not None else None
    result = await world.hold("r1", key, amount)
    if isinstance(expected, tuple):
        assert result == HoldRefusal(expected[0], expected[1], amount)
        return
    assert not isinstance(result, HoldRefusal), result
    assert result.source is expected
    assert result.subscription_id == (sub.id if expected is S and sub else None)
    user = await world.store.get_user("alice")
    assert user is not None and user.reserved == (amount if expected is W else 0)
    if sub is not None:
        assert (await sub_now(world, sub.id)).reserved == (amount if expected is S else 0)
    await world.capture("r1", amount)


async def test_preference_argument_overrides_the_users(world: World) -> None:
    key = await world.user("alice", 1000, preference=Preference.WALLET_ONLY)
    await grant(world, 500)
    held = await world.held("r1", key, 100, preference=Preference.SUBSCRIPTION_ONLY)
    assert held.source is FundingSource.SUBSCRIPTION
    await world.capture("r1", 100)


async def test_soonest_ending_subscription_that_affords_pays(world: World) -> None:
    key = await world.user("alice", 0)
    late = await grant(world, 1000, length=30 * DAY)
    soon = await grant(world, 100, length=10 * DAY)
    assert (await world.held("r1", key, 50)).subscription_id == soon.id
    assert (await world.held("r2", key, 80)).subscription_id == late.id  # soon has only 50 left
    await world.capture("r1", 50)
    await world.capture("r2", 80)
    assert ((await sub_now(world, soon.id)).used, (await sub_now(world, late.id)).used) == (50, 80)


async def test_subscription_only_usable_between_start_and_end(world: World) -> None:
    key = await world.user("alice", 1000)
    sub = await grant(world, 500, start=world.clock.now + 100, length=100)
    assert (await world.held("r1", key, 10)).source is FundingSource.WALLET
    await world.tick(100)
    assert (await world.held("r2", key, 10)).subscription_id == sub.id
    await world.tick(100)  # now == end: no longer active
    assert (await world.held("r3", key, 10)).source is FundingSource.WALLET
    for rid in ("r1", "r2", "r3"):
        await world.capture(rid, 10)


async def test_plan_models_restrict_the_subscription(world: World) -> None:
    key = await world.user("alice", 1000)
    sub = await grant(world, 500, models=("claude-*",))
    assert (await world.held("r1", key, 10, model="gpt-4o")).source is FundingSource.WALLET
    assert (await world.held("r2", key, 10, model="claude-sonnet-4-5")).subscription_id == sub.id
    await world.capture("r1", 10)
    await world.capture("r2", 10)


@pytest.mark.parametrize(("period", "length"), [("day", DAY), ("week", 7 * DAY)])
async def test_fixed_periods_roll_over(world: World, period: str, length: float) -> None:
    key = await world.user("alice", 0)
    sub = await grant(world, 1000, period)
    await world.held("r1", key, 300)
    await world.capture("r1", 300)
    await world.tick(length - 1)
    assert (await sub_now(world, sub.id)).balance == 700
    await world.tick(1)
    rolled = await sub_now(world, sub.id)
    assert (rolled.balance, rolled.used, rolled.period_start) == (1000, 300, sub.start + length)
    await world.tick(2.5 * length)  # skipped periods: straight to the current one
    assert (await sub_now(world, sub.id)).period_start == sub.start + 3 * length
    await world.held("r2", key, 1000)
    await world.capture("r2", 1000)


@pytest.mark.parametrize(
    ("start", "before", "at"),
    [
        (utc(2024, 1, 31, 12), utc(2024, 2, 29, 11, 59, 59), utc(2024, 2, 29, 12)),  # clamped, leap year
        (utc(2024, 1, 15), utc(2024, 2, 14, 23, 59), utc(2024, 2, 15)),
        (utc(2023, 12, 31), utc(2024, 1, 30), utc(2024, 1, 31)),
    ],
)
async def test_month_period_counts_calendar_months_from_start(
    world: World, start: float, before: float, at: float
) -> None:
    world.clock.now = start
    await world.store.heartbeat("i1")
    key = await world.user("alice", 0)
    sub = await grant(world, 1000, "month")
    await world.held("r1", key, 400)
    await world.capture("r1", 400)
    await world.tick(before - world.clock.now)
    assert (await sub_now(world, sub.id)).balance == 600
    await world.tick(at - world.clock.now)
    rolled = await sub_now(world, sub.id)
    assert (rolled.balance, rolled.period_start) == (1000, at)


async def test_month_after_a_clamped_month_returns_to_the_start_day(world: World) -> None:
    world.clock.now = utc(2024, 1, 31)
    await world.store.heartbeat("i1")
    await world.user("alice", 0)
    sub = await grant(world, 1000, "month")
    await world.tick(utc(2024, 3, 31) - world.clock.now)
    assert (await sub_now(world, sub.id)).period_start == utc(2024, 3, 31)


@pytest.mark.parametrize(
    ("start", "month_days"),
    [
        (1_760_000_000.123456789, 31),  # 2025-10-09 08:53:20.1234567: rounds up to .123457
        (1_760_000_000.1234565, 31),  # rounds down to .123456
        (1_709_164_799.9999997, 29),  # 2024-02-28 23:59:59.9999998: rounds to the leap day
    ],
)
async def test_month_with_a_sub_microsecond_start_keeps_its_first_period(
    world: World, start: float, month_days: int
) -> None:
    # A `time.time()` start is rarely a whole microsecond; the first period must still begin
    # at exactly `start`, so what was used stays used until the same time next month.
    world.clock.now = start
    await world.store.heartbeat("i1")
    key = await world.user("alice", 0)
    sub = await grant(world, 1000, "month")
    assert sub.period_start == start
    await world.held("r1", key, 600)
    await world.capture("r1", 600)
    boundary = start + month_days * DAY
    for later in (3600.0, 10 * DAY, month_days * DAY - 0.001):
        await world.tick(start + later - world.clock.now)
        assert (await sub_now(world, sub.id)).balance == 400, f"{later} s after the start"
    await world.tick(boundary - world.clock.now)
    rolled = await sub_now(world, sub.id)
    assert (rolled.balance, rolled.period_start) == (1000, boundary)
    await world.tick(3600)
    assert (await sub_now(world, sub.id)).period_start == boundary


async def test_period_none_never_resets(world: World) -> None:
    key = await world.user("alice", 0)
    sub = await grant(world, 1000, "none")
    await world.held("r1", key, 600)
    await world.capture("r1", 600)
    await world.tick(400 * DAY)
    assert (await sub_now(world, sub.id)).balance == 400
    refused = await world.hold("r2", key, 500)
    assert isinstance(refused, HoldRefusal) and refused.available == 400


async def test_open_hold_survives_a_rollover_and_charges_the_new_period(world: World) -> None:
    key = await world.user("alice", 0)
    sub = await grant(world, 1000, "day")
    await world.held("r1", key, 400)
    await world.tick(DAY)
    rolled = await sub_now(world, sub.id)
    assert (rolled.balance, rolled.reserved) == (1000, 400)
    await world.capture("r1", 300)
    after = await sub_now(world, sub.id)
    assert (after.balance, after.reserved, after.used) == (700, 0, 300)


async def test_overage_spills_to_the_wallet_with_an_entry(world: World) -> None:
    key = await world.user("alice", 0)
    sub = await grant(world, 100)
    await world.held("r1", key, 100)
    res = await world.capture("r1", 250)
    assert (res.charged, res.overage) == (250, 150)
    user = await world.store.get_user("alice")
    assert user is not None and (user.balance, user.used) == (-150, 250)
    spent = await sub_now(world, sub.id)
    assert (spent.balance, spent.used) == (0, 100)
    [row] = await world.store.query_logs()
    assert (row.charge, row.overage, row.source) == (250, 150, "subscription")
    report = await world.store.audit(world.clock.now, 30)
    assert report.ok and report.negatives and "-150" in report.negatives[0]


async def test_overage_counts_what_other_captures_left(world: World) -> None:
    key = await world.user("alice", 1000)
    sub = await grant(world, 100)
    await world.held("r1", key, 50)
    await world.held("r2", key, 50)
    assert (await world.capture("r1", 90)).overage == 0
    assert (await world.capture("r2", 50)).overage == 40
    assert (await world.store.get_user("alice")).balance == 960  # type: ignore[union-attr]
    assert (await sub_now(world, sub.id)).balance == 0


async def test_capture_after_the_subscription_ended(world: World) -> None:
    key = await world.user("alice", 1000)
    sub = await grant(world, 100, length=10)
    await world.held("r1", key, 80)
    await world.tick(20)
    res = await world.capture("r1", 150)
    assert (res.charged, res.overage) == (150, 50)
    assert (await sub_now(world, sub.id)).balance == 0
