"""The bundled proxy.yaml (what `make run` serves) bills async tasks out of the box: a video
through the openai SDK, and the Midjourney- and Suno-style APIs, on its built-in mock."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from plugins.billing.apikeys import generate_key
from proxy.config import load_config
from proxy.testing import start_proxy

ROOT = Path(__file__).resolve().parents[4]
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


async def test_the_bundled_config_bills_a_video_and_the_declared_apis(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "proxy.yaml", env={})
    cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, path=str(tmp_path / "weir.db")))
    proxy = await start_proxy(cfg)
    try:
        store = proxy.store
        await store.create_user("eve")
        await store.credit("eve", 500_000)
        clear, digest, hint = generate_key()
        await store.create_key("eve", digest, hint=hint)
        client = openai.AsyncOpenAI(base_url=proxy.openai_base, api_key=clear, max_retries=0)
        video = await client.videos.create(prompt="a weir at dawn", model="sora-2")
        headers = {"Authorization": f"Bearer {clear}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            async with s.post(proxy.url + "/mj/submit/imagine", json={"prompt": "a dam"}) as r:
                mj = (await r.json())["result"]
            async with s.post(proxy.url + "/suno/submit/music", json={"prompt": "a song [mock:failed]"}) as r:
                suno = (await r.json())["data"]
        deadline = time.monotonic() + 30
        while (await client.videos.retrieve(video.id)).status != "completed" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for task_id in (video.id, mj, suno):  # the poller ends the other two
            while (task := await store.get_task(task_id)) is not None and task.open and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        await proxy.settled()
        ended = {t.id: (t.end_reason, t.charge) for t in await store.list_tasks()}
        # sora-2 4 s × $0.10, midjourney $0.05, the failed song refunded
        assert ended == {video.id: ("completed", 200_000), mj: ("completed", 25_000), suno: ("failed", 0)}
        user = await store.get_user("eve")
        assert user is not None and (user.balance, user.reserved) == (500_000 - 225_000, 0)
        assert (await store.audit(time.time(), 30)).ok
    finally:
        await proxy.stop()
