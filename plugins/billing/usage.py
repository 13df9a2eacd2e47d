"""Normalised usage, per-dialect normalisers and the stream accumulator (spec §4).

This is the one place where upstream usage objects become `Usage`. The rules:

* OpenAI chat / completions / embeddings: `prompt_tokens` includes the cached and the
  audio tokens; `input = prompt − cached − audio_in`; `output = completion − audio_out`
  (reasoning tokens stay in output). DeepSeek-style `prompt_cache_hit_tokens` is read
  when `prompt_tokens_details.cached_tokens` is absent.
* OpenAI responses: `input_tokens` includes `input_tokens_details.cached_tokens`;
  `output_tokens` includes reasoning.
* OpenAI images (gpt-image-*): `input_tokens` includes `input_tokens_details.image_tokens`,
  which become `images` (image input tokens, priced at `image_input`).
* Anthropic: `input_tokens` excludes cache tokens; `cache_creation_input_tokens` is split
  by `cache_creation.ephemeral_5m/1h_input_tokens`, and without the split all of it is 5m.
* Gemini: `promptTokenCount` includes `cachedContentTokenCount`; `toolUsePromptTokenCount`
  is extra input; `output = candidatesTokenCount + thoughtsTokenCount`.

Counts are clamped at 0 (a malformed upstream never produces a negative charge).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.context import Endpoint, SSEEvent

__all__ = [
    "Usage",
    "UsageMeter",
    "from_anthropic",
    "from_gemini",
    "from_openai",
    "from_openai_images",
    "from_openai_responses",
    "normaliser",
    "normalise",
]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one request, normalised across dialects (all counts are >= 0).

    `input` is uncached prompt tokens (text, and images unless a dialect reports them
    apart); `output` includes reasoning; `images` is image input tokens when a dialect
    reports them separately.
    """

    input: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output: int = 0
    audio_in: int = 0
    audio_out: int = 0
    images: int = 0

    @property
    def is_zero(self) -> bool:
        """True when every count is zero (spec §4: with content delivered, that is "missing")."""
        return not (
            self.input
            or self.cache_read
            or self.cache_write_5m
            or self.cache_write_1h
            or self.output
            or self.audio_in
            or self.audio_out
            or self.images
        )

    @property
    def total(self) -> int:
        """Every token counted, whatever its price."""
        return (
            self.input
            + self.cache_read
            + self.cache_write_5m
            + self.cache_write_1h
            + self.output
            + self.audio_in
            + self.audio_out
            + self.images
        )


def _n(value: Any) -> int:
    """A token count from wire JSON: non-negative int, anything else is 0."""
    if type(value) is int:
        return value if value > 0 else 0
    if type(value) is float and value == value and 0 < value < 1e15:
        return int(value)
    return 0


def _sub(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def from_openai(u: Mapping[str, Any]) -> Usage:
    """OpenAI chat completions, legacy completions and embeddings `usage`."""
    prompt = _n(u.get("prompt_tokens"))
    pd = _sub(u, "prompt_tokens_details")
    cached = _n(pd.get("cached_tokens")) if "cached_tokens" in pd else _n(u.get("prompt_cache_hit_tokens"))
    audio_in = _n(pd.get("audio_tokens"))
    cd = _sub(u, "completion_tokens_details")
    audio_out = _n(cd.get("audio_tokens"))
    completion = _n(u.get("completion_tokens"))
    return Usage(
        input=max(prompt - cached - audio_in, 0),
        cache_read=cached,
        output=max(completion - audio_out, 0),
        audio_in=audio_in,
        audio_out=audio_out,
    )


def from_openai_responses(u: Mapping[str, Any]) -> Usage:
    """OpenAI Responses API `usage` (also found in `response.completed` events)."""
    total_in = _n(u.get("input_tokens"))
    cached = _n(_sub(u, "input_tokens_details").get("cached_tokens"))
    return Usage(input=max(total_in - cached, 0), cache_read=cached, output=_n(u.get("output_tokens")))


def from_openai_images(u: Mapping[str, Any]) -> Usage:
    """OpenAI image generation `usage` (gpt-image-*): image input tokens go to `images`."""
    total_in = _n(u.get("input_tokens"))
    d = _sub(u, "input_tokens_details")
    images = _n(d.get("image_tokens"))
    cached = _n(d.get("cached_tokens"))
    return Usage(
        input=max(total_in - images - cached, 0),
        cache_read=cached,
        images=images,
        output=_n(u.get("output_tokens")),
    )


def from_anthropic(u: Mapping[str, Any]) -> Usage:
    """Anthropic Messages `usage` (or the merged usage of a stream)."""
    creation = _n(u.get("cache_creation_input_tokens"))
    split = u.get("cache_creation")
    if isinstance(split, Mapping):
        w5 = _n(split.get("ephemeral_5m_input_tokens"))
        w1 = _n(split.get("ephemeral_1h_input_tokens"))
        # Tokens the split does not account for are billed as 5m writes, never dropped.
        w5 += max(creation - w5 - w1, 0)
    else:
        w5, w1 = creation, 0
    return Usage(
        input=_n(u.get("input_tokens")),
        cache_read=_n(u.get("cache_read_input_tokens")),
        cache_write_5m=w5,
        cache_write_1h=w1,
        output=_n(u.get("output_tokens")),
    )


def from_gemini(u: Mapping[str, Any]) -> Usage:
    """Gemini `usageMetadata`."""
    prompt = _n(u.get("promptTokenCount"))
    cached = _n(u.get("cachedContentTokenCount"))
    return Usage(
        input=max(prompt - cached, 0) + _n(u.get("toolUsePromptTokenCount")),
        cache_read=cached,
        output=_n(u.get("candidatesTokenCount")) + _n(u.get("thoughtsTokenCount")),
    )


_NORMALISERS: Mapping[Endpoint, Callable[[Mapping[str, Any]], Usage]] = {
    Endpoint.CHAT: from_openai,
    Endpoint.COMPLETIONS: from_openai,
    Endpoint.EMBEDDINGS: from_openai,
    Endpoint.RESPONSES: from_openai_responses,
    Endpoint.IMAGES: from_openai_images,
    Endpoint.MESSAGES: from_anthropic,
    Endpoint.GEMINI_GENERATE: from_gemini,
    Endpoint.GEMINI_STREAM: from_gemini,
}


def normaliser(endpoint: Endpoint) -> Callable[[Mapping[str, Any]], Usage] | None:
    """The normaliser for an endpoint's usage objects, or None if it reports no usage."""
    return _NORMALISERS.get(endpoint)


def normalise(endpoint: Endpoint, usage: Mapping[str, Any]) -> Usage:
    """Normalise one usage object of `endpoint`; endpoints without usage give zero usage."""
    fn = _NORMALISERS.get(endpoint)
    return fn(usage) if fn is not None else Usage()


_RESPONSES_TEXT = frozenset(
    (
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.refusal.delta",
    )
)
_RESPONSES_END = frozenset(("response.completed", "response.incomplete", "response.failed"))
_DELTA_TEXT_KEYS = ("content", "reasoning_content", "reasoning", "refusal")


def _merge(dst: dict[str, Any], src: Mapping[str, Any], depth: int = 0) -> None:
    """Fold a usage object into the running one: per field, the last value wins.

    Counts are cumulative, so they never go back to zero: a later 0 (a placeholder some
    compatible servers send) does not erase an earlier non-zero count. Nothing is summed.
    """
    for k, v in src.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            cur = dst.get(k)
            if not isinstance(cur, dict):
                cur = dst[k] = {}
            if depth < 4:
                _merge(cur, v, depth + 1)
        elif v == 0 and dst.get(k):
            continue
        else:
            dst[k] = v


class UsageMeter:
    """Accumulates what a response reports, one parsed JSON chunk at a time.

    Feed it every parsed SSE payload (`feed`, or `feed_sse`), `done()` for OpenAI's
    `[DONE]`, or a whole non-streamed body (`feed_body`). It keeps:

    * the merged upstream usage (per field, last value wins; `usage` normalises it);
    * the relayed output text, tool-call arguments and reasoning text, for the fallback
      count when usage is missing (`output_text`);
    * whether a terminal event (`terminal`, with `finish` saying which) and whether an
      error event (`error`) were seen.

    It runs on every event, so each handler looks up only the keys it needs.
    """

    __slots__ = ("endpoint", "terminal", "error", "finish", "_raw", "_pieces", "_handler", "_norm")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.terminal = False
        self.error = False
        self.finish: str | None = None
        self._raw: dict[str, Any] | None = None
        self._pieces: list[str] = []
        self._norm = _NORMALISERS.get(endpoint)
        handlers: dict[Endpoint, Callable[[dict[str, Any]], None]] = {
            Endpoint.CHAT: self._openai,
            Endpoint.COMPLETIONS: self._openai,
            Endpoint.EMBEDDINGS: self._openai,
            Endpoint.RESPONSES: self._responses,
            Endpoint.MESSAGES: self._anthropic,
            Endpoint.GEMINI_GENERATE: self._gemini,
            Endpoint.GEMINI_STREAM: self._gemini,
        }
        self._handler = handlers.get(endpoint, self._generic)

    # -- results -------------------------------------------------------------------

    @property
    def usage(self) -> Usage | None:
        """The upstream's usage, normalised; None when no usage object was seen."""
        if self._raw is None or self._norm is None:
            return None
        return self._norm(self._raw)

    @property
    def has_content(self) -> bool:
        """True once any output text, tool-call argument or reasoning text was seen."""
        return bool(self._pieces)

    def output_text(self) -> str:
        """Everything countable the response carried, concatenated."""
        return "".join(self._pieces)

    # -- input -----------------------------------------------------------------------

    def feed_event(self, event: SSEEvent) -> None:
        """Feed one parsed SSE event as the relay hands it to `on_event`."""
        self.feed_sse(event.data, event.json, event.event)

    def feed_sse(self, data: str, payload: Any, event: str | None = None) -> None:
        """Feed one SSE event given its raw `data`, its parsed JSON (or None) and name."""
        if payload is None:
            if data.strip() == "[DONE]":
                self.done()
            return
        self.feed(payload, event)

    def feed(self, payload: Any, event: str | None = None) -> None:
        """Feed one parsed stream chunk (a JSON object); anything else is ignored."""
        if event == "error":
            self.error = True
        if isinstance(payload, dict):
            self._handler(payload)

    def done(self) -> None:
        """OpenAI's `data: [DONE]` sentinel: the stream ended normally."""
        self.terminal = True
        if self.finish is None:
            self.finish = "[DONE]"

    def feed_body(self, body: Any) -> None:
        """Feed a whole non-streamed JSON response; a complete body is terminal."""
        if not isinstance(body, dict):
            return
        if self.endpoint is Endpoint.RESPONSES:
            self._responses_body(body)
        elif self.endpoint is Endpoint.MESSAGES:
            self._anthropic_body(body)
        else:
            self._handler(body)
        if body.get("error") is not None:
            self.error = True
        elif not self.terminal:
            self.terminal = True
            self.finish = self.finish or "body"

    # -- per dialect -----------------------------------------------------------------

    def _usage(self, u: Any) -> None:
        if isinstance(u, Mapping):
            if self._raw is None:
                self._raw = {}
            _merge(self._raw, u)

    def _text(self, value: Any) -> None:
        if value and type(value) is str:
            self._pieces.append(value)

    def _json(self, value: Any) -> None:
        if isinstance(value, str):
            self._text(value)
        elif value:
            self._text(_dumps(value))

    def _openai(self, obj: dict[str, Any]) -> None:
        choices = obj.get("choices")
        if type(choices) is list:
            for ch in choices:
                if type(ch) is not dict:
                    continue
                d = ch.get("delta") or ch.get("message")
                if type(d) is dict:
                    self._openai_delta(d)
                else:
                    self._text(ch.get("text"))
                reason = ch.get("finish_reason")
                if reason:
                    self.terminal = True
                    self.finish = str(reason)
        u = obj.get("usage")
        if u:
            self._usage(u)
        if obj.get("error") is not None:
            self.error = True

    def _openai_delta(self, d: dict[str, Any]) -> None:
        for key in _DELTA_TEXT_KEYS:
            v = d.get(key)
            if v:
                self._text(v)
        calls = d.get("tool_calls")
        if type(calls) is list:
            for call in calls:
                fn = call.get("function") if type(call) is dict else None
                if type(fn) is dict:
                    self._text(fn.get("name"))
                    self._text(fn.get("arguments"))

    def _anthropic(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "content_block_delta":
            d = obj.get("delta")
            if type(d) is dict:
                self._text(d.get("text") or d.get("partial_json") or d.get("thinking"))
        elif kind == "message_delta":
            self._usage(obj.get("usage"))
        elif kind == "message_start":
            msg = obj.get("message")
            if type(msg) is dict:
                self._usage(msg.get("usage"))
        elif kind == "content_block_start":
            self._anthropic_block(obj.get("content_block"))
        elif kind == "message_stop":
            self.terminal = True
            self.finish = "message_stop"
        elif kind == "error":
            self.error = True

    def _anthropic_block(self, block: Any) -> None:
        if type(block) is not dict:
            return
        self._text(block.get("text") or block.get("thinking"))
        if block.get("type") == "tool_use":
            self._text(block.get("name"))
            self._json(block.get("input"))

    def _anthropic_body(self, body: dict[str, Any]) -> None:
        content = body.get("content")
        if type(content) is list:
            for block in content:
                self._anthropic_block(block)
        self._usage(body.get("usage"))
        if body.get("type") == "error":
            self.error = True

    def _responses(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind in _RESPONSES_TEXT:
            self._text(obj.get("delta"))
        elif kind in _RESPONSES_END:
            resp = obj.get("response")
            if type(resp) is dict:
                self._usage(resp.get("usage"))
            self.terminal = True
            self.finish = str(kind)
            if kind == "response.failed":
                self.error = True
        elif kind == "error":
            self.error = True

    def _responses_body(self, body: dict[str, Any]) -> None:
        output = body.get("output")
        if type(output) is list:
            for item in output:
                if type(item) is dict:
                    self._responses_item(item)
        self._usage(body.get("usage"))
        status = body.get("status")
        if status in ("incomplete", "failed"):
            self.terminal = True
            self.finish = f"response.{status}"
            self.error = status == "failed"

    def _responses_item(self, item: dict[str, Any]) -> None:
        self._text(item.get("arguments"))
        self._text(item.get("input"))
        for key in ("content", "summary"):
            parts = item.get(key)
            if type(parts) is list:
                for part in parts:
                    if type(part) is dict:
                        self._text(part.get("text") or part.get("refusal"))

    def _gemini(self, obj: dict[str, Any]) -> None:
        cands = obj.get("candidates")
        if type(cands) is list:
            for cand in cands:
                if type(cand) is not dict:
                    continue
                content = cand.get("content")
                parts = content.get("parts") if type(content) is dict else None
                if type(parts) is list:
                    for part in parts:
                        if type(part) is dict:
                            self._gemini_part(part)
                reason = cand.get("finishReason")
                if reason:
                    self.terminal = True
                    self.finish = str(reason)
        u = obj.get("usageMetadata")
        if u:
            self._usage(u)
        if obj.get("error") is not None:
            self.error = True

    def _gemini_part(self, part: dict[str, Any]) -> None:
        text = part.get("text")
        if text:
            self._text(text)
            return
        call = part.get("functionCall")
        if type(call) is dict:
            self._text(call.get("name"))
            self._json(call.get("args"))

    def _generic(self, obj: dict[str, Any]) -> None:
        # Image generation and other endpoints: a top-level `usage`, `*.completed` ends it.
        self._usage(obj.get("usage"))
        kind = obj.get("type")
        if type(kind) is str and kind.endswith(".completed"):
            self.terminal = True
            self.finish = kind
        if kind == "error" or obj.get("error") is not None:
            self.error = True


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return ""
