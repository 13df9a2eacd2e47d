"""Task billing end to end (spec §9), on SQLite and Redis: one test per way a task ends,
ownership, the declared Midjourney- and Suno-style APIs, and the money to the unit."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from plugins.billing.store.base import HoldState
from plugins.billing.store.tasks import TASK_OWNER

from .conftest import FUNDS, Tasks, TasksFactory

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

SORA_4S = 200_000  # 4 s × $0.10 × 500 000


async def row_of(t: Tasks, task_id: str) -> Any:
    await t.proxy.settled()
    rows = [r for r in await t.store.query_logs(user="alice", limit=100) if r.request_id == task_id]
    assert len(rows) == 1, rows
    return rows[0]


async def test_completed_is_charged_the_held_price(tasks: TasksFactory) -> None:
    t = await tasks()
    client = t.openai()
    video = await client.videos.create(prompt="a weir", model="sora-2", seconds="8")
    assert video.id.startswith("video_") and video.status == "queued"
    assert await t.wallet() == (FUNDS, 2 * SORA_4S, 0, 0), "held at submit"
    hold = await t.store.get_hold(video.id)
    assert hold is not None and hold.instance_id == TASK_OWNER
    upstream_id = t.upstream.requests[-1].path  # the mock saw the submit only
    assert upstream_id == "/v1/videos"
    done = await t.poll_until(f"/v1/videos/{video.id}", lambda b: b["status"] == "completed")
    assert done["id"] == video.id, "the client sees Weir's id, never the upstream's"
    again = await client.videos.retrieve(video.id)
    assert (again.id, again.status, again.progress) == (video.id, "completed", 100)
    task = await t.ended(video.id)
    assert (task.end_reason, task.charge, task.seconds) == ("completed", 2 * SORA_4S, 8)
    assert await t.wallet() == (FUNDS - 2 * SORA_4S, 0, 2 * SORA_4S, 1)
    row = await row_of(t, video.id)
    assert (row.estimate, row.charge, row.details.end_reason, row.details.usage_source) == (
        2 * SORA_4S,
        2 * SORA_4S,
        "completed",
        "task",
    )
    assert (row.details.model, row.details.seconds, row.details.upstream) == ("sora-2", 8, "fake")
    status, content = await t.call("GET", f"/v1/videos/{video.id}/content")
    assert status == 200 and content.startswith(b"\x00\x00\x00\x18ftyp")
    assert await t.wallet() == (FUNDS - 2 * SORA_4S, 0, 2 * SORA_4S, 1), "reads are free"


async def test_size_multiplier_and_group_are_applied_exactly(tasks: TasksFactory) -> None:
    t = await tasks()
    await t.store.set_user("alice", group="vip")
    video = await t.openai().videos.create(prompt="wide", model="sora-2-pro", seconds="12", size="1792x1024")
    # 12 s × $0.30 × 5/3 = $6 → 3 000 000 units (no group multiplier configured: 1)
    task = await t.store.get_task(video.id)
    assert task is not None and task.amount == 3_000_000


@pytest.mark.parametrize(
    ("usage", "charge"),
    [
        ({"input_tokens": 100_000, "output_tokens": 50_000}, 100_000),  # $0.20: below the $0.80 held
        ({"input_tokens": 1_000_000, "output_tokens": 500_000}, 1_000_000),  # $2.00: above it
    ],
)
async def test_completed_with_usage_is_recomputed(tasks: TasksFactory, usage: dict[str, int], charge: int) -> None:
    t = await tasks()
    t.upstream.tasks.usage = usage
    status, video = await t.call("POST", "/v1/videos", json={"prompt": "x", "model": "sora-usage", "seconds": 8})
    assert status == 200
    await t.poll_until(f"/v1/videos/{video['id']}", lambda b: b["status"] == "completed")
    task = await t.ended(video["id"])
    assert (task.amount, task.charge) == (400_000, charge)
    assert await t.wallet() == (FUNDS - charge, 0, charge, 1)
    row = await row_of(t, video["id"])
    assert (row.estimate, row.charge, row.details.usage_source) == (400_000, charge, "upstream")
    assert (row.details.input, row.details.output) == (usage["input_tokens"], usage["output_tokens"])


async def test_failed_refunds_everything(tasks: TasksFactory) -> None:
    t = await tasks(key_quota=1_000_000)
    t.upstream.tasks.script = "failed"
    status, video = await t.call("POST", "/v1/videos", json={"prompt": "x", "seconds": "4"})
    assert status == 200
    key = await t.store.get_key(t.key_id)
    assert key is not None and key.reserved == SORA_4S
    done = await t.poll_until(f"/v1/videos/{video['id']}", lambda b: b["status"] == "failed")
    assert done["error"]["code"] == "mock_failure"
    task = await t.ended(video["id"])
    assert (task.end_reason, task.charge) == ("failed", 0)
    assert await t.wallet() == (FUNDS, 0, 0, 0)
    key = await t.store.get_key(t.key_id)
    assert key is not None and (key.balance, key.reserved, key.used, key.request_count) == (1_000_000, 0, 0, 0)
    row = await row_of(t, video["id"])
    assert (row.estimate, row.charge, row.details.end_reason) == (SORA_4S, 0, "failed")
    assert "upstream:" in row.details.error
    hold = await t.store.get_hold(video["id"])
    assert hold is not None and hold.state is HoldState.RELEASED


async def test_a_subscription_is_refunded_too(tasks: TasksFactory) -> None:
    from plugins.billing.store.base import Plan

    t = await tasks()
    t.upstream.tasks.script = "failed"
    await t.store.create_plan(Plan("video-plan", 5_000_000, "month"))
    sub = await t.store.grant_subscription("alice", "video-plan", 0, 4_000_000_000)
    status, video = await t.call("POST", "/v1/videos", json={"prompt": "x"})
    assert status == 200
    hold = await t.store.get_hold(video["id"])
    assert hold is not None and hold.subscription_id == sub.id
    await t.poll_until(f"/v1/videos/{video['id']}", lambda b: b["status"] == "failed")
    await t.ended(video["id"])
    (after,) = await t.store.list_subscriptions("alice")
    assert (after.balance, after.reserved, after.used) == (5_000_000, 0, 0)
    assert await t.wallet() == (FUNDS, 0, 0, 0)


async def test_deleted_before_completion_is_released(tasks: TasksFactory) -> None:
    t = await tasks()
    t.upstream.tasks.script = "stuck"
    status, video = await t.call("POST", "/v1/videos", json={"prompt": "x"})
    status, gone = await t.call("DELETE", f"/v1/videos/{video['id']}")
    assert (status, gone["id"], gone["deleted"]) == (200, video["id"], True)
    task = await t.ended(video["id"])
    assert (task.end_reason, task.charge) == ("deleted", 0)
    assert await t.wallet() == (FUNDS, 0, 0, 0)


async def test_content_of_a_finished_task_is_paid_for_before_it_leaves(tasks: TasksFactory) -> None:
    t = await tasks()
    t.upstream.tasks.script = "stuck"  # only the finish below completes it
    status, video = await t.call("POST", "/v1/videos", json={"prompt": "x"})
    t.upstream.tasks.finish(_only(t), "completed")
    status, content = await t.call("GET", f"/v1/videos/{video['id']}/content")
    assert status == 200
    task = await t.store.get_task(video["id"])
    assert task is not None and (task.end_reason, task.charge) == ("completed", SORA_4S)
    status, _ = await t.call("DELETE", f"/v1/videos/{video['id']}")
    assert status == 200 and await t.wallet() == (FUNDS - SORA_4S, 0, SORA_4S, 1), (
        "a delete after completion refunds nothing"
    )


def _only(t: Tasks) -> str:
    (task_id,) = t.upstream.tasks.tasks
    return task_id


async def test_forgotten_by_the_upstream_is_released(tasks: TasksFactory) -> None:
    t = await tasks(poll_every=0.05)
    t.upstream.tasks.script = "forgotten"
    status, video = await t.call("POST", "/v1/videos", json={"prompt": "x"})
    task = await t.ended(video["id"])
    assert (task.end_reason, task.charge, task.misses) == ("unknown", 0, 1)
    assert await t.wallet() == (FUNDS, 0, 0, 0)
    row = await row_of(t, video["id"])
    assert "404" in row.details.error


async def test_older_than_max_age_is_released(tasks: TasksFactory) -> None:
    t = await tasks(poll_every=0.05, max_age=0.5)
    t.upstream.tasks.script = "stuck"
    status, video = await t.call("POST", "/v1/videos", json={"prompt": "x"})
    task = await t.ended(video["id"])
    assert (task.end_reason, task.charge) == ("expired", 0)
    assert await t.wallet() == (FUNDS, 0, 0, 0)


async def test_the_poller_ends_a_task_nobody_reads(tasks: TasksFactory) -> None:
    t = await tasks(poll_every=0.05)
    status, video = await t.call("POST", "/v1/videos", json={"prompt": "x"})
    task = await t.ended(video["id"])
    assert (task.end_reason, task.charge) == ("completed", SORA_4S) and task.polls >= 1
    assert await t.wallet() == (FUNDS - SORA_4S, 0, SORA_4S, 1)


async def test_a_refused_submit_is_released_at_once(tasks: TasksFactory) -> None:
    t = await tasks(key_quota=1_000_000)
    t.upstream.behaviour.fail_status, t.upstream.behaviour.fail_times = 400, 1
    status, body = await t.call("POST", "/v1/videos", json={"prompt": "x"})
    assert status == 400 and "error" in body
    assert await t.wallet() == (FUNDS, 0, 0, 0)
    key = await t.store.get_key(t.key_id)
    assert key is not None and (key.balance, key.reserved) == (1_000_000, 0)
    (row,) = await t.store.query_logs(user="alice")
    assert (row.charge, row.estimate, row.details.end_reason, row.details.status) == (0, SORA_4S, "upstream_error", 400)
    assert await t.store.list_tasks() == []


async def test_a_refusal_inside_a_200_is_released(tasks: TasksFactory) -> None:
    t = await tasks()
    t.upstream.tasks.refuse = "banned prompt"
    status, body = await t.call("POST", "/mj/submit/imagine", json={"prompt": "x"})
    assert (status, body["code"], body["description"]) == (200, 4, "banned prompt")
    assert await t.wallet() == (FUNDS, 0, 0, 0)
    (row,) = await t.store.query_logs(user="alice")
    assert (row.charge, row.estimate, row.details.end_reason) == (0, 25_000, "refused")


async def test_another_user_cannot_see_read_or_delete_a_task(tasks: TasksFactory) -> None:
    t = await tasks()
    status, video = await t.call("POST", "/v1/videos", json={"prompt": "mine"})
    vid = video["id"]
    for method, path in (
        ("GET", f"/v1/videos/{vid}"),
        ("GET", f"/v1/videos/{vid}/content"),
        ("DELETE", f"/v1/videos/{vid}"),
        ("GET", "/v1/videos/video_nonexistent"),
    ):
        status, body = await t.call(method, path, key=t.bob)
        assert status == 404 and body["error"]["code"] == "task_not_found", (method, path, body)
    assert [r.method for r in t.upstream.requests] == ["POST"], "nothing of it reached the upstream"
    task = await t.store.get_task(vid)
    assert task is not None and task.open
    await t.poll_until(f"/v1/videos/{vid}", lambda b: b["status"] == "completed")
    await t.ended(vid)


async def test_midjourney_style_tasks(tasks: TasksFactory) -> None:
    t = await tasks()
    status, body = await t.call("POST", "/mj/submit/imagine", json={"prompt": "a dam"})
    assert status == 200 and body["code"] == 1 and body["result"].startswith("task_")
    assert body["result"] not in t.upstream.tasks.tasks
    done = await t.poll_until(f"/mj/task/{body['result']}/fetch", lambda b: b["status"] == "SUCCESS")
    assert (done["id"], done["progress"]) == (body["result"], "100%")
    task = await t.ended(body["result"])
    assert (task.api, task.model, task.charge) == ("midjourney", "midjourney", 25_000)
    assert await t.wallet() == (FUNDS - 25_000, 0, 25_000, 1)


async def test_suno_style_tasks_with_usage(tasks: TasksFactory) -> None:
    t = await tasks()
    t.upstream.tasks.usage = {"prompt_tokens": 20_000, "completion_tokens": 10_000}
    status, body = await t.call("POST", "/suno/submit/music", json={"prompt": "a song", "mv": "chirp-v3-5"})
    assert status == 200 and body["code"] == "success"
    sid = body["data"]
    done = await t.poll_until(f"/suno/fetch/{sid}", lambda b: b["data"]["status"] == "SUCCESS")
    assert done["data"]["task_id"] == sid
    task = await t.ended(sid)
    # (20 000 × $1 + 10 000 × $2) / 1M = $0.04 → 20 000 units, below the 50 000 held
    assert (task.model, task.amount, task.charge) == ("chirp-v3-5", 50_000, 20_000)


async def test_a_task_model_is_refused_on_ordinary_endpoints(tasks: TasksFactory) -> None:
    t = await tasks()
    body = {"model": "sora-2", "messages": [{"role": "user", "content": "hi"}]}
    status, answer = await t.call("POST", "/v1/chat/completions", json=body)
    assert status == 400 and answer["error"]["code"] == "model_not_priced"
    status, answer = await t.call("POST", "/v1/videos", json={"prompt": "x", "model": "mock-gpt-4"})
    assert status == 400 and "per token" in answer["error"]["message"]
    status, answer = await t.call("POST", "/v1/videos", json={"prompt": "x", "seconds": "forever"})
    assert status == 400 and answer["error"]["code"] == "invalid_request_error"
    assert await t.wallet() == (FUNDS, 0, 0, 0)


async def test_insufficient_funds_refuse_the_submit(tasks: TasksFactory) -> None:
    t = await tasks(funds=100_000)
    status, answer = await t.call("POST", "/v1/videos", json={"prompt": "x"})
    assert status == 402 and answer["error"]["code"] == "insufficient_quota"
    assert "$0.4" in answer["error"]["message"]
    assert t.upstream.requests == []


async def test_the_price_list_shows_task_prices(tasks: TasksFactory) -> None:
    t = await tasks()
    async with aiohttp.ClientSession() as s, s.get(t.proxy.url + "/api/pricing") as r:
        assert r.status == 200
        models = {m["model"]: m for m in (await r.json())["models"]}
    assert (models["sora-2"]["unit"], models["sora-2"]["price"]) == ("per_task", {"per_second": "0.1"})
    assert models["chirp-v3-5"]["price"]["per_request"] == "0.1" and models["chirp-v3-5"]["price"]["input"] == "1"


async def test_task_ends_show_in_the_money_metrics(tasks: TasksFactory) -> None:
    """A completed task counts as a charge of its price for (model, group); a failed one as
    a release by its end reason; each once, however many reads saw the end."""
    from prometheus_client.parser import text_string_to_metric_families

    t = await tasks()
    video = await t.openai().videos.create(prompt="a weir", model="sora-2", seconds="4")
    await t.poll_until(f"/v1/videos/{video.id}", lambda b: b["status"] == "completed")
    await t.poll_until(f"/v1/videos/{video.id}", lambda b: b["status"] == "completed")  # a second read of the end
    await t.ended(video.id)
    t.upstream.tasks.script = "failed"
    status, failed = await t.call("POST", "/v1/videos", json={"prompt": "x", "seconds": "4"})
    assert status == 200
    await t.poll_until(f"/v1/videos/{failed['id']}", lambda b: b["status"] == "failed")
    await t.ended(failed["id"])
    async with aiohttp.ClientSession() as s, s.get(t.proxy.url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    got = {
        (m.name, tuple(sorted(m.labels.items()))): m.value
        for family in text_string_to_metric_families(text)
        for m in family.samples
    }
    labels = (("group", "default"), ("model", "sora-2"))
    assert got[("weir_billing_charged_quota_total", labels)] == SORA_4S
    assert got[("weir_billing_charges_total", labels)] == 1
    assert got[("weir_billing_releases_total", (("reason", "failed"),))] == 1
