"""The hold estimate: prompt tokens + the output the request may produce, priced (spec §5).

Prompt counting, per endpoint:

* OpenAI chat: each message +3, its role 1, its content, each `name` +3 plus its text,
  assistant tool calls (name + arguments); +3 reply priming; each tool (or legacy
  function) +8 plus its JSON definition.
* Anthropic messages, Gemini contents, Responses input items: the same per-message (+3),
  priming (+3) and per-tool (+8 + JSON) framing, over `system` / `systemInstruction` /
  `instructions`, text blocks, tool calls and tool results.
* Completions `prompt`, embeddings `input`: strings, arrays of strings, or token arrays
  (counted by length); no framing.
* A media part of unknown size (image, audio, file, document) counts 765 tokens, 85 when
  its `detail` is "low".

Output: the largest of `max_tokens`, `max_completion_tokens`, `max_output_tokens` (and
Gemini `generationConfig.maxOutputTokens`); when none is given, the model's
`max_output_tokens` from the price data capped at `default_output_reserve`. Chat `n`,
completions `best_of`, and Gemini `candidateCount` multiply it; embeddings produce none.

Hostile bodies raise only `BadRequest` (a `Reject` with status 400, and a `ValueError`) with
a message a client can act on; raised from `on_request`, it is the client's answer as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from plugins.billing.pricing import DEFAULT_QUOTA_PER_USD, ModelPrice, charge_io, charge_requests
from plugins.billing.tokenizer import Family, Tokenizer
from proxy.plugin import Endpoint, Reject

__all__ = ["MAX_N", "MAX_OUTPUT_TOKENS", "BadRequest", "Estimate", "Estimator"]

MAX_OUTPUT_TOKENS = 10_000_000
MAX_N = 128
IMAGE_TOKENS = 765
IMAGE_TOKENS_LOW = 85
PER_MESSAGE = 3
PER_NAME = 3
PRIMING = 3
PER_TOOL = 8
_MAX_DEPTH = 4
_OUTPUT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_MEDIA = frozenset(
    ("image_url", "image", "input_image", "input_audio", "input_file", "file", "document", "audio")
)
_NO_OUTPUT = frozenset((Endpoint.EMBEDDINGS, Endpoint.COUNT_TOKENS, Endpoint.MODELS))
_GEMINI = frozenset((Endpoint.GEMINI_GENERATE, Endpoint.GEMINI_STREAM))

#: Where a value sits in the body, for error messages: a name, or a tuple of parts (an int
#: is an index, a str is appended as it is, a tuple nests). Tuples cost nothing to build;
#: `_at` formats one only when a `BadRequest` is raised, since nearly every body is valid.
Where = str | tuple[Any, ...]


def _at(where: Where) -> str:
    """`("messages", 0, ".content")` → "messages[0].content"."""
    if type(where) is str:
        return where
    return "".join(f"[{part}]" if type(part) is int else _at(part) for part in where)


def _bad(where: Where, problem: str) -> BadRequest:
    name = _at(where)
    return BadRequest(f"{name} {problem}", param=name)


class BadRequest(Reject, ValueError):
    """A request body the estimate cannot accept: the public `Reject`, with status 400, the
    `code` and the `message`, so it reaches the client as it is; `param` names the field."""

    def __init__(self, message: str, code: str = "invalid_request_error", param: str | None = None) -> None:
        super().__init__(400, code, message)
        self.param = param


class Estimate(NamedTuple):
    """The hold for one request: estimated prompt and output tokens and their price.

    An immutable named tuple, not a frozen dataclass: it is built on every request, and a
    frozen dataclass costs ~1.4k instructions per field to build.
    """

    prompt_tokens: int
    output_tokens: int
    quota: int


class _Count:
    """Running prompt-token total for one request, with type checks on the way."""

    __slots__ = ("_count", "total")

    def __init__(self, tokenizer: Tokenizer, family: Family) -> None:
        self._count = tokenizer.counter(family)
        self.total = 0

    def text(self, value: Any, what: Where) -> None:
        if value is None:
            return
        if type(value) is not str:
            raise _bad(what, "must be a string")
        if value:
            self.total += self._count(value)

    def json(self, value: Any, what: Where) -> None:
        if value is None:
            return
        if type(value) is str:
            self.text(value, what)
            return
        try:
            self.text(orjson.dumps(value).decode(), what)
        except orjson.JSONEncodeError:
            raise _bad(what, "is nested too deeply") from None

    def media(self, detail: Any) -> None:
        self.total += IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS


def _list(value: Any, what: Where, required: bool = False) -> list[Any]:
    if value is None:
        if required:
            raise _bad(what, "is required")
        return []
    if type(value) is not list:
        raise _bad(what, "must be an array")
    return value


def _obj(value: Any, what: Where) -> dict[str, Any]:
    if type(value) is not dict:
        raise _bad(what, "must be an object")
    return value


def _tools(c: _Count, tools: Any, what: Where) -> None:
    if tools is None:  # the common case, without the generic walk
        return
    for i, tool in enumerate(_list(tools, what)):
        c.total += PER_TOOL
        c.json(tool, (what, i))


def _parts(c: _Count, content: Any, what: Where, depth: int = 0) -> None:
    """Content in any dialect: a string, or a list of typed parts / Anthropic blocks."""
    if content is None or type(content) is str:
        c.text(content, what)
        return
    if depth > _MAX_DEPTH:
        raise _bad(what, "is nested too deeply")
    for i, part in enumerate(_list(content, what)):
        p = _obj(part, (what, i))
        kind = p.get("type")
        if kind in _MEDIA:
            img = p.get("image_url")
            c.media(img.get("detail") if type(img) is dict else p.get("detail"))
        elif kind == "tool_use":
            c.text(p.get("name"), (what, i, ".name"))
            c.json(p.get("input"), (what, i, ".input"))
        elif kind == "tool_result":
            _parts(c, p.get("content"), (what, i, ".content"), depth + 1)
        else:
            for key in ("text", "thinking", "refusal"):
                if key in p:
                    c.text(p[key], (what, i, ".", key))


def _chat(c: _Count, body: dict[str, Any]) -> None:
    for i, raw in enumerate(_list(body.get("messages"), "messages", required=True)):
        m = _obj(raw, ("messages", i))
        c.total += PER_MESSAGE + 1
        _parts(c, m.get("content"), ("messages", i, ".content"))
        if m.get("name") is not None:
            c.total += PER_NAME
            c.text(m["name"], ("messages", i, ".name"))
        calls = m.get("tool_calls")
        legacy = m.get("function_call")
        if calls is None and legacy is None:  # the common case, without the generic walk
            continue
        calls = _list(calls, ("messages", i, ".tool_calls"))
        if legacy is not None:
            calls = [*calls, {"function": legacy}]
        for j, call in enumerate(calls):
            where = ("messages", i, ".tool_calls", j)
            fn = _obj(_obj(call, where).get("function", {}), "function")
            c.text(fn.get("name"), (where, ".function.name"))
            c.json(fn.get("arguments"), (where, ".function.arguments"))
    c.total += PRIMING
    _tools(c, body.get("tools"), "tools")
    _tools(c, body.get("functions"), "functions")


def _anthropic(c: _Count, body: dict[str, Any]) -> None:
    _parts(c, body.get("system"), "system")
    for i, raw in enumerate(_list(body.get("messages"), "messages", required=True)):
        m = _obj(raw, ("messages", i))
        c.total += PER_MESSAGE
        _parts(c, m.get("content"), ("messages", i, ".content"))
    c.total += PRIMING
    _tools(c, body.get("tools"), "tools")


def _gemini_parts(c: _Count, holder: Any, what: Where) -> None:
    for i, raw in enumerate(_list(_obj(holder, what).get("parts"), (what, ".parts"))):
        where = (what, ".parts", i)
        p = _obj(raw, where)
        if "text" in p:
            c.text(p["text"], (where, ".text"))
        elif any(k in p for k in ("inlineData", "inline_data", "fileData", "file_data")):
            c.media(None)
        else:
            for key in ("functionCall", "function_call", "functionResponse", "function_response"):
                if key in p:
                    c.json(p[key], (where, ".", key))


def _gemini(c: _Count, body: dict[str, Any]) -> None:
    system = body.get("systemInstruction", body.get("system_instruction"))
    if system is not None:
        _gemini_parts(c, system, "systemInstruction")
    for i, content in enumerate(_list(body.get("contents"), "contents", required=True)):
        c.total += PER_MESSAGE
        _gemini_parts(c, content, ("contents", i))
    c.total += PRIMING
    for i, raw in enumerate(_list(body.get("tools"), "tools")):
        tool = _obj(raw, ("tools", i))
        decls = tool.get("functionDeclarations", tool.get("function_declarations"))
        _tools(c, decls, ("tools", i, ".functionDeclarations"))


def _responses(c: _Count, body: dict[str, Any]) -> None:
    c.text(body.get("instructions"), "instructions")
    items = body.get("input")
    if type(items) is str or items is None:
        c.text(items, "input")
        items = []
    for i, raw in enumerate(_list(items, "input")):
        what = ("input", i)
        item = _obj(raw, what)
        kind = item.get("type")
        if "role" in item or kind == "message":
            c.total += PER_MESSAGE
            _parts(c, item.get("content"), (what, ".content"))
        elif kind in ("function_call", "custom_tool_call"):
            c.text(item.get("name"), (what, ".name"))
            c.json(item.get("arguments", item.get("input")), (what, ".arguments"))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            _parts(c, item.get("output"), (what, ".output"))
        elif kind == "reasoning":
            _parts(c, item.get("summary"), (what, ".summary"))
    c.total += PRIMING
    _tools(c, body.get("tools"), "tools")


def _token_input(c: _Count, value: Any, what: Where) -> None:
    """A string, an array of strings, a token array, or an array of token arrays."""
    if value is None or type(value) is str:
        c.text(value, what)
        return
    items = _list(value, what)
    if all(type(x) is int for x in items):
        c.total += len(items)
        return
    for i, x in enumerate(items):
        if type(x) is list and all(type(t) is int for t in x):
            c.total += len(x)
        elif type(x) is str:
            c.text(x, (what, i))
        else:
            raise _bad(what, "must be a string, an array of strings or token arrays")


def _completions(c: _Count, body: dict[str, Any]) -> None:
    _token_input(c, body.get("prompt"), "prompt")
    c.text(body.get("suffix"), "suffix")


def _embeddings(c: _Count, body: dict[str, Any]) -> None:
    _token_input(c, body.get("input"), "input")


def _images(c: _Count, body: dict[str, Any]) -> None:
    c.text(body.get("prompt"), "prompt")


_PROMPT: Mapping[Endpoint, Callable[[_Count, dict[str, Any]], None]] = {
    Endpoint.CHAT: _chat,
    Endpoint.MESSAGES: _anthropic,
    Endpoint.GEMINI_GENERATE: _gemini,
    Endpoint.GEMINI_STREAM: _gemini,
    Endpoint.RESPONSES: _responses,
    Endpoint.COMPLETIONS: _completions,
    Endpoint.EMBEDDINGS: _embeddings,
    Endpoint.IMAGES: _images,
}
_MULTIPLIERS: Mapping[Endpoint, tuple[str, ...]] = {
    Endpoint.CHAT: ("n",),
    Endpoint.COMPLETIONS: ("n", "best_of"),
    Endpoint.IMAGES: ("n",),
}


def _count_param(value: Any, what: str) -> int:
    if value is None:
        return 1
    if type(value) is not int or not 1 <= value <= MAX_N:
        raise BadRequest(f"{what} must be an integer between 1 and {MAX_N}", param=what)
    return value


def _limit(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_OUTPUT_TOKENS:
        raise BadRequest(f"{what} must be an integer between 0 and {MAX_OUTPUT_TOKENS}", param=what)
    return value


class Estimator:
    """Estimates holds. The plugin owns one, built with its tokenizer and price data.

    `max_output` gives a model's `max_output_tokens` from the price data (None when
    unknown); `default_output_reserve` caps it and stands in when it is unknown.
    """

    __slots__ = ("tokenizer", "quota_per_usd", "default_output_reserve", "_max_output")

    def __init__(
        self,
        tokenizer: Tokenizer,
        quota_per_usd: int = DEFAULT_QUOTA_PER_USD,
        default_output_reserve: int = 4096,
        max_output: Callable[[str], int | None] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.quota_per_usd = quota_per_usd
        self.default_output_reserve = default_output_reserve
        self._max_output = max_output

    def estimate(
        self, endpoint: Endpoint, body: Any, model: str, price: ModelPrice, multiplier: Decimal
    ) -> Estimate:
        """The hold for a request: token estimate priced like a charge, or the full
        per-request price (× `n` for image generation). Raises `BadRequest`."""
        body = _checked_body(body)
        if price.per_request is not None:
            n = _count_param(body.get("n"), "n") if endpoint is Endpoint.IMAGES else 1
            return Estimate(0, 0, charge_requests(price, n, multiplier, self.quota_per_usd))
        prompt = self._prompt_tokens(endpoint, body, model)
        output = self._output_tokens(endpoint, body, model)
        return Estimate(prompt, output, charge_io(price, prompt, output, multiplier, self.quota_per_usd))

    def prompt_tokens(self, endpoint: Endpoint, body: Any, model: str) -> int:
        """The estimated prompt tokens of a request body (0 for endpoints without one)."""
        return self._prompt_tokens(endpoint, _checked_body(body), model)

    def output_tokens(self, endpoint: Endpoint, body: Any, model: str) -> int:
        """The output tokens to hold for: the request's limit × its choice count."""
        return self._output_tokens(endpoint, _checked_body(body), model)

    def _prompt_tokens(self, endpoint: Endpoint, body: dict[str, Any], model: str) -> int:
        fn = _PROMPT.get(endpoint)
        if fn is None:
            return 0
        c = _Count(self.tokenizer, self.tokenizer.family(model))
        try:
            fn(c, body)
        except BadRequest:
            raise
        except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError) as exc:
            # A shape no walker expected: still the client's malformed body, not a 500.
            raise BadRequest(f"malformed request body ({type(exc).__name__})") from None
        return c.total

    def _output_tokens(self, endpoint: Endpoint, body: dict[str, Any], model: str) -> int:
        if endpoint in _NO_OUTPUT:
            return 0
        limit = -1
        for key in _OUTPUT_KEYS:
            value = body.get(key)
            if value is not None:
                limit = max(limit, _limit(value, key))
        times = 1
        for key in _MULTIPLIERS.get(endpoint, ()):
            value = body.get(key)
            if value is not None:  # absent counts 1
                times = max(times, _count_param(value, key))
        if endpoint in _GEMINI:
            limit, times = _gemini_output(body, limit)
        if limit < 0:
            limit = self._default_output(model)
        return limit * times

    def _default_output(self, model: str) -> int:
        known = self._max_output(model) if self._max_output is not None else None
        return min(known, self.default_output_reserve) if known else self.default_output_reserve


def _gemini_output(body: dict[str, Any], limit: int) -> tuple[int, int]:
    config = body.get("generationConfig", body.get("generation_config"))
    if config is None:
        return limit, 1
    config = _obj(config, "generationConfig")
    for key in ("maxOutputTokens", "max_output_tokens"):
        value = config.get(key)
        if value is not None:
            limit = max(limit, _limit(value, f"generationConfig.{key}"))
    count = config.get("candidateCount", config.get("candidate_count"))
    return limit, _count_param(count, "generationConfig.candidateCount")


def _checked_body(body: Any) -> dict[str, Any]:
    # None is a body that is not JSON at all (multipart audio and image uploads): it has no
    # prompt or limits to read, so it holds the default output (or the per-request price).
    if body is None:
        return {}
    if type(body) is not dict:
        raise BadRequest("the request body must be a JSON object")
    return body
