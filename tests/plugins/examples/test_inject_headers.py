"""The `inject_headers` example plugin, through a real Weir in front of the loopback upstream."""

from __future__ import annotations

from typing import Any, ClassVar

import aiohttp
import pytest

from plugins.examples.inject_headers import InjectHeadersConfig, InjectHeadersPlugin
from proxy.config import PluginSpec
from proxy.dataclass_builder import ConfigError
from proxy.loader import load_plugins
from proxy.plugin import Plugin, RequestContext

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class MetadataRecorder(Plugin):
    """Listed after the injector: records the metadata it finds on each request."""

    name: ClassVar[str] = "metadata_recorder"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, str]] = []

    async def on_request(self, ctx: RequestContext) -> None:
        self.seen.append(dict(ctx.metadata))


def injector(**config: Any) -> InjectHeadersPlugin:
    return InjectHeadersPlugin(InjectHeadersConfig(**config))


async def test_upstream_headers_reach_the_upstream_with_placeholders_filled(
    make_proxy: Any, fake_upstream: Any
) -> None:
    plugin = injector(upstream={"X-Team": "blue", "X-Trace": "weir-{request_id}", "X-Model": "m={model}"})
    proxy = await make_proxy(plugins=[plugin])
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200
            assert "X-Team" not in r.headers
            rid = r.headers["x-request-id"]
    seen = fake_upstream.requests[-1].headers
    assert seen["x-team"] == "blue"
    assert seen["x-trace"] == f"weir-{rid}"
    assert seen["x-model"] == "m=gpt-4o-mini"


async def test_response_headers_reach_the_client(make_proxy: Any, fake_upstream: Any, read_sse: Any) -> None:
    plugin = injector(response={"X-Served-By": "weir", "X-Echo": "{model}/{request_id}"})
    proxy = await make_proxy(plugins=[plugin])
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/chat/completions", json=CHAT) as r:
            plain = r.headers.copy()
        async with s.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            streamed = r.headers.copy()
            events = await read_sse(r)
    for headers in (plain, streamed):
        assert headers["X-Served-By"] == "weir"
        assert headers["X-Echo"] == f"gpt-4o-mini/{headers['x-request-id']}"
    assert events[-1].data == "[DONE]"
    assert "x-served-by" not in fake_upstream.requests[-1].headers


async def test_metadata_is_shared_and_sent_as_one_header(make_proxy: Any, fake_upstream: Any) -> None:
    recorder = MetadataRecorder()
    plugin = injector(metadata={"team": "blue", "req": "{request_id}"}, metadata_header="X-Weir-Metadata")
    proxy = await make_proxy(plugins=[plugin, recorder])
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200
            rid = r.headers["x-request-id"]
    assert recorder.seen == [{"team": "blue", "req": rid}]
    assert fake_upstream.requests[-1].headers["x-weir-metadata"] == f"team=blue; req={rid}"


async def test_metadata_without_header_stays_inside_the_proxy(make_proxy: Any, fake_upstream: Any) -> None:
    recorder = MetadataRecorder()
    proxy = await make_proxy(plugins=[injector(metadata={"team": "blue"}), recorder])
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200
    assert recorder.seen == [{"team": "blue"}]
    assert not any("blue" in v for v in fake_upstream.requests[-1].headers.values())


async def test_a_client_chosen_model_cannot_split_a_header(make_proxy: Any, fake_upstream: Any) -> None:
    proxy = await make_proxy(plugins=[injector(upstream={"X-Model": "{model}"})])
    async with aiohttp.ClientSession() as s:
        body = {**CHAT, "model": "gpt\r\nx-evil: 1"}
        async with s.post(proxy.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
    seen = fake_upstream.requests[-1].headers
    assert seen["x-model"] == "gptx-evil: 1"
    assert "x-evil" not in seen


def test_loads_by_entry_point_name_with_yaml_values() -> None:
    spec = PluginSpec(use="inject_headers", config={"upstream": {"X-Tier": 2}, "metadata_header": "X-Meta"})
    (plugin,) = load_plugins((spec,))
    assert isinstance(plugin, InjectHeadersPlugin)
    assert plugin.config == InjectHeadersConfig(upstream={"X-Tier": "2"}, metadata_header="X-Meta")


def test_loads_with_no_config() -> None:
    (plugin,) = load_plugins((PluginSpec(use="plugins.examples.inject_headers:InjectHeadersPlugin"),))
    assert isinstance(plugin, InjectHeadersPlugin)
    assert plugin.config == InjectHeadersConfig()


@pytest.mark.parametrize(
    ("config", "path", "words"),
    [
        ({"upstream": "x"}, "plugins[0].config.upstream", "expected a mapping"),
        ({"response": {"X-A": ["a"]}}, "plugins[0].config.response.X-A", "expected a string"),
        ({"headers": {}}, "plugins[0].config.headers", "unknown key"),
        ({"upstream": {"X-A": "{user}"}}, "plugins[0].config", "upstream.X-A: unknown placeholder {user}"),
        ({"response": {"X-A": "{model"}}, "plugins[0].config", "response.X-A:"),
        ({"upstream": {"Content-Length": "1"}}, "plugins[0].config", "managed by the proxy"),
        ({"upstream": {"X A": "1"}}, "plugins[0].config", "not a valid header name"),
        ({"metadata": {"a=b": "1"}}, "plugins[0].config", "metadata.a=b"),
        ({"metadata_header": "bad header"}, "plugins[0].config", "metadata_header"),
    ],
)
def test_bad_config_names_the_yaml_path(config: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_plugins((PluginSpec(use="inject_headers", config=config),))
    assert info.value.path == path
    assert words in str(info.value)
