"""The store contract, part 4: the account edits people make (users, keys, subscriptions,
plans), the ledger as `weir ledger` reads it, and the consume-log filters and totals.

Runs on every backend (see conftest); every test ends with a clean audit.
"""

from __future__ import annotations

import pytest

from plugins.billing.store.base import (
    FundingSource,
    Hold,
    HoldRefusal,
    KeyChanges,
    LogDetails,
    Plan,
    Preference,
    Refusal,
    Store,
    StoreError,
)

from .conftest import Backend, FakeClock, World

DAY = 86400.0


# users ---------------------------------------------------------------------------------------


async def test_a_user_is_disabled_and_enabled_keeping_the_rest(store: Store) -> None:
    await store.create_user("bob", group="vip", preference=Preference.WALLET_FIRST)
    assert (await store.get_user("bob")).disabled is False  # type: ignore[union-attr]
    off = await store.set_user("bob", disabled=True)
    assert (off.disabled, off.group, off.preference) == (True, "vip", Preference.WALLET_FIRST)
    assert await store.get_user("bob") == off
    assert [u.disabled for u in await store.list_users()] == [True]
    moved = await store.set_user("bob", group="default")
    assert (moved.disabled, moved.group) == (True, "default")
    assert (await store.set_user("bob", disabled=False)).disabled is False
    with pytest.raises(StoreError):
        await store.set_user("nobody", disabled=True)


# the ledger ------------------------------------------------------------------------------------


async def test_hand_movements_record_who_and_why_in_order(world: World) -> None:
    store = world.store
    key = await world.user("alice", 1000)
    world.clock.advance(1)
    await store.credit("alice", 500, "top-up", actor="ops")
    world.clock.advance(1)
    await world.held("r1", key, 300)
    await world.capture("r1", 120)
    world.clock.advance(1)
    after = await store.credit("alice", -80, "refund for the 04:10 outage", actor="admin")
    assert after.balance == 1000 + 500 - 120 - 80
    page = await store.ledger_entries("alice")
    assert page.balance == after.balance
    assert [(e.kind, e.d_balance, e.note, e.actor) for e in page.entries] == [
        ("credit", -80, "refund for the 04:10 outage", "admin"),
        ("capture", -120, "", ""),
        ("credit", 500, "top-up", "ops"),
        ("credit", 1000, "test top-up", ""),
    ]
    assert page.entries[1].request_id == "r1" and page.entries[1].account == "wallet:alice"
    ids = [e.id for e in page.entries]
    assert ids == sorted(ids, reverse=True)
    # A page below an id: the balance is the one right after that page's newest entry.
    older = await store.ledger_entries("alice", before_id=page.entries[1].id, limit=1)
    assert [e.d_balance for e in older.entries] == [500]
    assert older.balance == 1500
    everything = await store.ledger_entries("alice", everything=True)
    assert [e.kind for e in everything.entries][:4] == ["credit", "capture", "hold", "credit"]
    with pytest.raises(StoreError):
        await store.ledger_entries("nobody")


async def test_the_ledger_of_everything_names_keys_and_subscriptions(world: World) -> None:
    store = world.store
    key = await world.user("alice", 0, quota=400)
    await store.create_plan(Plan("daily", 1000, "day"))
    sub = await store.grant_subscription("alice", "daily", world.clock.now, world.clock.now + 30 * DAY)
    await world.held("r1", key, 100)
    await world.capture("r1", 60)
    accounts = [
        (e.account, e.kind, e.d_balance) for e in (await store.ledger_entries("alice", everything=True)).entries
    ]
    assert (f"sub:{sub.id}", "capture", -60) in accounts and (f"key:{key.id}", "capture", -60) in accounts
    assert (f"key:{key.id}", "credit", 400) in accounts and (f"sub:{sub.id}", "credit", 1000) in accounts
    assert (await store.ledger_entries("alice")).entries == []  # the wallet never moved


# keys ----------------------------------------------------------------------------------------


async def test_a_key_is_edited_field_by_field(world: World) -> None:
    store = world.store
    key = await world.user("alice", 1000)
    changed = await store.update_key(
        key.id,
        KeyChanges(
            name="laptop", models=("gpt-*",), ips=("10.0.0.0/8",), group="vip", expires_at=world.clock.now + DAY
        ),
    )
    assert (changed.name, changed.models, changed.ips, changed.group, changed.expires_at) == (
        "laptop",
        ("gpt-*",),
        ("10.0.0.0/8",),
        "vip",
        world.clock.now + DAY,
    )
    assert await store.get_key(key.id) == changed
    cleared = await store.update_key(key.id, KeyChanges(models=(), ips=(), group="", no_expiry=True))
    assert (cleared.name, cleared.models, cleared.ips, cleared.group, cleared.expires_at) == (
        "laptop",
        (),
        (),
        None,
        None,
    )
    off = await store.update_key(key.id, KeyChanges(status="disabled"))
    refused = await world.hold("r1", off, 10)
    assert isinstance(refused, HoldRefusal) and refused.reason is Refusal.KEY_DISABLED
    assert (await store.update_key(key.id, KeyChanges(status="active"))).status == "active"
    await world.held("r2", key, 10)
    await world.capture("r2", 10)
    await store.update_key(key.id, KeyChanges(status="revoked"))
    with pytest.raises(StoreError, match="revoked"):
        await store.update_key(key.id, KeyChanges(name="again"))
    with pytest.raises(StoreError):
        await store.update_key("k_nope", KeyChanges(name="x"))
    with pytest.raises(StoreError):
        await store.update_key(key.id, KeyChanges(status="paused"))


async def test_a_key_quota_is_set_with_a_ledger_entry(world: World) -> None:
    store = world.store
    key = await world.user("alice", 10_000, quota=500)
    await world.held("r1", key, 200)
    await world.capture("r1", 150)
    assert (await store.get_key(key.id)).balance == 350  # type: ignore[union-attr]
    more = await store.update_key(key.id, KeyChanges(quota=1000), actor="ops")
    assert (more.quota, more.balance, more.reserved) == (1000, 1000, 0)
    entries = (await store.ledger_entries("alice", everything=True)).entries
    assert (entries[0].account, entries[0].kind, entries[0].d_balance, entries[0].actor) == (
        f"key:{key.id}",
        "credit",
        650,
        "ops",
    )
    held = await world.held("r2", key, 900)
    refused = await world.hold("r3", key, 200)
    assert isinstance(refused, HoldRefusal) and refused.reason is Refusal.INSUFFICIENT_KEY_QUOTA
    # Dropping the quota while a request holds some of it would strand that reservation.
    with pytest.raises(StoreError, match="in flight"):
        await store.update_key(key.id, KeyChanges(unlimited=True))
    await world.capture(held.request_id, 900)
    free = await store.update_key(key.id, KeyChanges(unlimited=True))
    assert free.unlimited and free.quota is None
    assert isinstance(await world.hold("r4", free, 5000), Hold)  # only the wallet limits it now
    await world.capture("r4", 10)
    again = await store.update_key(key.id, KeyChanges(quota=50))
    assert (again.quota, again.balance) == (50, 50)
    with pytest.raises(StoreError):
        await store.update_key(key.id, KeyChanges(quota=-1))


async def test_an_unlimited_key_held_before_it_gets_a_quota_settles_exactly(world: World) -> None:
    key = await world.user("alice", 10_000)
    held = await world.held("r1", key, 300)
    limited = await world.store.update_key(key.id, KeyChanges(quota=1000))
    assert limited.balance == 1000
    await world.capture(held.request_id, 250)  # the key's account pays although it held nothing
    after = await world.store.get_key(key.id)
    assert after is not None and (after.balance, after.reserved, after.used) == (750, 0, 250)


# subscriptions and plans ------------------------------------------------------------------------


async def _pro(world: World, quota: int = 1000, period: str = "day") -> str:
    await world.store.create_plan(Plan("pro", quota, period))
    sub = await world.store.grant_subscription("alice", "pro", world.clock.now, world.clock.now + 30 * DAY)
    return sub.id


async def test_a_cancelled_subscription_pays_for_no_new_hold(world: World) -> None:
    store = world.store
    key = await world.user("alice", 5000)
    sub_id = await _pro(world)
    before = await world.held("r1", key, 100)
    assert before.source is FundingSource.SUBSCRIPTION
    world.clock.advance(60)
    cancelled = await store.cancel_subscription(sub_id)
    assert (cancelled.end, cancelled.cancelled_at) == (world.clock.now, world.clock.now)
    assert await store.get_subscription(sub_id) == cancelled
    after = await world.held("r2", key, 100)
    assert after.source is FundingSource.WALLET
    only = await world.hold("r3", key, 100, preference=Preference.SUBSCRIPTION_ONLY)
    assert isinstance(only, HoldRefusal) and only.reason is Refusal.INSUFFICIENT_SUBSCRIPTION
    # A hold taken before the cancellation settles on the subscription as usual.
    await world.capture("r1", 70)
    await world.capture("r2", 40)
    sub = await store.get_subscription(sub_id)
    assert sub is not None and (sub.balance, sub.reserved, sub.used) == (930, 0, 70)
    assert (await store.get_user("alice")).balance == 4960  # type: ignore[union-attr]
    with pytest.raises(StoreError, match="cancelled already"):
        await store.cancel_subscription(sub_id)
    with pytest.raises(StoreError):
        await store.cancel_subscription("s_nope")
    assert await store.get_subscription("s_nope") is None


async def test_a_peer_that_knew_the_subscription_neither_draws_on_it_nor_renews_it(
    world: World, backend: Backend, clock: FakeClock
) -> None:
    """Another instance took a hold on the subscription (and so remembers its terms) before
    an operator cancelled it elsewhere: its next hold must go to the wallet, and its
    settlement a day later must not start a new period on the cancelled subscription."""
    key = await world.user("alice", 5000)
    sub_id = await _pro(world)
    peer = await backend.open_peer(clock)
    held = await peer.hold("r1", "alice", key.id, 100, None, "pv1", 3 * DAY, "i1", "gpt-4o")
    assert isinstance(held, Hold) and held.source is FundingSource.SUBSCRIPTION
    world.clock.advance(60)
    await world.store.cancel_subscription(sub_id)
    second = await peer.hold("r2", "alice", key.id, 100, None, "pv1", 3 * DAY, "i1", "gpt-4o")
    assert isinstance(second, Hold) and second.source is FundingSource.WALLET
    await world.tick(1.5 * DAY)
    await peer.capture("r1", 70, LogDetails(end_reason="completed", usage_source="upstream"))
    await peer.capture("r2", 10, LogDetails(end_reason="completed", usage_source="upstream"))
    sub = await world.store.get_subscription(sub_id)
    assert sub is not None and (sub.balance, sub.used, sub.period_start) == (930, 70, clock.now - 1.5 * DAY - 60)
    assert [s.balance for s in await world.store.list_subscriptions("alice")] == [930]


async def test_a_cancellation_first_brings_the_period_up_to_date(world: World) -> None:
    await world.user("alice")
    sub_id = await _pro(world, 1000, "day")
    key = (await world.store.list_keys("alice"))[0]
    await world.held("r1", key, 400)
    await world.capture("r1", 400)
    await world.tick(DAY + 5)  # a new period began; nothing touched the subscription since
    cancelled = await world.store.cancel_subscription(sub_id)
    assert (cancelled.balance, cancelled.period_start) == (1000, cancelled.start + DAY)


async def test_a_subscription_not_started_yet_is_cancelled_at_its_start(world: World) -> None:
    await world.user("alice")
    await world.store.create_plan(Plan("later", 100, "none"))
    start = world.clock.now + 5 * DAY
    sub = await world.store.grant_subscription("alice", "later", start, start + DAY)
    short = await world.store.grant_subscription("alice", "later", world.clock.now, world.clock.now + DAY)
    cancelled = await world.store.cancel_subscription(sub.id)
    assert cancelled.end == cancelled.start == start
    world.clock.advance(2 * DAY)
    with pytest.raises(StoreError, match="ended already"):
        await world.store.cancel_subscription(short.id)


async def test_a_plan_is_deleted_only_when_nobody_is_subscribed(world: World) -> None:
    store = world.store
    await world.user("alice")
    sub_id = await _pro(world)
    await store.create_plan(Plan("spare", 10, "none"))
    await store.delete_plan("spare")
    assert await store.get_plan("spare") is None
    with pytest.raises(StoreError, match="alice"):
        await store.delete_plan("pro")
    assert await store.get_plan("pro") is not None
    await store.cancel_subscription(sub_id)
    await store.delete_plan("pro")
    assert [p.name for p in await store.list_plans()] == []
    assert [s.plan for s in await store.list_subscriptions("alice")] == ["pro"]  # it keeps its terms
    with pytest.raises(StoreError):
        await store.delete_plan("pro")


# the consume log ---------------------------------------------------------------------------------


async def test_logs_filter_by_key_model_and_outcome_and_total_up(world: World) -> None:
    store = world.store
    first = await world.user("alice", 10_000)
    second = await store.create_key("alice", "hash-second", name="second")
    other = await world.user("bob", 10_000)
    cases = [("a1", first, "gpt-4o", 40), ("a2", second, "gpt-4o-mini", 60), ("b1", other, "claude-3", 7)]
    for rid, key, model, charge in cases:
        await world.held(rid, key, 100, model=model)
        await store.capture(rid, charge, LogDetails(end_reason="completed", usage_source="upstream", model=model))
    await world.held("a3", first, 90, model="gpt-4o")
    await store.release("a3", LogDetails(end_reason="upstream_error", usage_source="none", model="gpt-4o"))
    assert [r.request_id for r in await store.query_logs(key_id=first.id)] == ["a3", "a1"]
    assert [r.request_id for r in await store.query_logs(model="gpt-4o*")] == ["a3", "a2", "a1"]
    assert [r.request_id for r in await store.query_logs(model="gpt-4o")] == ["a3", "a1"]
    assert [r.request_id for r in await store.query_logs(end_reason="upstream_error")] == ["a3"]
    assert [r.request_id for r in await store.query_logs(user="alice", key_id=second.id)] == ["a2"]
    assert await store.query_logs(key_id="k_nope") == []
    totals = await store.log_totals(user="alice")
    assert (totals.requests, totals.charged, totals.overage, totals.refunds, totals.refunded) == (3, 100, 0, 1, 90)
    everyone = await store.log_totals()
    assert (everyone.requests, everyone.charged) == (4, 107)
    assert (await store.log_totals(key_id=first.id, end_reason="completed")).charged == 40
    assert (await store.log_totals(model="claude-*")).requests == 1
    assert await store.log_totals(since=world.clock.now + 1) == type(totals)()
