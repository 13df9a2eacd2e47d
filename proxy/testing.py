"""The test harness for plugin authors, shipped as a pytest plugin (entry point `pytest11`).

Fixtures:
  * `fake_upstream`: a real loopback mock upstream (OpenAI, Anthropic and Gemini formats).
    `fake_upstream.script(reply=..., usage=Usage(...), status=..., ...)` says what it
    answers to the next request(s) (`Script`); its `behaviour` knobs hold for every request.
  * `make_proxy`: `await make_proxy(plugins=[MyPlugin(cfg)])` starts a real Weir in front
    of `fake_upstream` and returns a `ProxyHandle` (`.url`, `.store`, `await .chat(...)`,
    `await .settled()`).
  * `read_sse`: `events = await read_sse(response)` parses an aiohttp response's SSE body
    (also importable as `proxy.testing.sse_events`).

Billing's own harness (`billing_proxy`: the proxy with billing and your plugin, a funded
user and key) ships in `plugins.billing.testing`. A plugin test is a dozen lines with no
mocks::

    async def test_masks_a_split_email(make_proxy, fake_upstream):
        fake_upstream.script(reply=["Write to bob@exa", "mple.com"])
        proxy = await make_proxy(plugins=[RedactEmails()])
        answer = await proxy.chat("hi", stream=True)
        assert answer.text == "Write to [email]"

See docs/plugins.md, "Testing a plugin".
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry

from proxy import keys
from proxy.app import create_app
from proxy.config import Config, parse_config
from proxy.context import SSEEvent
from proxy.host import HOST, Host, TaskTracker
from proxy.mock.behaviour import MockBehaviour, Script, Usage
from proxy.mock.upstream import MockUpstream
from proxy.plugin import Plugin
from proxy.sse import SSEParser

try:
    import pytest_asyncio

    _async_fixture: Any = pytest_asyncio.fixture
except ImportError:  # the harness needs pytest-asyncio; without it the fixtures are absent
    _async_fixture = None

__all__ = [
    "Answer",
    "MockBehaviour",
    "MockUpstream",
    "ProxyHandle",
    "Script",
    "Usage",
    "host_app",
    "proxy_config",
    "reply_text",
    "sse_events",
    "start_proxy",
]

DEFAULT_MODEL = "gpt-4o-mini"


@dataclass(frozen=True, slots=True)
class Answer:
    """What a client got from Weir: the status, headers and body, and for a stream its events."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    events: tuple[SSEEvent, ...] = ()

    @property
    def json(self) -> Any:
        """The body parsed as JSON (None for a stream or a body that is not JSON)."""
        if self.events or not self.body:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    @property
    def text(self) -> str:
        """The model's answer as the client reads it (see `reply_text`)."""
        return reply_text(self.events) if self.events else _text_of(self.json)

    @property
    def error(self) -> dict[str, Any] | None:
        """The error object of an error answer (`{"message", "code", ...}`), else None."""
        payload = self.json
        if self.status < 400 or not isinstance(payload, dict):
            return None
        error = payload.get("error")
        return error if isinstance(error, dict) else None


@dataclass(slots=True)
class ProxyHandle:
    """A running Weir: its base URL, app, store and a way to await settlement."""

    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def store(self) -> Any:
        """The service a plugin published as `store` (billing publishes its ledger there)."""
        return self.app[HOST].service("store")

    @property
    def openai_base(self) -> str:
        """The base URL for `openai.AsyncOpenAI(base_url=...)`."""
        return self.url + "/v1"

    async def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None) -> Answer:
        """POST `json` to `path` (e.g. "/v1/messages") and read the whole answer."""
        async with aiohttp.ClientSession() as session:
            async with session.post(self.url + path, json=json, headers=headers) as resp:
                is_sse = resp.content_type == "text/event-stream"
                events = tuple(await sse_events(resp)) if is_sse else ()
                body = b"" if is_sse else await resp.read()
                return Answer(resp.status, resp.headers, body, events)

    async def chat(
        self,
        content: str = "hi",
        *,
        model: str = DEFAULT_MODEL,
        stream: bool = False,
        headers: dict[str, str] | None = None,
        **body: Any,
    ) -> Answer:
        """One chat completion with a single user message; `body` adds request fields
        (`max_tokens=...`). A stream asks for usage (`stream_options.include_usage`)."""
        payload: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}], **body}
        if stream:
            payload = {"stream": True, "stream_options": {"include_usage": True}, **payload}
        return await self.post("/v1/chat/completions", payload, headers)

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until every terminal hook (settlement) has finished."""
        await self.app[keys.TASKS].idle(timeout)

    async def stop(self) -> None:
        """Shut the proxy down gracefully (terminal hooks are drained)."""
        await self.runner.cleanup()


async def start_proxy(
    config: Config,
    plugins: Sequence[Plugin] | None = None,
    instance_id: str | None = None,
) -> ProxyHandle:
    """Start Weir for `config` on a free loopback port."""
    app = create_app(config, plugins=plugins, instance_id=instance_id)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.server.shutdown_grace + 2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return ProxyHandle(f"http://{host}:{port}", app, runner)


def host_app(
    config: Config | None = None, *, instance_id: str = "test-instance", tracker: TaskTracker | None = None
) -> web.Application:
    """An app with a host and nothing else: run a plugin's `lifespan` on it outside a server
    (unit tests, benchmarks). Drain `host_of(app).tasks` when done."""
    app = web.Application()
    shutdown = asyncio.Event()
    app[HOST] = Host(config or Config(), instance_id, tracker or TaskTracker(), CollectorRegistry(), shutdown)
    return app


async def sse_events(response: aiohttp.ClientResponse) -> list[SSEEvent]:
    """Read a whole SSE response body and return its events (comments dropped)."""
    parser = SSEParser()
    events: list[SSEEvent] = []
    async for chunk in response.content.iter_any():
        events.extend(i for i in parser.feed(chunk) if isinstance(i, SSEEvent))
    events.extend(i for i in parser.flush() if isinstance(i, SSEEvent))
    return events


def reply_text(events: Sequence[SSEEvent]) -> str:
    """The answer's text from events or a whole body of any dialect Weir speaks: OpenAI
    chat (`delta.content`, `message.content`) and completions (`text`), the Responses API
    (`output_text` deltas), Anthropic (`text_delta`, text blocks) and Gemini (`parts`)."""
    return "".join(_text_of(e.json) for e in events)


def _text_of(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    if payload.get("type") == "response.output_text.delta":
        return str(payload.get("delta") or "")
    if payload.get("type") == "content_block_delta":
        delta = payload.get("delta") or {}
        return str(delta.get("text") or "") if isinstance(delta, dict) else ""
    if payload.get("type") == "message":  # Anthropic, whole body
        return _texts(payload.get("content"))
    if payload.get("object") == "response":  # the Responses API, whole body
        return "".join(_texts(item.get("content")) for item in payload.get("output") or [] if isinstance(item, dict))
    parts: list[str] = []
    for choice in payload.get("choices") or payload.get("candidates") or []:
        if not isinstance(choice, dict):
            continue
        for holder in (choice.get("delta"), choice.get("message")):
            if isinstance(holder, dict) and isinstance(holder.get("content"), str):
                parts.append(holder["content"])
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        content = choice.get("content")
        if isinstance(content, dict):  # Gemini
            parts.append(_texts(content.get("parts")))
    return "".join(parts)


def _texts(blocks: Any) -> str:
    """The `text` fields of a list of content blocks or parts."""
    return "".join(str(b.get("text") or "") for b in blocks or [] if isinstance(b, dict))


def proxy_config(upstream_url: str, tmp: Path, **overrides: Any) -> Config:
    """A harness config: one mock-type upstream at `upstream_url`, SQLite in `tmp`."""
    data: dict[str, Any] = {
        "server": {"shutdown_grace": 1.0, "access_log": False},
        "store": {"backend": "sqlite", "path": str(tmp / "weir.db")},
        "upstreams": [{"name": "fake", "type": "mock", "base_url": upstream_url, "models": ["*"]}],
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) and isinstance(value, dict) else value
    return parse_config(data, env={})


if _async_fixture is not None:

    @_async_fixture  # type: ignore[untyped-decorator]
    async def fake_upstream() -> AsyncIterator[MockUpstream]:
        """A real loopback mock upstream: `fake_upstream.script(...)` scripts the next
        request(s); `fake_upstream.behaviour` knobs hold for every request."""
        mock = MockUpstream()
        await mock.start()
        yield mock
        await mock.stop()

    @_async_fixture  # type: ignore[untyped-decorator]
    async def make_proxy(
        fake_upstream: MockUpstream, tmp_path: Path
    ) -> AsyncIterator[Callable[..., Awaitable[ProxyHandle]]]:
        """Factory: `await make_proxy(plugins=[...], **config_overrides)`."""
        started: list[ProxyHandle] = []

        async def factory(plugins: Sequence[Plugin] = (), **overrides: Any) -> ProxyHandle:
            config = proxy_config(fake_upstream.url, tmp_path / f"p{len(started)}", **overrides)
            (tmp_path / f"p{len(started)}").mkdir(exist_ok=True)
            handle = await start_proxy(config, plugins=list(plugins))
            started.append(handle)
            return handle

        yield factory
        for handle in reversed(started):
            await handle.stop()

    @pytest.fixture
    def read_sse() -> Callable[[aiohttp.ClientResponse], Awaitable[list[SSEEvent]]]:
        """`events = await read_sse(response)`: the SSE events of an aiohttp response."""
        return sse_events


def unique_prefix() -> str:
    """A fresh Redis key prefix for one test."""
    return f"weirtest:{uuid.uuid4().hex[:12]}"
