"""Fixtures for task billing: a real Weir with billing, on SQLite and on Redis, in front of
the mock upstream (its videos, Midjourney- and Suno-style task APIs), with a funded user."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from plugins.billing.apikeys import generate_key
from plugins.billing.config import BillingConfig
from plugins.billing.plugin import BillingPlugin
from plugins.billing.store.base import Store
from plugins.billing.store.tasks import Task
from proxy.host import build_config
from proxy.mock.upstream import MockUpstream
from proxy.testing import ProxyHandle, proxy_config, start_proxy

QPU = 500_000
PRICES: dict[str, Any] = {
    "sora-2": {"per_second": 0.10},  # 4 s: $0.40 = 200 000 units
    "sora-2-pro": {"per_second": 0.30},
    "sora-usage": {"per_second": 0.10, "input": 1, "output": 2},
    "midjourney": {"per_request": 0.05},  # 25 000 units
    "chirp-v3-5": {"per_request": 0.10, "per_second": 0, "input": 1, "output": 2},  # 50 000 units
    "mock-gpt*": {"input": 0.15, "output": 0.60},
}
SIZES = {"sora-2-pro*": {"1792x1024": "5/3", "1024x1792": "5/3"}}
MJ: dict[str, Any] = {
    "name": "midjourney",
    "submit": "/mj/submit/imagine",
    "fetch": "/mj/task/{id}/fetch",
    "model": "midjourney",
    "task_id": "/result",
    "fetch_id": "/id",
    "status": "/status",
    "progress": "/progress",
    "failure": "/failReason",
    "usage": "/usage",
    "statuses": {
        "NOT_START": "queued",
        "SUBMITTED": "queued",
        "IN_PROGRESS": "in_progress",
        "SUCCESS": "completed",
        "FAILURE": "failed",
    },
}
SUNO: dict[str, Any] = {
    "name": "suno",
    "submit": "/suno/submit/music",
    "fetch": "/suno/fetch/{id}",
    "model": "chirp-v3-5",
    "model_field": "mv",
    "task_id": "/data",
    "fetch_id": "/data/task_id",
    "status": "/data/status",
    "progress": "/data/progress",
    "failure": "/data/fail_reason",
    "usage": "/data/usage",
    "statuses": {
        "SUBMITTED": "queued",
        "QUEUED": "queued",
        "IN_PROGRESS": "in_progress",
        "SUCCESS": "completed",
        "FAILURE": "failed",
    },
}
FUNDS = 10_000_000
#: No poll unless a test asks for the poller: clients' reads end the tasks.
NO_POLLS = {"poll_every": 3600}


@dataclass(slots=True)
class Tasks:
    """A running billed proxy with one funded user (and a second one, `bob`)."""

    proxy: ProxyHandle
    upstream: MockUpstream
    key: str
    key_id: str
    bob: str
    user: str = "alice"

    @property
    def store(self) -> Store:
        return self.proxy.store

    def openai(self, key: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.proxy.openai_base, api_key=key or self.key, max_retries=0)

    async def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        async with aiohttp.ClientSession() as s, s.request(method, self.proxy.url + path, headers=headers, **kw) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.read()

    async def wallet(self, user: str = "alice") -> tuple[int, int, int, int]:
        """(balance, reserved, used, request_count) once settlement is done."""
        await self.proxy.settled()
        u = await self.store.get_user(user)
        assert u is not None
        return u.balance, u.reserved, u.used, u.request_count

    async def ended(self, task_id: str, timeout: float = 20.0) -> Task:
        """Wait until the task has ended (a poller's or a read's doing)."""
        deadline = time.monotonic() + timeout
        while True:
            await self.proxy.settled()
            task = await self.store.get_task(task_id)
            assert task is not None
            if not task.open:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} did not end: {task}")
            await asyncio.sleep(0.05)

    async def poll_until(self, path: str, done: Callable[[Any], bool], timeout: float = 20.0) -> Any:
        """GET `path` until `done(answer)`."""
        deadline = time.monotonic() + timeout
        while True:
            status, body = await self.call("GET", path)
            assert status == 200, body
            if done(body) or time.monotonic() > deadline:
                return body
            await asyncio.sleep(0.03)

    async def audit_ok(self) -> None:
        await self.proxy.settled()
        report = await self.store.audit(time.time(), 30)
        assert report.ok, report


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each task test runs on both stores (Redis: the suite's private redis-server)."""
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    return str(request.param)


TasksFactory = Callable[..., Awaitable[Tasks]]


@pytest_asyncio.fixture
async def tasks(
    backend: str, fake_upstream: MockUpstream, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[TasksFactory]:
    """Factory: `await tasks(key_quota=None, **tasks_config)` → a running `Tasks`."""
    started: list[Tasks] = []
    fake_upstream.tasks.step_seconds = 0.05

    async def factory(key_quota: int | None = None, funds: int = FUNDS, **task_cfg: Any) -> Tasks:
        overrides: dict[str, Any] = {"task_apis": [MJ, SUNO]}
        if backend == "redis":
            url = request.getfixturevalue("redis_url")
            overrides["store"] = {"backend": "redis", "url": url, "prefix": f"weirtest:{uuid.uuid4().hex[:10]}"}
        cfg = proxy_config(fake_upstream.url, tmp_path, **overrides)
        tasks_cfg = {**NO_POLLS, "size_multipliers": SIZES, **task_cfg}
        plugin = BillingPlugin(
            build_config(BillingConfig, {"quota_per_usd": QPU, "pricing": {"models": PRICES}, "tasks": tasks_cfg})
        )
        handle = await start_proxy(cfg, plugins=[plugin])
        store = handle.store
        keys = []
        for name in ("alice", "bob"):
            await store.create_user(name)
            await store.credit(name, funds, note="test funding")
            clear, digest, hint = generate_key()
            key = await store.create_key(name, digest, name=f"{name}-key", quota=key_quota, hint=hint)
            keys.append((clear, key.id))
        t = Tasks(handle, fake_upstream, keys[0][0], keys[0][1], keys[1][0])
        started.append(t)
        return t

    yield factory
    for t in started:
        await t.audit_ok()
        await t.proxy.stop()
        drop = getattr(t.store, "drop_all", None)
        if drop is not None:
            await t.store.open()
            await drop()
            await t.store.close()
