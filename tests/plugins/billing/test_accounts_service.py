"""The account functions themselves (`plugins.billing.accounts`), on a real SQLite store: the
one error type they raise and its codes (what the admin API turns into 400, 404 and 409),
and who is recorded on the money they move. The CLI tests run the same functions through
`weir`; these pin the contract the admin API builds on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from plugins.billing.accounts import AccountError, Accounts, Money, holds, keys, plans, records, users
from plugins.billing.store.base import Hold, LogDetails
from plugins.billing.store.sqlite.store import SQLiteStore


@pytest.fixture
async def acc(tmp_path: Path) -> AsyncIterator[Accounts]:
    """Accounts on a fresh SQLite store, acting as the admin API would; audited at the end."""
    store = SQLiteStore(str(tmp_path / "weir.db"), checkpoint_every=0)
    await store.open()
    try:
        yield Accounts(store, Money(1000), actor="admin")
        assert (await store.audit(time.time(), 30)).ok
    finally:
        await store.close()


async def refused(code: str, status: int, call: Awaitable[Any]) -> str:
    """Await `call`, which must raise AccountError with `code`; its message."""
    with pytest.raises(AccountError) as caught:
        await call
    assert (caught.value.code, caught.value.status) == (code, status)
    return caught.value.message


async def test_not_found_for_everything_unknown(acc: Accounts) -> None:
    for call in (
        users.show_user(acc, "ghost"),
        users.topup(acc, "ghost", 5),
        keys.show_key(acc, "k_nope"),
        keys.update_key(acc, "k_nope", name="x"),
        plans.grant(acc, "ghost", "pro"),
        plans.delete_plan(acc, "pro"),
        plans.cancel_subscription(acc, "s_nope"),
        records.logs(acc, user="ghost"),
        users.ledger(acc, "ghost"),
    ):
        assert "unknown" in await refused("not_found", 404, call)
    msg = await refused(
        "not_found",
        404,
        holds.resolve_hold(acc, "r-nope", capture_checkpoint=False, note="why", orphan_after=30, stuck_after=300),
    )
    assert "unknown hold" in msg


async def test_invalid_input_says_which_field(acc: Accounts) -> None:
    await users.add_user(acc, "alice", quota=1000)
    assert "usd: '1,5' is not a USD amount" in await refused("invalid", 400, _quota(acc, "1,5"))
    msg = await refused("invalid", 400, users.topup(acc, "alice", -50))
    assert "weir user adjust alice --quota -50 --note" in msg
    assert "must say why" in await refused("invalid", 400, users.adjust(acc, "alice", -5, "  "))
    assert "ips: '10.0.0.300'" in await refused("invalid", 400, keys.create_key(acc, "alice", ips=["10.0.0.300"]))
    assert "in the past" in await refused("invalid", 400, keys.create_key(acc, "alice", expires_at=1.0))
    assert "preference" in await refused("invalid", 400, users.set_user(acc, "alice", preference="cheapest"))
    assert "limit" in await refused("invalid", 400, records.logs(acc, limit=0))
    assert "period" in await refused("invalid", 400, plans.add_plan(acc, "p", quota=5, period="year"))
    assert "nothing to change" in await refused("invalid", 400, keys.update_key(acc, "k_x"))


async def _quota(acc: Accounts, usd: str) -> int:
    return acc.money.quota(usd)


async def test_conflicts_are_the_state_refusing(acc: Accounts) -> None:
    await users.add_user(acc, "alice", quota=1000)
    assert "already exists" in await refused("conflict", 409, users.add_user(acc, "alice"))
    key = await keys.create_key(acc, "alice", quota=100)
    held = await acc.store.hold("r1", "alice", key["id"], 50, None, "pv", 60, "i1", "m")
    assert isinstance(held, Hold)
    assert "in flight" in await refused("conflict", 409, keys.update_key(acc, key["id"], unlimited=True))
    await acc.store.release("r1", LogDetails(end_reason="upstream_error", usage_source="none"))
    await keys.set_key_status(acc, key["id"], "revoked")
    assert "revoked" in await refused("conflict", 409, keys.update_key(acc, key["id"], name="x"))
    await plans.add_plan(acc, "pro", quota=500, period="day")
    sub = await plans.grant(acc, "alice", "pro")
    assert "alice" in await refused("conflict", 409, plans.delete_plan(acc, "pro"))
    cancelled = await plans.cancel_subscription(acc, sub["id"])
    assert cancelled["cancelled_at"] is not None and not cancelled["active"]
    assert "cancelled already" in await refused("conflict", 409, plans.cancel_subscription(acc, sub["id"]))
    assert (await plans.delete_plan(acc, "pro"))["deleted"] is True


async def test_money_moved_by_hand_records_the_actor(acc: Accounts) -> None:
    await users.add_user(acc, "alice", quota=1000)
    assert (await users.topup(acc, "alice", 500, "invoice 7"))["actor"] == "admin"
    after = await users.adjust(acc, "alice", -300, "refund")
    assert (after["balance_quota"], after["balance_usd"], after["note"]) == (1200, "1.200000", "refund")
    entries = (await users.ledger(acc, "alice"))["entries"]
    assert [(e["label"], e["amount_quota"], e["balance_quota"], e["actor"]) for e in entries] == [
        ("top-up", 1000, 1000, ""),
        ("top-up", 500, 1500, "admin"),
        ("adjustment", -300, 1200, "admin"),
    ]
    paged = await users.ledger(acc, "alice", limit=2)
    assert [e["amount_quota"] for e in paged["entries"]] == [500, -300] and paged["next_before"] is not None
    older = await users.ledger(acc, "alice", limit=2, before=paged["next_before"])
    assert [(e["amount_quota"], e["balance_quota"]) for e in older["entries"]] == [(1000, 1000)]
    assert older["next_before"] is None
