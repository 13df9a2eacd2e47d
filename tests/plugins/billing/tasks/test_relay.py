"""The core relays the async task APIs (no billing here): OpenAI's videos routes, declared
task APIs, a plugin pinning a request's upstream and path (`ctx.send_to`), the host's
`call_upstream`, and the mock upstream's scripted tasks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import aiohttp
import openai
import pytest

from proxy.config import ConfigError, parse_config
from proxy.host import UpstreamCallError, host_of
from proxy.mock.tasks import MP4_HEAD
from proxy.mock.upstream import MockUpstream
from proxy.plugin import Endpoint, Plugin, RequestContext

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

MJ = {
    "name": "midjourney",
    "submit": "/mj/submit/imagine",
    "fetch": "/mj/task/{id}/fetch",
    "model": "midjourney",
    "task_id": "/result",
    "fetch_id": "/id",
    "status": "/status",
    "progress": "/progress",
    "failure": "/failReason",
    "statuses": {
        "NOT_START": "queued",
        "SUBMITTED": "queued",
        "IN_PROGRESS": "in_progress",
        "SUCCESS": "completed",
        "FAILURE": "failed",
    },
}


class Pin(Plugin):
    """Sends task reads to the upstream `target`, mapping the client's ids with `ids`."""

    name: ClassVar[str] = "pin"
    target = "second"
    ids: ClassVar[dict[str, str]] = {}

    async def on_request(self, ctx: RequestContext) -> None:
        if ctx.endpoint in (Endpoint.VIDEO, Endpoint.VIDEO_CONTENT, Endpoint.VIDEO_DELETE):
            client_id = ctx.path.split("/")[3]
            ctx.send_to(self.target, ctx.path.replace(client_id, self.ids.get(client_id, client_id)))


@pytest.fixture
async def second() -> AsyncIterator[MockUpstream]:
    mock = MockUpstream()
    await mock.start()
    yield mock
    await mock.stop()


async def _wait_status(session: aiohttp.ClientSession, url: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        async with session.get(url) as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
        if body["status"] == status or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.02)


async def test_videos_are_relayed_and_progress_to_completion(make_proxy: Any, fake_upstream: MockUpstream) -> None:
    fake_upstream.tasks.step_seconds = 0.05
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/videos", json={"prompt": "a weir at dawn", "seconds": "8"}) as r:
            assert r.status == 200
            video = await r.json()
        assert (video["object"], video["status"], video["seconds"], video["model"]) == (
            "video",
            "queued",
            "8",
            "sora-2",
        )
        done = await _wait_status(s, f"{proxy.url}/v1/videos/{video['id']}", "completed")
        assert done["progress"] == 100
        async with s.get(f"{proxy.url}/v1/videos/{video['id']}/content") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "video/mp4"
            assert (await r.read()).startswith(MP4_HEAD)
        async with s.delete(f"{proxy.url}/v1/videos/{video['id']}") as r:
            assert (r.status, (await r.json())["deleted"]) == (200, True)
        async with s.get(f"{proxy.url}/v1/videos/{video['id']}") as r:
            assert r.status == 404 and "error" in await r.json()
    assert [q.path for q in fake_upstream.requests][:2] == ["/v1/videos", f"/v1/videos/{video['id']}"]


async def test_the_openai_sdk_creates_videos_as_multipart(make_proxy: Any, fake_upstream: MockUpstream) -> None:
    proxy = await make_proxy()
    client = openai.AsyncOpenAI(base_url=proxy.openai_base, api_key="unused", max_retries=0)
    video = await client.videos.create(prompt="a river", model="sora-2-pro", seconds="12", size="1792x1024")
    assert (video.status, video.seconds, video.size, video.model) == ("queued", "12", "1792x1024", "sora-2-pro")
    assert fake_upstream.requests[-1].headers["content-type"].startswith("multipart/form-data")
    again = await client.videos.retrieve(video.id)
    assert again.id == video.id


async def test_a_plugin_pins_the_upstream_and_the_path(
    make_proxy: Any, fake_upstream: MockUpstream, second: MockUpstream
) -> None:
    upstreams = [
        {"name": "fake", "type": "mock", "base_url": fake_upstream.url, "models": ["*"]},
        {"name": "second", "type": "mock", "base_url": second.url, "models": ["*"]},
    ]
    async with aiohttp.ClientSession() as s:
        async with s.post(second.url + "/v1/videos", json={"prompt": "on the second upstream"}) as r:
            real = (await r.json())["id"]
        Pin.ids = {"video_mine": real}
        proxy = await make_proxy(plugins=[Pin()], upstreams=upstreams)
        async with s.get(proxy.url + "/v1/videos/video_mine?variant=video") as r:
            assert r.status == 200
            assert (await r.json())["id"] == real
    assert [(q.method, q.path, q.query) for q in second.requests][-1] == (
        "GET",
        f"/v1/videos/{real}",
        {"variant": "video"},
    )
    assert not [q for q in fake_upstream.requests if q.method == "GET"]


async def test_pinning_an_unknown_upstream_is_a_502(make_proxy: Any, fake_upstream: MockUpstream) -> None:
    class Nowhere(Pin):
        target = "gone"

    proxy = await make_proxy(plugins=[Nowhere()])
    async with aiohttp.ClientSession() as s, s.get(proxy.url + "/v1/videos/video_x") as r:
        body = await r.json()
    assert r.status == 502 and body["error"]["code"] == "upstream_unavailable" and "'gone'" in body["error"]["message"]


async def test_declared_task_apis_are_relayed(make_proxy: Any, fake_upstream: MockUpstream) -> None:
    fake_upstream.tasks.step_seconds = 0
    proxy = await make_proxy(task_apis=[MJ])
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/mj/submit/imagine", json={"prompt": "a dam"}) as r:
            submitted = await r.json()
        assert (r.status, submitted["code"]) == (200, 1)
        async with s.get(f"{proxy.url}/mj/task/{submitted['result']}/fetch") as r:
            fetched = await r.json()
        assert (r.status, fetched["status"], fetched["progress"]) == (200, "SUCCESS", "100%")
    assert fake_upstream.requests[0].path == "/mj/submit/imagine"


async def test_the_host_calls_an_upstream_by_name(make_proxy: Any, fake_upstream: MockUpstream) -> None:
    proxy = await make_proxy()
    host = host_of(proxy.app)
    created = await host.call_upstream(
        "fake", "POST", "/v1/videos", body=b'{"prompt": "x"}', headers={"Content-Type": "application/json"}
    )
    assert created.status == 200 and created.headers["content-type"].startswith("application/json")
    missing = await host.call_upstream("fake", "GET", "/v1/videos/video_nope")
    assert missing.status == 404
    with pytest.raises(UpstreamCallError, match="'elsewhere' is not configured"):
        await host.call_upstream("elsewhere", "GET", "/v1/videos/x")


def test_a_bad_task_api_names_its_yaml_path() -> None:
    with pytest.raises(ConfigError, match=r"task_apis\[0\]: fetch: expected one \{id\}"):
        parse_config({"task_apis": [{**MJ, "fetch": "/mj/task/fetch"}]}, env={})
    with pytest.raises(ConfigError, match=r"task_apis\[1\].name: duplicate task API name"):
        parse_config({"task_apis": [MJ, {**MJ, "submit": "/b", "fetch": "/b/{id}"}]}, env={})
    with pytest.raises(ConfigError, match=r"task_apis\[0\].statuses.DONE: expected one of"):
        parse_config({"task_apis": [{**MJ, "statuses": {"DONE": "finished"}}]}, env={})
    with pytest.raises(ConfigError, match=r"task_apis\[0\]: submit: expected a path"):
        parse_config({"task_apis": [{**MJ, "submit": "/v1/videos"}]}, env={})
