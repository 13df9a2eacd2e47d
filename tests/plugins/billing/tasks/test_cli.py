"""`weir tasks list|show|settle`, `weir audit` over tasks and `weir pricing show` of a task
model, run as real subprocesses on SQLite and Redis. Tasks are planted through the store
(what the proxy would do at submit); everything else goes through the CLI."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from plugins.billing.store.base import Hold, LogDetails
from plugins.billing.store.tasks import Task
from tests.plugins.billing.cli.test_cli_accounts import Weir, weir  # noqa: F401  (fixture)

TERMS = (
    '{"model":"sora-2","multiplier":"1","n":1,"per_request":"0","per_second":"0.10","price_version":"pv",'
    '"quota_per_usd":500000,"seconds":8,"size":"720x1280","size_factor":"1","tokens":null,"v":1}'
)


async def _plant(cli: Weir, key_id: str, *ids: str) -> None:
    store = await cli.with_store()
    try:
        now = time.time()
        for tid in ids:
            assert isinstance(await store.hold(tid, "alice", key_id, 400_000, None, "pv", 86400, "i-1", "sora-2"), Hold)
            task = Task(
                tid,
                "alice",
                key_id,
                "videos",
                "sora-2",
                "up",
                "sora-2",
                "up-" + tid,
                400_000,
                8,
                TERMS,
                "k",
                "default",
                now,
                status="in_progress",
                progress=40,
                next_poll_at=now + 5,
            )
            assert await store.open_task(task)
    finally:
        await store.close()


def test_tasks_are_listed_shown_and_settled_by_hand(weir: Weir) -> None:  # noqa: F811
    weir.ok("user", "add", "alice", "--usd", "10")
    key_id = weir.json("key", "create", "alice", "--quota", "1000000")["id"]
    asyncio.run(_plant(weir, key_id, "video_a", "video_b"))

    listed = weir.json("tasks", "list")
    assert [t["id"] for t in listed] == ["video_b", "video_a"]
    assert (listed[0]["held"], listed[0]["held_usd"], listed[0]["seconds"], listed[0]["state"]) == (
        400_000,
        "0.800000",
        8,
        "open",
    )
    assert "video_a" in weir.ok("tasks", "list", "--user", "alice", "--status", "in_progress")
    assert weir.json("tasks", "list", "--status", "ended") == []
    assert "unknown user" in weir.fail("tasks", "list", "--user", "nobody")
    assert weir.run("audit").returncode == 0, "open tasks are neither orphans nor stuck"

    assert "weir tasks settle video_a" in weir.fail("holds", "resolve", "video_a", "--release", "--note", "x")
    out = weir.json("tasks", "settle", "video_a", "--release", "--note", "upstream lost it (ticket 42)")
    assert (out["settled_now"], out["charged"], out["end_reason"]) == (True, 0, "resolved_by_hand")
    again = weir.json("tasks", "settle", "video_a", "--capture", "--note", "second thoughts")
    assert (again["settled_now"], again["charged"]) == (False, 0)
    done = weir.json("tasks", "settle", "video_b", "--capture", "--note", "delivered by hand")
    assert (done["settled_now"], done["charged"], done["charged_usd"]) == (True, 400_000, "0.800000")

    shown = weir.json("tasks", "show", "video_a")
    assert (shown["state"], shown["end_reason"], shown["charge"], shown["note"]) == (
        "ended",
        "resolved_by_hand",
        0,
        "upstream lost it (ticket 42)",
    )
    assert "resolved_by_hand" in weir.ok("tasks", "show", "video_b")
    assert "unknown task" in weir.fail("tasks", "show", "video_zzz")
    assert "--note" in weir.fail("tasks", "settle", "video_b", "--capture", "--note", " ")

    user = weir.json("user", "show", "alice")
    assert (user["balance_quota"], user["reserved_quota"], user["used_quota"], user["request_count"]) == (
        5_000_000 - 400_000,
        0,
        400_000,
        1,
    )
    rows = {r["request_id"]: r for r in weir.json("logs", "--user", "alice")}
    assert (rows["video_a"]["charge"], rows["video_a"]["error"], rows["video_a"]["seconds"]) == (
        0,
        "upstream lost it (ticket 42)",
        8,
    )
    assert rows["video_b"]["end_reason"] == "resolved_by_hand"
    assert weir.run("audit").returncode == 0


def test_the_audit_finds_a_task_without_its_hold(weir: Weir) -> None:  # noqa: F811
    weir.ok("user", "add", "alice", "--usd", "10")
    key_id = weir.json("key", "create", "alice")["id"]
    asyncio.run(_plant(weir, key_id, "video_a"))

    async def release_behind_the_tasks_back() -> None:
        store = await weir.with_store()
        try:
            await store.release("video_a", LogDetails(end_reason="oops", usage_source="none"))
        finally:
            await store.close()

    asyncio.run(release_behind_the_tasks_back())
    bad = weir.run("audit")
    assert bad.returncode == 1 and "task video_a is open" in bad.stdout, bad.stdout
    weir.ok("tasks", "settle", "video_a", "--release", "--note", "tidy up")
    assert weir.run("audit").returncode == 0


@pytest.mark.parametrize("weir", ["sqlite"], indirect=True)
def test_pricing_show_gives_a_task_models_prices(weir: Weir, tmp_path: Path) -> None:  # noqa: F811
    weir.config.write_text(
        "store: {backend: sqlite, path: ./weir.db}\n"
        "plugins: [{use: billing, config: {pricing: {models: {sora-2-pro: {per_second: 0.30, per_request: 0.05},"
        " suno: {per_request: 0.1, per_second: 0, input: 1, output: 2}}}}}]\n"
    )
    shown = weir.json("pricing", "show", "sora-2-pro")
    assert shown["prices"] == {"per_request": "0.05", "per_second": "0.3"}
    assert "per second" in shown["unit"]
    assert weir.json("pricing", "show", "suno")["prices"]["input"] == "1"
    assert "per_second" in weir.ok("pricing", "show", "sora-2-pro")
