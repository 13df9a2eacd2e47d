"""The store contract, part 1: users, keys, holds, captures, releases, checkpoints, records.

Runs on every backend (see conftest). Subscriptions and funding preferences are in
`test_funding.py`, orphans in `test_orphans.py`.
"""

from __future__ import annotations

import pytest

from plugins.billing.store.base import (
    FundingSource,
    Hold,
    HoldRefusal,
    HoldState,
    LogDetails,
    Preference,
    Refusal,
    Store,
    StoreError,
    StoreUnavailable,
)

from .conftest import DONE, Backend, FakeClock, World

# users -------------------------------------------------------------------------------------


async def test_users_are_created_listed_and_changed(store: Store, clock: FakeClock) -> None:
    bob = await store.create_user("bob", group="vip", preference=Preference.WALLET_FIRST)
    await store.create_user("alice")
    assert (bob.name, bob.group, bob.preference, bob.balance, bob.reserved) == (
        "bob",
        "vip",
        Preference.WALLET_FIRST,
        0,
        0,
    )
    assert bob.created_at == clock.now
    assert [u.name for u in await store.list_users()] == ["alice", "bob"]
    changed = await store.set_user("bob", group="default", preference=Preference.WALLET_ONLY)
    assert (changed.group, changed.preference) == ("default", Preference.WALLET_ONLY)
    assert await store.get_user("bob") == changed
    assert await store.get_user("nobody") is None
    with pytest.raises(StoreError):
        await store.create_user("bob")


async def test_credit_adds_and_adjusts_the_wallet(store: Store) -> None:
    await store.create_user("alice")
    assert (await store.credit("alice", 1000, "top-up")).balance == 1000
    assert (await store.credit("alice", -300, "refund")).balance == 700
    with pytest.raises(StoreError):
        await store.credit("nobody", 5)


async def test_ping_and_unreachable_backend(store: Store, backend: Backend) -> None:
    assert await store.ping()
    with pytest.raises(StoreUnavailable):
        await backend.broken().open()


# keys ----------------------------------------------------------------------------------------


async def test_keys_are_found_by_hash_and_listed_oldest_first(world: World) -> None:
    store = world.store
    await store.create_user("alice")
    first = await store.create_key(
        "alice",
        "a" * 64,
        name="laptop",
        quota=500,
        models=["gpt-*"],
        ips=["10.0.0.0/8"],
        group="vip",
        expires_at=world.clock.now + 99,
        hint="wk-ab…cd",
    )
    world.clock.advance(1)
    second = await store.create_key("alice", "b" * 64)
    assert first.id and second.id and first.id != second.id
    assert (first.quota, first.balance, first.reserved, first.models, first.ips, first.group, first.hint) == (
        500,
        500,
        0,
        ("gpt-*",),
        ("10.0.0.0/8",),
        "vip",
        "wk-ab…cd",
    )
    assert second.unlimited and not first.unlimited
    assert await store.find_key("a" * 64) == first
    assert await store.get_key(second.id) == second
    assert await store.find_key("c" * 64) is None
    assert [k.id for k in await store.list_keys("alice")] == [first.id, second.id]
    with pytest.raises(StoreError):
        await store.create_key("alice", "a" * 64)
    with pytest.raises(StoreError):
        await store.create_key("nobody", "d" * 64)


async def test_unknown_or_foreign_key_is_refused(world: World) -> None:
    alice = await world.user("alice", 1000)
    await world.user("bob", 1000)
    refused = await world.store.hold("r1", "bob", alice.id, 10, None, "pv1", 60, "i1")
    assert isinstance(refused, HoldRefusal) and refused.reason is Refusal.UNKNOWN_KEY
    refused = await world.store.hold("r2", "alice", "k_nothere", 10, None, "pv1", 60, "i1")
    assert isinstance(refused, HoldRefusal) and refused.reason is Refusal.UNKNOWN_KEY
    assert (await world.store.get_user("alice")).reserved == 0  # type: ignore[union-attr]


async def test_disabled_key_is_refused_until_enabled(world: World) -> None:
    key = await world.user("alice", 1000)
    assert (await world.store.set_key_status(key.id, "disabled")).status == "disabled"
    refused = await world.hold("r1", key, 10)
    assert isinstance(refused, HoldRefusal) and refused.reason is Refusal.KEY_DISABLED
    await world.store.set_key_status(key.id, "active")
    assert isinstance(await world.hold("r2", key, 10), Hold)
    await world.capture("r2", 10)


async def test_revoked_key_is_refused_for_good(world: World) -> None:
    key = await world.user("alice", 1000)
    await world.store.set_key_status(key.id, "revoked")
    refused = await world.hold("r1", key, 10)
    assert isinstance(refused, HoldRefusal) and refused.reason is Refusal.KEY_DISABLED
    with pytest.raises(StoreError):
        await world.store.set_key_status(key.id, "active")
    with pytest.raises(StoreError):
        await world.store.set_key_status(key.id, "bogus")


async def test_key_expires_at_its_expiry_time(world: World) -> None:
    key = await world.user("alice", 1000, expires_at=world.clock.now + 100)
    await world.held("r1", key, 10)
    await world.capture("r1", 10)
    world.clock.advance(100)
    refused = await world.hold("r2", key, 10)
    assert isinstance(refused, HoldRefusal) and refused.reason is Refusal.KEY_EXPIRED
    assert (await world.store.get_user("alice")).balance == 990  # type: ignore[union-attr]


async def test_limited_key_quota_is_held_and_settled_with_the_wallet(world: World) -> None:
    key = await world.user("alice", 10_000, quota=300)
    held = await world.held("r1", key, 200)
    assert held.key_amount == 200
    refused = await world.hold("r2", key, 101)
    assert refused == HoldRefusal(Refusal.INSUFFICIENT_KEY_QUOTA, 100, 101)
    await world.capture("r1", 250)  # above the hold: the key pays the whole charge
    after = await world.store.get_key(key.id)
    assert after is not None and (after.balance, after.reserved, after.used, after.request_count) == (50, 0, 250, 1)
    await world.held("r3", key, 50)
    await world.capture("r3", 80)
    spent = await world.store.get_key(key.id)
    assert spent is not None and spent.balance == -30
    refused = await world.hold("r4", key, 0)
    assert isinstance(refused, HoldRefusal) and refused.reason is Refusal.INSUFFICIENT_KEY_QUOTA


async def test_unlimited_key_holds_nothing_on_the_key(world: World) -> None:
    key = await world.user("alice", 1000)
    held = await world.held("r1", key, 400)
    assert held.key_amount == 0
    assert (await world.store.get_key(key.id)).reserved == 0  # type: ignore[union-attr]
    await world.capture("r1", 300)
    used = await world.store.get_key(key.id)
    assert used is not None and (used.used, used.request_count, used.balance) == (300, 1, 0)


# holds ---------------------------------------------------------------------------------------


async def test_hold_reserves_exactly_and_refusal_reserves_nothing(world: World) -> None:
    key = await world.user("alice", 1000)
    held = await world.held("r1", key, 600, ttl=120)
    assert (held.source, held.subscription_id, held.state, held.amount) == (
        FundingSource.WALLET,
        None,
        HoldState.OPEN,
        600,
    )
    assert (held.created_at, held.expires_at, held.instance_id, held.price_version) == (
        world.clock.now,
        world.clock.now + 120,
        "i1",
        "pv1",
    )
    user = await world.store.get_user("alice")
    assert user is not None and (user.balance, user.reserved, user.available) == (1000, 600, 400)
    assert await world.hold("r2", key, 401) == HoldRefusal(Refusal.INSUFFICIENT_WALLET, 400, 401)
    assert (await world.store.get_user("alice")).reserved == 600  # type: ignore[union-attr]
    await world.held("r3", key, 400)  # exactly the available amount
    assert await world.hold("r4", key, 0) == HoldRefusal(Refusal.INSUFFICIENT_WALLET, 0, 0)
    assert {h.request_id for h in await world.store.open_holds()} == {"r1", "r3"}
    await world.capture("r1", 600)
    await world.store.release("r3", DONE)
    assert await world.store.open_holds() == []


async def test_zero_hold_needs_a_positive_balance(world: World) -> None:
    key = await world.user("alice", 1)
    assert isinstance(await world.hold("r1", key, 0), Hold)
    await world.capture("r1", 5)  # a real usage above a zero estimate: balance -4
    assert await world.hold("r2", key, 0) == HoldRefusal(Refusal.INSUFFICIENT_WALLET, -4, 0)
    with pytest.raises(StoreError):
        await world.hold("r3", key, -1)


async def test_repeated_request_id_returns_the_existing_hold(world: World) -> None:
    key = await world.user("alice", 1000)
    first = await world.held("r1", key, 100)
    again = await world.hold("r1", key, 700)
    assert again == first
    assert (await world.store.get_user("alice")).reserved == 100  # type: ignore[union-attr]
    await world.capture("r1", 100)
    resolved = await world.hold("r1", key, 100)
    assert isinstance(resolved, Hold) and resolved.state is HoldState.CAPTURED
    assert (await world.store.get_user("alice")).reserved == 0  # type: ignore[union-attr]


# capture, release, checkpoint ---------------------------------------------------------------------


async def test_capture_charges_actual_bumps_counters_and_logs(world: World) -> None:
    key = await world.user("alice", 1000)
    await world.held("r1", key, 300)
    res = await world.capture("r1", 218, upstream="openai")
    assert (res.state, res.charged, res.overage, res.first) == (HoldState.CAPTURED, 218, 0, True)
    user = await world.store.get_user("alice")
    assert user is not None and (user.balance, user.reserved, user.used, user.request_count) == (782, 0, 218, 1)
    assert await world.store.upstream_stats() == {"openai": (218, 1)}
    [row] = await world.store.query_logs()
    assert (
        row.request_id,
        row.user,
        row.key_id,
        row.source,
        row.estimate,
        row.charge,
        row.overage,
        row.price_version,
    ) == ("r1", "alice", key.id, "wallet", 300, 218, 0, "pv1")
    hold = await world.store.get_hold("r1")
    assert hold is not None and hold.state is HoldState.CAPTURED


async def test_capture_above_the_hold_may_take_the_wallet_negative(world: World) -> None:
    key = await world.user("alice", 100)
    await world.held("r1", key, 100)
    res = await world.capture("r1", 130)
    assert (res.charged, res.overage) == (130, 0)
    assert (await world.store.get_user("alice")).balance == -30  # type: ignore[union-attr]
    report = await world.store.audit(world.clock.now, 30)
    assert report.ok and len(report.negatives) == 1 and "wallet:alice" in report.negatives[0]
    refused = await world.hold("r2", key, 0)
    assert isinstance(refused, HoldRefusal) and refused.available == -30
    with pytest.raises(StoreError):
        await world.capture("r2", 1)  # no such hold
    await world.store.credit("alice", 30)


async def test_release_returns_everything_and_logs_a_zero_row(world: World) -> None:
    key = await world.user("alice", 1000, quota=500)
    await world.held("r1", key, 400)
    res = await world.store.release("r1", LogDetails(end_reason="upstream_error", usage_source="upstream", status=502))
    assert (res.state, res.charged, res.overage, res.first) == (HoldState.RELEASED, 0, 0, True)
    user = await world.store.get_user("alice")
    assert user is not None and (user.balance, user.reserved, user.used, user.request_count) == (1000, 0, 0, 0)
    k = await world.store.get_key(key.id)
    assert k is not None and (k.balance, k.reserved, k.request_count) == (500, 0, 0)
    [row] = await world.store.query_logs()
    assert (row.charge, row.estimate, row.details.end_reason, row.details.status) == (0, 400, "upstream_error", 502)


@pytest.mark.parametrize(
    ("first_op", "second_op", "state", "charged"),
    [
        ("capture", "capture", HoldState.CAPTURED, 70),
        ("capture", "release", HoldState.CAPTURED, 70),
        ("release", "capture", HoldState.RELEASED, 0),
        ("release", "release", HoldState.RELEASED, 0),
    ],
)
async def test_second_resolution_reports_the_first(
    world: World, first_op: str, second_op: str, state: HoldState, charged: int
) -> None:
    key = await world.user("alice", 1000)
    await world.held("r1", key, 100)

    async def resolve(op: str, amount: int) -> object:
        if op == "capture":
            return await world.capture("r1", amount)
        return await world.store.release("r1", DONE)

    first = await resolve(first_op, 70)
    second = await resolve(second_op, 90)
    assert second == type(first)("r1", state, charged, 0, False)  # type: ignore[call-arg]
    user = await world.store.get_user("alice")
    assert user is not None and user.balance == 1000 - charged and user.reserved == 0
    assert len(await world.store.query_logs()) == 1


async def test_checkpoint_only_on_open_holds(world: World) -> None:
    key = await world.user("alice", 1000)
    await world.held("r1", key, 100)
    assert await world.store.checkpoint("r1", 40)
    assert await world.store.checkpoint("r1", 90)
    assert (await world.store.get_hold("r1")).checkpoint == 90  # type: ignore[union-attr]
    await world.capture("r1", 95)
    assert not await world.store.checkpoint("r1", 120)
    assert not await world.store.checkpoint("nothere", 1)
    assert (await world.store.get_hold("r1")).checkpoint == 90  # type: ignore[union-attr]


# records ---------------------------------------------------------------------------------------


async def test_log_row_keeps_every_detail(world: World) -> None:
    key = await world.user("alice", 1000)
    await world.held("r1", key, 100)
    details = LogDetails(
        end_reason="completed",
        usage_source="estimated",
        model="gpt-4o",
        upstream_model="gpt-4o-2024",
        upstream="openai",
        key_name="laptop",
        group="vip",
        multiplier="0.8",
        stream=True,
        input=11,
        cache_read=12,
        cache_write_5m=13,
        cache_write_1h=14,
        output=15,
        audio_in=16,
        audio_out=17,
        images=18,
        latency_ms=1234,
        ttft_ms=56,
        status=200,
        error="none really",
    )
    await world.store.capture("r1", 77, details)
    [row] = await world.store.query_logs(user="alice")
    assert row.details == details
    assert row.ts == world.clock.now


async def test_logs_paginate_newest_first_and_filter(world: World) -> None:
    alice = await world.user("alice", 10_000)
    bob = await world.user("bob", 10_000)
    for i in range(7):
        await world.held(f"a{i}", alice, 10)
        await world.capture(f"a{i}", i + 1)
        await world.held(f"b{i}", bob, 10)
        await world.store.release(f"b{i}", DONE)
        world.clock.advance(10)
    page1 = await world.store.query_logs(user="alice", limit=3)
    page2 = await world.store.query_logs(user="alice", limit=3, before_id=page1[-1].id)
    page3 = await world.store.query_logs(user="alice", limit=3, before_id=page2[-1].id)
    ids = [r.request_id for r in page1 + page2 + page3]
    assert ids == [f"a{i}" for i in range(6, -1, -1)]
    assert all(r.id > s.id for r, s in zip(page1 + page2, (page1 + page2 + page3)[1:]))
    assert len(await world.store.query_logs(limit=100)) == 14
    start = world.clock.now - 70
    window = await world.store.query_logs(since=start + 20, until=start + 40)
    assert sorted(r.request_id for r in window) == ["a2", "a3", "b2", "b3"]


async def test_audit_detects_a_tampered_wallet(world: World, backend: Backend) -> None:
    key = await world.user("alice", 1000)
    await world.held("r1", key, 100)
    await world.capture("r1", 40)
    assert (await world.store.audit(world.clock.now, 30)).ok
    await backend.tamper_wallet("alice", 5)
    report = await world.store.audit(world.clock.now, 30)
    assert not report.ok
    assert any("wallet:alice" in m and "965" in m and "960" in m for m in report.mismatches), report
    await backend.tamper_wallet("alice", -5)
    assert (await world.store.audit(world.clock.now, 30)).ok
