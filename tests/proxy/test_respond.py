"""The one responder: error answers in the endpoint's dialect, before headers (a JSON body)
and after them (an error event); unknown paths and methods answer JSON 404/405 in the
dialect their path implies; the core's own refusals are `Reject`s like a plugin's."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from proxy.context import Dialect, Endpoint
from proxy.dialects import error_event
from proxy.plugin import Plugin, Reject, RequestContext
from proxy.respond import path_dialect


async def fetch(method: str, url: str, **kw: Any) -> tuple[int, CIMultiDict[str], Any]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:
        assert r.content_type == "application/json"
        return r.status, CIMultiDict(r.headers), orjson.loads(await r.read())


@pytest.mark.parametrize(
    ("method", "path", "status", "shape"),
    [
        ("GET", "/nope", 404, "openai"),
        ("POST", "/v1/chat/completion", 404, "openai"),
        ("GET", "/v2/anything", 404, "openai"),
        ("GET", "/v1/chat/completions", 405, "openai"),
        ("DELETE", "/v1/embeddings", 405, "openai"),
        ("GET", "/v1/messages", 405, "anthropic"),
        ("POST", "/v1/messages/batches", 404, "anthropic"),
        ("GET", "/v1beta/models/mock-gemini:generateContent", 405, "gemini"),
        ("POST", "/v1beta/tunedModels", 404, "gemini"),
        ("POST", "/healthz", 405, "openai"),
    ],
)
async def test_unknown_paths_and_methods_answer_json_in_the_path_s_dialect(
    make_proxy: Any, method: str, path: str, status: int, shape: str
) -> None:
    proxy = await make_proxy()
    got, headers, body = await fetch(method, proxy.url + path)
    assert got == status
    code = "not_found" if status == 404 else "method_not_allowed"
    if shape == "anthropic":
        assert body["type"] == "error" and body["error"]["code"] == code
    elif shape == "gemini":
        assert body["error"]["code"] == status and body["error"]["details"][0]["reason"] == code
    else:
        assert body["error"]["code"] == code and body["error"]["type"] == "invalid_request_error"
    if status == 405:
        assert "POST" in headers["Allow"] or "GET" in headers["Allow"]
        assert method in body["error"]["message"]


async def test_known_routes_still_answer(make_proxy: Any) -> None:
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as s, s.get(proxy.url + "/healthz") as r:
        assert r.status == 200
    got, _, body = await fetch(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert got == 200 and body["object"] == "chat.completion"


async def test_the_core_s_refusals_and_a_plugin_s_reject_share_one_shape(make_proxy: Any) -> None:
    class Refuser(Plugin):
        name = "refuser"

        async def on_request(self, ctx: RequestContext) -> None:
            raise Reject(429, "slow_down", "not now", headers={"Retry-After": "3"})

    proxy = await make_proxy(plugins=[Refuser()])
    status, headers, body = await fetch(
        "POST", proxy.url + "/v1/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and body["error"]["code"] == "invalid_request_error" and headers["x-request-id"]
    status, headers, body = await fetch(
        "POST", proxy.url + "/v1/messages", json={"model": "mock-claude", "max_tokens": 5, "messages": []}
    )
    assert status == 429 and headers["Retry-After"] == "3" and headers["x-request-id"]
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "not now", "code": "slow_down"}}


async def test_a_reject_that_cannot_be_answered_is_the_plugin_s_failure(make_proxy: Any) -> None:
    class BadReject(Plugin):
        name = "bad-reject"

        async def on_request(self, ctx: RequestContext) -> None:
            raise Reject(429, "slow_down", "not now", headers={"Retry-After": 3})  # type: ignore[dict-item]

    proxy = await make_proxy(plugins=[BadReject()])
    status, _, body = await fetch(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 500 and body["error"]["code"] == "plugin_failed"


@pytest.mark.parametrize(
    ("endpoint", "dialect", "event_line", "payload"),
    [
        (
            Endpoint.CHAT,
            Dialect.OPENAI,
            None,
            {"error": {"message": "m", "type": "server_error", "param": None, "code": "plugin_failed"}},
        ),
        (
            Endpoint.RESPONSES,
            Dialect.OPENAI,
            b"event: error",
            {"error": {"message": "m", "type": "server_error", "param": None, "code": "plugin_failed"}},
        ),
        (
            Endpoint.MESSAGES,
            Dialect.ANTHROPIC,
            b"event: error",
            {"type": "error", "error": {"type": "api_error", "message": "m", "code": "plugin_failed"}},
        ),
        (
            Endpoint.GEMINI_STREAM,
            Dialect.GEMINI,
            None,
            {
                "error": {
                    "code": 500,
                    "message": "m",
                    "status": "INTERNAL",
                    "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "plugin_failed"}],
                }
            },
        ),
    ],
)
def test_the_error_event_of_each_dialect(
    endpoint: Endpoint, dialect: Dialect, event_line: bytes | None, payload: dict[str, Any]
) -> None:
    raw = error_event(endpoint, dialect, 500, "plugin_failed", "m")
    assert raw.endswith(b"\n\n")
    lines = raw.strip().split(b"\n")
    if event_line is not None:
        assert lines.pop(0) == event_line
    (data,) = lines
    assert orjson.loads(data.removeprefix(b"data: ")) == payload


def test_the_dialect_a_path_implies() -> None:
    assert path_dialect("/v1beta/models/x:y") is Dialect.GEMINI
    assert path_dialect("/v1/messages") is Dialect.ANTHROPIC
    assert path_dialect("/v1/messages/count_tokens") is Dialect.ANTHROPIC
    assert path_dialect("/v1/messagesx") is Dialect.OPENAI
    assert path_dialect("/anything") is Dialect.OPENAI
