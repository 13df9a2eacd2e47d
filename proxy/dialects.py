"""The three API dialects: which paths exist, their error shapes, credentials, stream ends.

Weir relays each dialect to upstreams that speak it (no cross-dialect translation). This
module knows only wire facts; usage normalisation belongs to the billing plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from proxy.context import Dialect, Endpoint, SSEEvent

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass(frozen=True, slots=True)
class Route:
    """A proxied path: its dialect, endpoint and whether the body is JSON."""

    dialect: Dialect
    endpoint: Endpoint
    json_body: bool = True
    needs_model: bool = True


OPENAI_ROUTES: dict[str, Route] = {
    "/v1/chat/completions": Route(Dialect.OPENAI, Endpoint.CHAT),
    "/v1/completions": Route(Dialect.OPENAI, Endpoint.COMPLETIONS),
    "/v1/responses": Route(Dialect.OPENAI, Endpoint.RESPONSES),
    "/v1/embeddings": Route(Dialect.OPENAI, Endpoint.EMBEDDINGS),
    "/v1/images/generations": Route(Dialect.OPENAI, Endpoint.IMAGES),
    "/v1/images/edits": Route(Dialect.OPENAI, Endpoint.IMAGE_EDITS, json_body=False),
    "/v1/images/variations": Route(Dialect.OPENAI, Endpoint.IMAGE_VARIATIONS, json_body=False),
    # Speech takes JSON ({"model", "input", "voice"}), unlike the other audio uploads.
    "/v1/audio/speech": Route(Dialect.OPENAI, Endpoint.SPEECH),
    # The model is optional: OpenAI then uses its default moderation model.
    "/v1/moderations": Route(Dialect.OPENAI, Endpoint.MODERATIONS, needs_model=False),
}
ANTHROPIC_ROUTES: dict[str, Route] = {
    "/v1/messages": Route(Dialect.ANTHROPIC, Endpoint.MESSAGES),
    "/v1/messages/count_tokens": Route(Dialect.ANTHROPIC, Endpoint.COUNT_TOKENS),
}
AUDIO_ROUTE = Route(Dialect.OPENAI, Endpoint.AUDIO, json_body=False)
MODELS_ROUTE = Route(Dialect.OPENAI, Endpoint.MODELS, json_body=False, needs_model=False)
GEMINI_GENERATE = Route(Dialect.GEMINI, Endpoint.GEMINI_GENERATE, needs_model=False)
GEMINI_STREAM = Route(Dialect.GEMINI, Endpoint.GEMINI_STREAM, needs_model=False)
#: Gemini methods by name (the model is in the path, so no route reads it from the body).
GEMINI_METHODS: Mapping[str, Route] = {
    "generateContent": GEMINI_GENERATE,
    "streamGenerateContent": GEMINI_STREAM,
    "countTokens": Route(Dialect.GEMINI, Endpoint.GEMINI_COUNT_TOKENS, needs_model=False),
    "embedContent": Route(Dialect.GEMINI, Endpoint.GEMINI_EMBED, needs_model=False),
    "batchEmbedContents": Route(Dialect.GEMINI, Endpoint.GEMINI_BATCH_EMBED, needs_model=False),
}
#: Where Gemini clients send `models/{model}:{method}`: the google-genai SDK's `v1beta`
#: default, and `v1`. Both reach the upstream's own `base_url` (which names its version).
GEMINI_PREFIXES = ("/v1beta", "/v1")

VERSION_PREFIX = {Dialect.OPENAI: "/v1", Dialect.ANTHROPIC: "/v1", Dialect.GEMINI: "/v1beta"}

#: Upstream types and the dialects they speak.
SPEAKS: Mapping[str, frozenset[Dialect]] = {
    "openai": frozenset({Dialect.OPENAI}),
    "anthropic": frozenset({Dialect.ANTHROPIC}),
    "gemini": frozenset({Dialect.GEMINI}),
    "mock": frozenset(Dialect),
}

#: Client headers that carry a credential: never forwarded upstream.
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key"})


def error_body(dialect: Dialect, status: int, code: str, message: str) -> bytes:
    """An error body in `dialect`'s shape, carrying Weir's machine-readable `code`."""
    if dialect is Dialect.ANTHROPIC:
        etype = _ANTHROPIC_TYPES.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": etype, "message": message, "code": code}})
    if dialect is Dialect.GEMINI:
        gstatus = _GEMINI_STATUS.get(status, "INTERNAL")
        return orjson.dumps(
            {
                "error": {
                    "code": status,
                    "message": message,
                    "status": gstatus,
                    "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code}],
                }
            }
        )
    etype = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": etype, "param": None, "code": code}})


def error_event(endpoint: Endpoint, dialect: Dialect, status: int, code: str, message: str) -> bytes:
    """An SSE event that reports an error in the middle of a stream, in the shape the
    dialect's SDKs raise on: Anthropic's `event: error`; an OpenAI or Gemini error object as
    the event's data (and `event: error` on the Responses API, whose events are named)."""
    body = error_body(dialect, status, code, message)
    if dialect is Dialect.ANTHROPIC or endpoint is Endpoint.RESPONSES:
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"


def client_credential(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The client's API key from `Authorization: Bearer`, `x-api-key`, `x-goog-api-key` or `?key=`."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    for name in ("x-api-key", "x-goog-api-key"):
        value = headers.get(name)
        if value:
            return value.strip()
    key = query.get("key")
    return key or None


def upstream_auth(up_type: str, key: str) -> dict[str, str]:
    """The upstream credential in the upstream's own header style."""
    if up_type == "anthropic":
        return {"x-api-key": key}
    if up_type == "gemini":
        return {"x-goog-api-key": key}
    return {"Authorization": f"Bearer {key}"}


def split_gemini_target(target: str) -> tuple[str, Route] | None:
    """`gemini-2.0-flash:streamGenerateContent` → (model, route), or None."""
    model, sep, method = target.rpartition(":")
    if not sep or not model:
        return None
    route = GEMINI_METHODS.get(method)
    return None if route is None else (model, route)


def is_terminal(endpoint: Endpoint, event: SSEEvent) -> bool:
    """True when `event` is the dialect's normal end of stream."""
    if endpoint is Endpoint.MESSAGES:
        return event.event == "message_stop"
    if endpoint is Endpoint.RESPONSES:
        return event.event in ("response.completed", "response.incomplete") or (
            event.event is None and '"response.completed"' in event.data
        )
    if endpoint is Endpoint.GEMINI_STREAM:
        return '"finishReason"' in event.data
    if endpoint is Endpoint.SPEECH:  # `stream_format: "sse"`
        return '"speech.audio.done"' in event.data
    return event.data == "[DONE]"


def is_error_event(endpoint: Endpoint, event: SSEEvent) -> bool:
    """True when `event` reports an upstream error in the middle of a stream."""
    if event.event in ("error", "response.failed"):
        return True
    data = event.data
    return data.startswith('{"error"') or (data.startswith("{") and '"error":{' in data[:40])
