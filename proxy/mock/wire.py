"""Wire bytes of the mock upstream's text endpoints, in each API's real format.

A `Reply` is a whole JSON body; a `Stream` is the list of pre-encoded SSE frames the
server writes one by one (the content frames are built from byte templates, so the per-event
cost is one JSON string escape). `content_end` marks where content stops and the terminal
frames begin; `error_frame` is what the dialect sends when it fails mid-stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.context import Dialect
from proxy.mock.text import (
    CREATED,
    Plan,
    UsagePolicy,
    anthropic_usage,
    gemini_usage,
    openai_usage,
    shaped,
)

SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete (non-streamed) answer."""

    data: bytes
    content_type: str = JSON
    status: int = 200


@dataclass(frozen=True, slots=True)
class Stream:
    """A streamed answer as ready-to-write frames."""

    frames: tuple[bytes, ...]
    content_end: int
    error_frame: bytes
    content_type: str = SSE


def _j(value: Any) -> bytes:
    return orjson.dumps(value)


def _data(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def named_frame(kind: str, payload: dict[str, Any]) -> bytes:
    """One SSE frame with an `event:` line and a JSON `data:` line."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _usage_tail(plan: Plan, include: bool, policy: UsagePolicy) -> Callable[[int], bytes]:
    """The end of an OpenAI chunk: `}` or `,"usage":null}` or cumulative usage (repeat)."""
    if policy.repeat and not policy.omit:
        return lambda done: b',"usage":' + _j(shaped(openai_usage(plan, done), policy)) + b"}\n\n"
    fixed = b',"usage":null}\n\n' if include and not policy.omit else b"}\n\n"
    return lambda done: fixed


# ---- OpenAI chat completions and legacy completions -------------------------------------

_OPENAI_STREAM_ERROR = _data(
    {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
)


def chat_reply(plan: Plan, policy: UsagePolicy) -> Reply:
    """A `chat.completion` object with `n` identical choices."""
    finish = "length" if plan.capped else "stop"
    message: dict[str, Any] = {"role": "assistant", "content": plan.text, "refusal": None, "annotations": []}
    body: dict[str, Any] = {
        "id": "chatcmpl-" + plan.rid,
        "object": "chat.completion",
        "created": CREATED,
        "model": plan.model,
        "choices": [{"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(plan.n)],
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }
    usage = shaped(openai_usage(plan), policy)
    if usage is not None:
        body["usage"] = usage
    return Reply(_j(body))


def completion_reply(plan: Plan, policy: UsagePolicy) -> Reply:
    """A legacy `text_completion` object."""
    finish = "length" if plan.capped else "stop"
    body: dict[str, Any] = {
        "id": "cmpl-" + plan.rid,
        "object": "text_completion",
        "created": CREATED,
        "model": plan.model,
        "choices": [{"text": plan.text, "index": i, "logprobs": None, "finish_reason": finish} for i in range(plan.n)],
        "system_fingerprint": "fp_mock",
    }
    usage = shaped(openai_usage(plan), policy)
    if usage is not None:
        body["usage"] = usage
    return Reply(_j(body))


def openai_stream(plan: Plan, include_usage: bool, policy: UsagePolicy, chat: bool) -> Stream:
    """Chunks of a chat or legacy completions stream, ending with `data: [DONE]`."""
    kind, prefix = ("chat.completion.chunk", "chatcmpl-") if chat else ("text_completion", "cmpl-")
    head = b'data: {"id":"%s%s","object":"%s","created":%d,"model":%s,"system_fingerprint":"fp_mock","choices":[' % (
        prefix.encode(),
        plan.rid.encode(),
        kind.encode(),
        CREATED,
        _j(plan.model),
    )
    tail = _usage_tail(plan, include_usage, policy)
    frames: list[bytes] = []
    if chat:
        role = b'"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]'
        frames += [head + b'{"index":%d,' % c + role + tail(0) for c in range(plan.n)]
    done = 0
    for piece in plan.pieces:
        text = _j(piece)
        for c in range(plan.n):
            done += 1
            if chat:
                body = b'{"index":%d,"delta":{"content":%s},"logprobs":null,"finish_reason":null}]' % (c, text)
            else:
                body = b'{"text":%s,"index":%d,"logprobs":null,"finish_reason":null}]' % (text, c)
            frames.append(head + body + tail(done))
    content_end = len(frames)
    finish = b'"length"' if plan.capped else b'"stop"'
    for c in range(plan.n):
        if chat:
            body = b'{"index":%d,"delta":{},"logprobs":null,"finish_reason":%s}]' % (c, finish)
        else:
            body = b'{"text":"","index":%d,"logprobs":null,"finish_reason":%s}]' % (c, finish)
        frames.append(head + body + tail(done))
    usage = shaped(openai_usage(plan), policy)
    if include_usage and usage is not None:
        frames.append(head + b'],"usage":' + _j(usage) + b"}\n\n")
    frames.append(b"data: [DONE]\n\n")
    return Stream(tuple(frames), content_end, _OPENAI_STREAM_ERROR)


# ---- Anthropic Messages ----------------------------------------------------------------

_ANTHROPIC_STREAM_ERROR = named_frame(
    "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
)


def _message(plan: Plan, content: list[Any], stop: str | None, usage: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "msg_" + plan.rid,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def messages_reply(plan: Plan, policy: UsagePolicy) -> Reply:
    """A `message` object with one text block."""
    stop = "max_tokens" if plan.capped else "end_turn"
    usage = shaped(anthropic_usage(plan, plan.output), policy)
    return Reply(_j(_message(plan, [{"type": "text", "text": plan.text}], stop, usage)))


def messages_stream(plan: Plan, policy: UsagePolicy) -> Stream:
    """message_start, content_block_start, ping, text deltas, block stop, message_delta, message_stop."""
    start_usage = shaped(anthropic_usage(plan, min(1, plan.output)), policy)
    frames = [
        named_frame("message_start", {"type": "message_start", "message": _message(plan, [], None, start_usage)}),
        named_frame(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        named_frame("ping", {"type": "ping"}),
    ]
    for piece in plan.pieces:
        frames.append(
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":%s}}\n\n' % _j(piece)
        )
    content_end = len(frames)
    frames.append(named_frame("content_block_stop", {"type": "content_block_stop", "index": 0}))
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens" if plan.capped else "end_turn", "stop_sequence": None},
    }
    end_usage = shaped({"output_tokens": plan.output}, policy)
    if end_usage is not None:
        delta["usage"] = end_usage
    frames.append(named_frame("message_delta", delta))
    frames.append(named_frame("message_stop", {"type": "message_stop"}))
    return Stream(tuple(frames), content_end, _ANTHROPIC_STREAM_ERROR)


# ---- Gemini ----------------------------------------------------------------------------

_GEMINI_ERROR = {"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}


def _candidate(text: str, finish: str | None) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish is not None:
        cand["finishReason"] = finish
    cand["index"] = 0
    return cand


def gemini_reply(plan: Plan, policy: UsagePolicy) -> Reply:
    """A GenerateContentResponse with one candidate."""
    body: dict[str, Any] = {"candidates": [_candidate(plan.text, _gemini_finish(plan))]}
    usage = shaped(gemini_usage(plan), policy)
    if usage is not None:
        body["usageMetadata"] = usage
    body["modelVersion"] = plan.model
    body["responseId"] = plan.rid
    return Reply(_j(body))


def _gemini_finish(plan: Plan) -> str:
    return "MAX_TOKENS" if plan.capped else "STOP"


def gemini_stream(plan: Plan, policy: UsagePolicy, sse: bool) -> Stream:
    """streamGenerateContent: `data:` frames split by CRLF pairs, or a streamed JSON array."""
    trailer = b',"modelVersion":%s,"responseId":"%s"}' % (_j(plan.model), plan.rid.encode())
    repeat = policy.repeat and not policy.omit
    bodies: list[bytes] = []
    for done, piece in enumerate(plan.pieces, 1):
        usage = b',"usageMetadata":' + _j(shaped(gemini_usage(plan, done), policy)) if repeat else b""
        bodies.append(
            b'{"candidates":[{"content":{"parts":[{"text":%s}],"role":"model"},"index":0}]%s%s'
            % (_j(piece), usage, trailer)
        )
    final: dict[str, Any] = {"candidates": [_candidate("", _gemini_finish(plan))]}
    usage_final = shaped(gemini_usage(plan), policy)
    if usage_final is not None:
        final["usageMetadata"] = usage_final
    final.update(modelVersion=plan.model, responseId=plan.rid)
    bodies.append(_j(final))
    if sse:
        frames = [b"data: " + b + b"\r\n\r\n" for b in bodies]
        return Stream(tuple(frames), len(frames) - 1, b"data: " + _j(_GEMINI_ERROR) + b"\r\n\r\n")
    frames = [(b"[" if i == 0 else b",\r\n") + b for i, b in enumerate(bodies)] + [b"]"]
    return Stream(tuple(frames), len(frames) - 2, b",\r\n" + _j(_GEMINI_ERROR) + b"]", JSON)


# ---- Scripted events -------------------------------------------------------------------


def scripted_stream(events: tuple[Any, ...], dialect: Dialect) -> Stream:
    """A stream of a script's raw events (`proxy.mock.behaviour.Event`), ending with the
    dialect's error frame should a fault knob ask for one."""
    frames = tuple(_event_frame(e) for e in events)
    if dialect is Dialect.ANTHROPIC:
        error = _ANTHROPIC_STREAM_ERROR
    elif dialect is Dialect.GEMINI:
        error = b"data: " + _j(_GEMINI_ERROR) + b"\r\n\r\n"
    else:
        error = _OPENAI_STREAM_ERROR
    return Stream(frames, len(frames), error)


def _event_frame(event: Any) -> bytes:
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return b"".join(b"data: " + line.encode() + b"\n" for line in event.split("\n")) + b"\n"
    return _data(event)
