"""`weir holds` and the stuck holds of `weir audit`, run as a real subprocess on SQLite and
Redis: a hold whose settlement was lost on a live instance is found, listed and resolved by
hand, and the audit is clean again."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from plugins.billing.store.base import Hold
from plugins.billing.store.factory import make_store
from proxy.config import load_config
from tests.plugins.billing.cli.test_cli_accounts import Weir, weir  # noqa: F401  (fixture)

HOUR = 3600.0


async def _plant(cli: Weir, key_id: str) -> None:
    """A hold taken an hour ago and checkpointed then (its capture was lost), and a fresh
    one, both on instance i-live, which heartbeats now."""
    config = load_config(cli.config)
    past = make_store(config, clock=lambda: time.time() - HOUR)
    await past.open()
    try:
        assert isinstance(
            await past.hold("stuck-1", "alice", key_id, 500, None, "pv1", 86400, "i-live", "gpt-4o"), Hold
        )
        assert await past.checkpoint("stuck-1", 120)
    finally:
        await past.close()
    store = make_store(config)
    await store.open()
    try:
        await store.heartbeat("i-live")
        assert isinstance(await store.hold("fresh", "alice", key_id, 100, None, "pv1", 86400, "i-live", "gpt-4o"), Hold)
    finally:
        await store.close()


def _beat(cli: Weir) -> None:
    """i-live heartbeats again: it is alive, however long the CLI runs before took (each
    `weir` run is a new process; on a loaded machine a dozen of them outlast `orphan_after`)."""

    async def beat() -> None:
        store = make_store(load_config(cli.config))
        await store.open()
        try:
            await store.heartbeat("i-live")
        finally:
            await store.close()

    asyncio.run(beat())


def test_a_stuck_hold_fails_the_audit_is_listed_and_resolved_by_hand(weir: Weir) -> None:  # noqa: F811
    weir.ok("user", "add", "alice", "--usd", "1")
    key_id = weir.json("key", "create", "alice")["id"]
    asyncio.run(_plant(weir, key_id))

    _beat(weir)
    bad = weir.run("audit")
    assert bad.returncode == 1, bad.stderr
    assert "ledger consistent" in bad.stdout and "no orphaned holds" in bad.stdout
    [line] = [ln for ln in bad.stdout.splitlines() if ln.startswith("STUCK")]
    assert "stuck-1" in line and "alice" in line and "i-live" in line and "checkpoint 120" in line
    assert "1 stuck hold(s)" in bad.stderr
    report = json.loads(weir.run("audit", "--json").stdout)
    assert (report["ok"], report["consistent"], report["orphans"], report["stuck_after"]) == (False, True, [], 300)
    assert len(report["stuck"]) == 1
    assert weir.run("audit", "--stuck-after", "7200").returncode == 0
    assert "positive" in weir.fail("audit", "--stuck-after", "0")

    _beat(weir)
    listed = {h["request_id"]: h for h in weir.json("holds")}
    assert set(listed) == {"stuck-1", "fresh"}
    stuck, fresh = listed["stuck-1"], listed["fresh"]
    assert (stuck["stuck"], stuck["checkpoint"], stuck["amount"], stuck["user"], stuck["key_id"]) == (
        True,
        120,
        500,
        "alice",
        key_id,
    )
    assert stuck["instance_alive"] and stuck["age_s"] >= HOUR and stuck["touched_at"] is not None
    assert (fresh["stuck"], fresh["checkpoint"], fresh["touched_at"]) == (False, None, None)
    _beat(weir)
    text = weir.ok("holds", "list")
    assert "STUCK" in text and "i-live (alive" in text and "1 stuck hold(s)" in text

    _beat(weir)
    assert "may still own it" in weir.fail("holds", "resolve", "fresh", "--release", "--note", "testing")
    assert "unknown hold 'ghost'" in weir.fail("holds", "resolve", "ghost", "--release", "--note", "testing")
    assert "--note" in weir.fail("holds", "resolve", "stuck-1", "--release", "--note", "  ")
    done = weir.ok("holds", "resolve", "stuck-1", "--capture-checkpoint", "--note", "capture lost to a Redis error")
    assert "captured its checkpoint 120" in done
    again = weir.json("holds", "resolve", "stuck-1", "--release", "--note", "once more")
    assert (again["already_resolved"], again["state"], again["charged"]) == (True, "captured", 120)
    assert "already resolved" in weir.ok("holds", "resolve", "stuck-1", "--release", "--note", "once more")

    user = weir.json("user", "show", "alice")
    assert (user["balance_quota"], user["reserved_quota"], user["used_quota"]) == (500000 - 120, 100, 120)
    [row] = weir.json("logs")
    assert (row["request_id"], row["end_reason"], row["usage_source"], row["charge"], row["error"]) == (
        "stuck-1",
        "resolved_by_hand",
        "partial",
        120,
        "capture lost to a Redis error",
    )
    _beat(weir)
    assert weir.run("audit").returncode == 0  # the fresh hold is open, but alive
    assert [h["request_id"] for h in weir.json("holds", "list")] == ["fresh"]
    weir.ok("holds", "resolve", "fresh", "--capture-checkpoint", "--force", "--note", "end of test")
    assert weir.json("user", "show", "alice")["reserved_quota"] == 0
    assert weir.ok("holds") == "no open holds\n"
    assert weir.json("audit")["ok"] is True


def test_the_default_stuck_after_follows_checkpoint_every(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "store: {backend: sqlite, path: ./weir.db}\nplugins: [{use: billing, config: {checkpoint_every: 20}}]\n"
    )
    cli = Weir("sqlite", config)
    assert cli.json("audit")["stuck_after"] == 600  # 30 x 20 s
    config.write_text(
        "store: {backend: sqlite, path: ./weir.db}\nplugins: [{use: billing, config: {checkpoint_every: 2}}]\n"
    )
    assert cli.json("audit")["stuck_after"] == 300  # never below 300 s
    assert cli.json("audit", "--stuck-after", "45")["stuck_after"] == 45
