"""Prompt tokens of a request body, per endpoint: the first half of the hold estimate.

Prompt counting, per endpoint:

* OpenAI chat: each message +3, its role 1, its content, each `name` +3 plus its text,
  assistant tool calls (name + arguments); +3 reply priming; each tool (or legacy
  function) +8 plus its JSON definition.
* Anthropic messages, Gemini contents, Responses input items: the same per-message (+3),
  priming (+3) and per-tool (+8 + JSON) framing, over `system` / `systemInstruction` /
  `instructions`, text blocks, tool calls and tool results.
* Completions `prompt`, embeddings and moderations `input`: strings, arrays of strings, or
  token arrays (counted by length); no framing. Moderation inputs may also be typed parts.
* Gemini `embedContent` `content` and `batchEmbedContents` `requests[].content`: their
  parts, no framing. Image prompts (generations, edits), speech `input` + `instructions`.
* A media part of unknown size (image, audio, file, document) counts 765 tokens, 85 when
  its `detail` is "low".

Hostile bodies raise only `BadRequest` (a `Reject` with status 400, and a `ValueError`) with
a message a client can act on; raised from `on_request`, it is the client's answer as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from plugins.billing.tokenizer import Tokenizer
from proxy.plugin import Endpoint, Reject

__all__ = ["BadRequest", "count_prompt", "count_prompt_with", "obj"]

IMAGE_TOKENS = 765
IMAGE_TOKENS_LOW = 85
PER_MESSAGE = 3
PER_NAME = 3
PRIMING = 3
PER_TOOL = 8
_MAX_DEPTH = 4
_MEDIA = frozenset(("image_url", "image", "input_image", "input_audio", "input_file", "file", "document", "audio"))

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


class _Count:
    """Running prompt-token total for one request, with type checks on the way."""

    __slots__ = ("_count", "total")

    def __init__(self, count: Callable[[str], int]) -> None:
        self._count = count
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


def obj(value: Any, what: Where) -> dict[str, Any]:
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
        p = obj(part, (what, i))
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
    # The common shapes (a list of dicts with string content, no names, calls or tools) are
    # checked inline: each helper call costs about a thousand instructions, and this runs on
    # every chat request. Anything else takes the generic walk, with the same counts.
    count = c._count
    messages = body.get("messages")
    if type(messages) is not list:
        messages = _list(messages, "messages", required=True)
    total = PRIMING + (PER_MESSAGE + 1) * len(messages)
    for i, m in enumerate(messages):
        if type(m) is not dict:
            obj(m, ("messages", i))
        content = m.get("content")
        if type(content) is str:
            if content:
                total += count(content)
        else:
            _parts(c, content, ("messages", i, ".content"))
        if m.get("name") is not None:
            total += PER_NAME
            c.text(m["name"], ("messages", i, ".name"))
        if m.get("tool_calls") is not None or m.get("function_call") is not None:
            _chat_calls(c, m, i)
    c.total += total
    if body.get("tools") is not None:
        _tools(c, body["tools"], "tools")
    if body.get("functions") is not None:
        _tools(c, body["functions"], "functions")


def _chat_calls(c: _Count, m: dict[str, Any], i: int) -> None:
    """A chat message's tool calls (and legacy function call): their names and arguments."""
    calls = _list(m.get("tool_calls"), ("messages", i, ".tool_calls"))
    legacy = m.get("function_call")
    if legacy is not None:
        calls = [*calls, {"function": legacy}]
    for j, call in enumerate(calls):
        where = ("messages", i, ".tool_calls", j)
        fn = obj(obj(call, where).get("function", {}), "function")
        c.text(fn.get("name"), (where, ".function.name"))
        c.json(fn.get("arguments"), (where, ".function.arguments"))


def _anthropic(c: _Count, body: dict[str, Any]) -> None:
    _parts(c, body.get("system"), "system")
    for i, raw in enumerate(_list(body.get("messages"), "messages", required=True)):
        m = obj(raw, ("messages", i))
        c.total += PER_MESSAGE
        _parts(c, m.get("content"), ("messages", i, ".content"))
    c.total += PRIMING
    _tools(c, body.get("tools"), "tools")


def _gemini_parts(c: _Count, holder: Any, what: Where) -> None:
    for i, raw in enumerate(_list(obj(holder, what).get("parts"), (what, ".parts"))):
        where = (what, ".parts", i)
        p = obj(raw, where)
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
        tool = obj(raw, ("tools", i))
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
        item = obj(raw, what)
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


def _speech(c: _Count, body: dict[str, Any]) -> None:
    c.text(body.get("input"), "input")
    c.text(body.get("instructions"), "instructions")


def _moderations(c: _Count, body: dict[str, Any]) -> None:
    value = body.get("input")
    if type(value) is list and any(type(x) is dict for x in value):
        _parts(c, value, "input")  # multimodal: [{"type": "text", ...}, {"type": "image_url", ...}]
    else:
        _token_input(c, value, "input")


def _gemini_embed(c: _Count, body: dict[str, Any]) -> None:
    _gemini_parts(c, body.get("content"), "content")


def _gemini_batch_embed(c: _Count, body: dict[str, Any]) -> None:
    for i, raw in enumerate(_list(body.get("requests"), "requests", required=True)):
        _gemini_parts(c, obj(raw, ("requests", i)).get("content"), ("requests", i, ".content"))


_PROMPT: Mapping[Endpoint, Callable[[_Count, dict[str, Any]], None]] = {
    Endpoint.CHAT: _chat,
    Endpoint.MESSAGES: _anthropic,
    Endpoint.GEMINI_GENERATE: _gemini,
    Endpoint.GEMINI_STREAM: _gemini,
    Endpoint.RESPONSES: _responses,
    Endpoint.COMPLETIONS: _completions,
    Endpoint.EMBEDDINGS: _embeddings,
    Endpoint.IMAGES: _images,
    Endpoint.IMAGE_EDITS: _images,
    Endpoint.SPEECH: _speech,
    Endpoint.MODERATIONS: _moderations,
    Endpoint.GEMINI_EMBED: _gemini_embed,
    Endpoint.GEMINI_BATCH_EMBED: _gemini_batch_embed,
}


def count_prompt(tokenizer: Tokenizer, endpoint: Endpoint, body: dict[str, Any], model: str) -> int:
    """The estimated prompt tokens of `body` (0 for endpoints without a prompt)."""
    return count_prompt_with(tokenizer.counter(tokenizer.family(model)), endpoint, body)


def count_prompt_with(count: Callable[[str], int], endpoint: Endpoint, body: dict[str, Any]) -> int:
    """`count_prompt` with the model's token counter already found (`Tokenizer.counter`)."""
    fn = _PROMPT.get(endpoint)
    if fn is None:
        return 0
    c = _Count(count)
    try:
        fn(c, body)
    except BadRequest:
        raise
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError) as exc:
        # A shape no walker expected: still the client's malformed body, not a 500.
        raise BadRequest(f"malformed request body ({type(exc).__name__})") from None
    return c.total
