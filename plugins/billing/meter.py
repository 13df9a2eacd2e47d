"""The stream meter: accumulates what a response reports, one parsed chunk at a time.

Per field the last usage value wins (never summed across chunks: one-api #415 double-billed
that way); the relayed output text, tool-call arguments and reasoning are kept for the
fallback count when usage is missing; terminal and error events are noted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from plugins.billing.usage import Usage, normaliser
from proxy.plugin import Endpoint, SSEEvent

__all__ = ["UsageMeter"]


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
        # Most values are ints: exact-type checks first spare the slow ABC isinstance.
        t = type(v)
        if t is dict or (t is not int and isinstance(v, Mapping)):
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

    __slots__ = (
        "endpoint",
        "terminal",
        "error",
        "finish",
        "_raw",
        "_pieces",
        "_handler",
        "_body_handler",
        "_norm",
        "_counter",
        "_size",
        "_counted",
        "_seen",
    )

    #: Characters of text kept before they are counted and dropped (with a counter).
    FOLD_AT = 64 * 1024

    def __init__(self, endpoint: Endpoint, counter: Callable[[str], int] | None = None) -> None:
        self.endpoint = endpoint
        self.terminal = False
        self.error = False
        self.finish: str | None = None
        self._raw: dict[str, Any] | None = None
        self._pieces: list[str] = []
        # With a counter, long outputs are counted in slices so memory stays bounded
        # however long the answer; the count may differ by a token per slice boundary.
        self._counter = counter
        self._size = 0
        self._counted = 0
        self._seen = False
        self._norm = normaliser(endpoint)
        # Plain functions, looked up once per endpoint in a class-level table (building
        # bound methods per request cost more than the metering of a short answer).
        self._handler, self._body_handler = _HANDLERS.get(endpoint, _GENERIC)

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
        return self._seen

    def output_text(self) -> str:
        """The countable text the response carried (without a counter: all of it; with one:
        what has not been folded into `output_count` yet)."""
        return "".join(self._pieces)

    def output_count(self) -> int:
        """Tokens of all countable output, using the counter given at construction."""
        if self._counter is None:
            raise ValueError("output_count needs a counter")
        text = self.output_text()
        return self._counted + (self._counter(text) if text else 0)

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
            self._handler(self, payload)

    def done(self) -> None:
        """OpenAI's `data: [DONE]` sentinel: the stream ended normally."""
        self.terminal = True
        if self.finish is None:
            self.finish = "[DONE]"

    def feed_body(self, body: Any) -> None:
        """Feed a whole non-streamed JSON response; a complete body is terminal."""
        if not isinstance(body, dict):
            return
        self._body_handler(self, body)
        if body.get("error") is not None:
            self.error = True
        elif not self.terminal:
            self.terminal = True
            self.finish = self.finish or "body"

    # -- per dialect -----------------------------------------------------------------

    def _usage(self, u: Any) -> None:
        if type(u) is dict or isinstance(u, Mapping):
            if self._raw is None:
                self._raw = {}
            _merge(self._raw, u)

    def _text(self, value: Any) -> None:
        if value and type(value) is str:
            self._seen = True
            self._pieces.append(value)
            if self._counter is not None:
                self._size += len(value)
                if self._size >= self.FOLD_AT:
                    self._counted += self._counter("".join(self._pieces))
                    self._pieces.clear()
                    self._size = 0

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


_Handler = Callable[[UsageMeter, dict[str, Any]], None]
# Per endpoint: the handler of a stream chunk, and of a whole non-streamed body.
_GENERIC: tuple[_Handler, _Handler] = (UsageMeter._generic, UsageMeter._generic)
_HANDLERS: Mapping[Endpoint, tuple[_Handler, _Handler]] = {
    Endpoint.CHAT: (UsageMeter._openai, UsageMeter._openai),
    Endpoint.COMPLETIONS: (UsageMeter._openai, UsageMeter._openai),
    Endpoint.EMBEDDINGS: (UsageMeter._openai, UsageMeter._openai),
    Endpoint.RESPONSES: (UsageMeter._responses, UsageMeter._responses_body),
    Endpoint.MESSAGES: (UsageMeter._anthropic, UsageMeter._anthropic_body),
    Endpoint.GEMINI_GENERATE: (UsageMeter._gemini, UsageMeter._gemini),
    Endpoint.GEMINI_STREAM: (UsageMeter._gemini, UsageMeter._gemini),
    Endpoint.GEMINI_EMBED: (UsageMeter._gemini, UsageMeter._gemini),
    Endpoint.GEMINI_BATCH_EMBED: (UsageMeter._gemini, UsageMeter._gemini),
}


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return ""
