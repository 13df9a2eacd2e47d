"""The account edits of `weir`, run as a real subprocess on SQLite and on Redis: `user set`,
`user adjust` (and the refused negative top-up), `weir ledger`, `key set`, `sub cancel`,
`plan delete`, and the filters, totals and refunds of `weir logs`. Each test checks the
money and the rows (balances, ledger entries) and ends with a clean `weir audit`.
"""

from __future__ import annotations

import asyncio
import getpass

from plugins.billing.store.base import Hold, LogDetails
from tests.plugins.billing.cli.test_cli_accounts import Weir, weir  # noqa: F401  (fixture)


def _os_user() -> str:
    try:
        return getpass.getuser() or "cli"
    except (OSError, KeyError):
        return "cli"


def _audit_clean(cli: Weir) -> None:
    res = cli.run("audit")
    assert res.returncode == 0 and "ledger consistent" in res.stdout, res.stdout + res.stderr


async def _requests(cli: Weir, key_id: str, user: str, done: list[tuple[str, str, int | None]]) -> None:
    """Hold 100 and settle each (request id, model, charge; None: released), as the plugin would."""
    store = await cli.with_store()
    try:
        await store.heartbeat("i1")
        for rid, model, charge in done:
            assert isinstance(await store.hold(rid, user, key_id, 100, None, "pv1", 600, "i1", model), Hold)
            if charge is None:
                await store.release(rid, LogDetails(end_reason="upstream_error", usage_source="none", model=model))
            else:
                await store.capture(
                    rid, charge, LogDetails(end_reason="completed", usage_source="upstream", model=model)
                )
    finally:
        await store.close()


def test_a_debit_is_an_adjustment_that_says_who_and_why(weir: Weir) -> None:
    weir.ok("user", "add", "demo", "--usd", "1")
    err = weir.fail("user", "topup", "demo", "--usd", "-100")
    assert "cannot be negative" in err and "weir user adjust demo --quota -50000000 --note" in err
    assert weir.json("user", "show", "demo")["balance_quota"] == 500000  # nothing moved
    assert "--note" in weir.fail("user", "adjust", "demo", "--quota", "-5", "--note", " ")
    assert "negative" in weir.fail("user", "adjust", "demo", "--quota", "5", "--note", "more")
    weir.fail("user", "adjust", "demo", "--quota", "-5", code=2)  # argparse: --note is required
    assert "negative" in weir.fail("user", "adjust", "demo", "--usd", "0.25", "--note", "x")
    adjusted = weir.json("user", "adjust", "demo", "--usd", "-0.25", "--note", "refund of a test charge")
    assert (adjusted["balance_quota"], adjusted["credited_quota"], adjusted["actor"]) == (375000, -125000, _os_user())
    weir.ok("user", "topup", "demo", "--quota", "1000", "--note", "March invoice")
    ledger = weir.json("ledger", "demo")
    rows = [(e["label"], e["amount_quota"], e["balance_quota"], e["note"], e["actor"]) for e in ledger["entries"]]
    assert rows == [
        ("top-up", 500000, 500000, "initial balance", ""),
        ("adjustment", -125000, 375000, "refund of a test charge", _os_user()),
        ("top-up", 1000, 376000, "March invoice", _os_user()),
    ]
    assert ledger["balance_quota"] == 376000 and ledger["next_before"] is None
    text = weir.ok("ledger", "demo")
    assert "adjustment" in text and "refund of a test charge" in text and "balance now 376000" in text
    _audit_clean(weir)


def test_user_set_changes_group_and_preference_and_disables(weir: Weir) -> None:
    weir.ok("user", "add", "alice", "--usd", "1")
    changed = weir.json("user", "set", "alice", "--group", "vip", "--preference", "wallet_only", "--disable")
    assert (changed["group"], changed["preference"], changed["disabled"]) == ("vip", "wallet_only", True)
    assert "DISABLED" in weir.ok("user", "show", "alice")
    assert weir.json("user", "set", "alice", "--enable")["disabled"] is False
    shown = weir.json("user", "show", "alice")
    assert (shown["group"], shown["preference"], shown["balance_quota"]) == ("vip", "wallet_only", 500000)
    assert "nothing to change" in weir.fail("user", "set", "alice")
    assert "unknown user 'ghost'" in weir.fail("user", "set", "ghost", "--disable")
    weir.fail("user", "set", "alice", "--enable", "--disable", code=2)
    assert "invalid group name" in weir.fail("user", "set", "alice", "--group", " vip")
    _audit_clean(weir)


def test_key_set_edits_a_key_and_its_quota_through_the_ledger(weir: Weir) -> None:
    weir.ok("user", "add", "alice", "--usd", "1")
    key = weir.json("key", "create", "alice", "--quota", "500", "--models", "gpt-*", "--expires", "2099-01-01")
    asyncio.run(_requests(weir, key["id"], "alice", [("r1", "gpt-4o", 120)]))
    edited = weir.json(
        "key",
        "set",
        key["id"],
        "--name",
        "ci",
        "--quota",
        "1000",
        "--models",
        "",
        "--ips",
        "10.0.0.7",
        "--group",
        "vip",
        "--expires",
        "never",
    )
    assert (
        edited["name"],
        edited["quota"],
        edited["remaining_quota"],
        edited["models"],
        edited["ips"],
        edited["group"],
        edited["expires_at"],
    ) == ("ci", 1000, 1000, [], ["10.0.0.7/32"], "vip", None)
    [entry] = [
        e for e in weir.json("ledger", "alice", "--all")["entries"] if e["account"] == f"key:{key['id']}" and e["actor"]
    ]
    assert (entry["kind"], entry["amount_quota"], entry["note"]) == ("credit", 620, "key quota set to 1000")
    assert weir.json("key", "set", key["id"], "--disable")["status"] == "disabled"
    assert weir.json("key", "set", key["id"], "--enable", "--unlimited")["unlimited"] is True
    assert weir.json("key", "set", key["id"], "--group", "")["group"] is None
    assert "in the past" in weir.fail("key", "set", key["id"], "--expires", "2001-01-01")
    assert "nothing to change" in weir.fail("key", "set", key["id"])
    weir.ok("key", "revoke", key["id"])
    assert "revoked" in weir.fail("key", "set", key["id"], "--enable")
    assert "unknown key 'k_nope'" in weir.fail("key", "set", "k_nope", "--name", "x")
    assert weir.json("user", "show", "alice")["used_quota"] == 120
    _audit_clean(weir)


def test_sub_cancel_and_plan_delete(weir: Weir) -> None:
    weir.ok("user", "add", "alice")
    weir.ok("plan", "add", "pro", "--quota", "1000", "--period", "day")
    weir.ok("plan", "add", "spare", "--quota", "10", "--period", "none")
    sub = weir.json("sub", "grant", "alice", "pro")
    assert weir.json("plan", "delete", "spare")["deleted"] is True
    err = weir.fail("plan", "delete", "pro")
    assert "alice" in err and "weir sub cancel" in err
    cancelled = weir.json("sub", "cancel", sub["id"])
    assert (cancelled["active"], cancelled["balance_quota"]) == (False, 1000) and cancelled["cancelled_at"]
    assert "cancelled already" in weir.fail("sub", "cancel", sub["id"])
    assert "unknown subscription 's_nope'" in weir.fail("sub", "cancel", "s_nope")
    weir.ok("plan", "delete", "pro")
    assert weir.json("plan", "list") == []
    assert "unknown plan 'pro'" in weir.fail("plan", "delete", "pro")
    [kept] = weir.json("sub", "list", "alice")
    assert (kept["plan"], kept["active"], kept["cancelled_at"]) == ("pro", False, cancelled["cancelled_at"])
    assert "cancelled" in weir.ok("user", "show", "alice")
    _audit_clean(weir)


def test_logs_filter_total_and_mark_refunds(weir: Weir) -> None:
    weir.ok("user", "add", "alice", "--quota", "10000")
    weir.ok("user", "add", "bob", "--quota", "10000")
    one, two = weir.json("key", "create", "alice")["id"], weir.json("key", "create", "alice")["id"]
    bob = weir.json("key", "create", "bob")["id"]
    asyncio.run(
        _requests(weir, one, "alice", [("a1", "gpt-4o", 40), ("a2", "gpt-4o-mini", 60), ("a3", "gpt-4o", None)])
    )
    asyncio.run(_requests(weir, two, "alice", [("a4", "claude-3", 7)]))
    asyncio.run(_requests(weir, bob, "bob", [("b1", "gpt-4o", 9)]))
    assert [r["request_id"] for r in weir.json("logs", "--key", one)] == ["a3", "a2", "a1"]
    assert [r["request_id"] for r in weir.json("logs", "--model", "gpt-4o*", "--user", "alice")] == ["a3", "a2", "a1"]
    assert [r["request_id"] for r in weir.json("logs", "--outcome", "upstream_error")] == ["a3"]
    assert weir.json("logs", "--until", "2001-01-01") == []
    refund = weir.json("logs", "--outcome", "upstream_error")[0]
    assert (refund["refund"], refund["charge"], refund["estimate"]) == (True, 0, 100)
    totals = weir.json("logs", "--user", "alice", "--totals")
    assert (totals["requests"], totals["charged_quota"], totals["refunds"], totals["refunded_quota"]) == (
        4,
        107,
        1,
        100,
    )
    text = weir.ok("logs", "--user", "alice", "--limit", "2")
    assert "refunded 100 (charged 0)" in text and "charge 0 " not in text
    assert "total: 4 request(s), charged 107 quota" in text and "(more with --before" in text
    assert "unknown key 'k_nope'" in weir.fail("logs", "--key", "k_nope")
    assert "--until must be later" in weir.fail("logs", "--since", "2030-01-02", "--until", "2030-01-01")
    assert weir.json("user", "show", "alice")["balance_quota"] == 10000 - 107
    _audit_clean(weir)
