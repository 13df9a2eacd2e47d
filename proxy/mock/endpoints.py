"""The mock upstream's endpoints: each turns a recorded request into a `Reply` or `Stream`.

Validation is light but real where clients depend on it (a missing `messages`, `model` or
Anthropic `max_tokens` is a 400 in the dialect's shape, raised as `BadRequest`).
"""

from __future__ import annotations

import base64
from email.parser import BytesParser
from email.policy import HTTP
from typing import TYPE_CHECKING, Any

import orjson

from proxy.context import Dialect
from proxy.mock.behaviour import MockBehaviour
from proxy.mock.responses_wire import responses_reply, responses_stream
from proxy.mock.text import (
    CREATED,
    MODELS,
    OWNER,
    PROMPT_OVERHEAD,
    TINY_PNG_B64,
    Plan,
    UsagePolicy,
    embedding,
    make_plan,
    pack_floats,
    prompt_texts,
    shaped,
    texts,
    word_count,
)
from proxy.mock.wire import (
    JSON,
    Reply,
    Stream,
    chat_reply,
    completion_reply,
    gemini_reply,
    gemini_stream,
    messages_reply,
    messages_stream,
    openai_stream,
)

if TYPE_CHECKING:
    from proxy.mock.upstream import ReceivedRequest


class BadRequest(Exception):
    """A request the real API would refuse; answered with `status` in the dialect's shape."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _body(rec: ReceivedRequest, *required: str) -> dict[str, Any]:
    if not isinstance(rec.json, dict):
        raise BadRequest("The request body must be a JSON object.")
    for name in required:
        if name not in rec.json:
            raise BadRequest(f"Missing required parameter: '{name}'.")
    return rec.json


def _int(body: dict[str, Any], *names: str) -> int | None:
    """The first of `names` present in `body`, which must be an integer."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"Invalid type for '{name}': expected an integer.")
        return value
    return None


def _policy(b: MockBehaviour) -> UsagePolicy:
    return UsagePolicy(omit=b.omit_usage, zero=b.zero_usage, repeat=b.repeat_usage)


def _plan(
    rec: ReceivedRequest,
    b: MockBehaviour,
    dialect: Dialect,
    body: dict[str, Any],
    model: str,
    limit: int | None,
    n: int = 1,
) -> Plan:
    every, last = prompt_texts(dialect, rec.path, body)
    return make_plan(
        rid=rec.request_id,
        model=model,
        every=every,
        last_user=last,
        words=b.words,
        limit=limit,
        n=n,
        anthropic=dialect is Dialect.ANTHROPIC,
        reply=b.reply,
        usage=b.usage,
    )


def chat(rec: ReceivedRequest, b: MockBehaviour) -> Reply | Stream:
    """POST /v1/chat/completions."""
    body = _body(rec, "model", "messages")
    limit = _int(body, "max_completion_tokens", "max_tokens")
    plan = _plan(rec, b, Dialect.OPENAI, body, str(body["model"]), limit, _int(body, "n") or 1)
    if body.get("stream") is True:
        include = (body.get("stream_options") or {}).get("include_usage") is True
        return openai_stream(plan, include, _policy(b), chat=True)
    return chat_reply(plan, _policy(b))


def completions(rec: ReceivedRequest, b: MockBehaviour) -> Reply | Stream:
    """POST /v1/completions (legacy)."""
    body = _body(rec, "model", "prompt")
    plan = _plan(rec, b, Dialect.OPENAI, body, str(body["model"]), _int(body, "max_tokens"), _int(body, "n") or 1)
    if body.get("stream") is True:
        include = (body.get("stream_options") or {}).get("include_usage") is True
        return openai_stream(plan, include, _policy(b), chat=False)
    return completion_reply(plan, _policy(b))


def responses(rec: ReceivedRequest, b: MockBehaviour) -> Reply | Stream:
    """POST /v1/responses."""
    body = _body(rec, "model")
    limit = _int(body, "max_output_tokens")
    plan = _plan(rec, b, Dialect.OPENAI, body, str(body["model"]), limit)
    if body.get("stream") is True:
        return responses_stream(plan, _policy(b), limit)
    return responses_reply(plan, _policy(b), limit)


def messages(rec: ReceivedRequest, b: MockBehaviour) -> Reply | Stream:
    """POST /v1/messages."""
    body = _body(rec, "model", "messages")
    limit = _int(body, "max_tokens")
    if limit is None:
        raise BadRequest("max_tokens: Field required")
    plan = _plan(rec, b, Dialect.ANTHROPIC, body, str(body["model"]), limit)
    if body.get("stream") is True:
        return messages_stream(plan, _policy(b))
    return messages_reply(plan, _policy(b))


def count_tokens(rec: ReceivedRequest, b: MockBehaviour) -> Reply:
    """POST /v1/messages/count_tokens: the same prompt count a message would report."""
    body = _body(rec, "model", "messages")
    every, _ = prompt_texts(Dialect.ANTHROPIC, rec.path, body)
    return Reply(orjson.dumps({"input_tokens": word_count(every) + PROMPT_OVERHEAD}))


def gemini(rec: ReceivedRequest, b: MockBehaviour) -> Reply | Stream:
    """POST /v1beta/models/{model}:generateContent, :streamGenerateContent, :countTokens,
    :embedContent and :batchEmbedContents (also under /v1/models/)."""
    model, _, method = rec.path.rsplit("/", 1)[-1].partition(":")
    body = _body(rec)
    if method == "countTokens":
        every, _ = prompt_texts(Dialect.GEMINI, rec.path, body)
        return Reply(orjson.dumps({"totalTokens": word_count(every) + PROMPT_OVERHEAD}))
    if method in ("embedContent", "batchEmbedContents"):
        return _gemini_embed(body, method)
    if method not in ("generateContent", "streamGenerateContent"):
        raise BadRequest(f"Method '{method}' not found for model '{model}'.", 404)
    config = body.get("generationConfig") or {}
    limit = _int(config, "maxOutputTokens") if isinstance(config, dict) else None
    plan = _plan(rec, b, Dialect.GEMINI, body, model, limit)
    if method == "streamGenerateContent":
        return gemini_stream(plan, _policy(b), sse=rec.query.get("alt") == "sse")
    return gemini_reply(plan, _policy(b))


def _gemini_embed(body: dict[str, Any], method: str) -> Reply:
    """Gemini embeddings: like the real API, the answer carries no usage."""
    if method == "embedContent":
        return Reply(orjson.dumps({"embedding": {"values": _gemini_vector(body)}}))
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise BadRequest("* BatchEmbedContentsRequest.requests: must not be empty")
    vectors = [{"values": _gemini_vector(r if isinstance(r, dict) else {})} for r in requests]
    return Reply(orjson.dumps({"embeddings": vectors}))


def _gemini_vector(request: dict[str, Any]) -> list[float]:
    content = request.get("content")
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
        raise BadRequest("* EmbedContentRequest.content: contents.parts must not be empty")
    words = texts(content["parts"])
    dims = request.get("outputDimensionality")
    return embedding(" ".join(words), dims if isinstance(dims, int) and 0 < dims <= 3072 else 8)


def embeddings(rec: ReceivedRequest, b: MockBehaviour) -> Reply:
    """POST /v1/embeddings, as float lists or base64 float32 (the openai SDK's default)."""
    body = _body(rec, "model", "input")
    given = body["input"]
    items = given if isinstance(given, list) and given and not isinstance(given[0], int) else [given]
    dims = _int(body, "dimensions") or 8
    as_b64 = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(items):
        vector = embedding(" ".join(texts(item)), dims)
        value: Any = base64.b64encode(pack_floats(vector)).decode() if as_b64 else vector
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = word_count(texts(items)) + PROMPT_OVERHEAD
    if b.usage is not None and b.usage.input is not None:
        tokens = b.usage.input
    out: dict[str, Any] = {"object": "list", "data": data, "model": body["model"]}
    usage = shaped({"prompt_tokens": tokens, "total_tokens": tokens}, _policy(b))
    if usage is not None:
        out["usage"] = usage
    return Reply(orjson.dumps(out))


def images(rec: ReceivedRequest, b: MockBehaviour) -> Reply:
    """POST /v1/images/generations: `n` tiny PNGs, as base64 or as fake URLs."""
    body = _body(rec, "prompt")
    n = _int(body, "n") or 1
    if body.get("response_format") == "b64_json":
        data: list[dict[str, Any]] = [{"b64_json": TINY_PNG_B64} for _ in range(n)]
    else:
        data = [
            {"url": f"https://mock.weir.invalid/images/{rec.request_id}-{i}.png", "revised_prompt": body["prompt"]}
            for i in range(n)
        ]
    return Reply(orjson.dumps({"created": CREATED, "data": data}))


def image_edits(rec: ReceivedRequest, b: MockBehaviour) -> Reply:
    """POST /v1/images/edits and /variations (multipart): `n` tiny PNGs. A `gpt-image`
    model reports token usage as OpenAI's does (text prompt words, 65 tokens per image)."""
    fields = _form(rec)
    if "image" not in fields and "image[]" not in fields:
        raise BadRequest("Missing required parameter: 'image'.")
    edit = rec.path.endswith("/edits")
    if edit and "prompt" not in fields:
        raise BadRequest("Missing required parameter: 'prompt'.")
    try:
        n = int(fields.get("n", b"1"))
    except ValueError:
        raise BadRequest("Invalid type for 'n': expected an integer.") from None
    if not 1 <= n <= 10:
        raise BadRequest("Invalid 'n': must be between 1 and 10.")
    out: dict[str, Any] = {"created": CREATED, "data": [{"b64_json": TINY_PNG_B64} for _ in range(n)]}
    model = fields.get("model", b"").decode("utf-8", "replace")
    if "gpt-image" in model:
        prompt = word_count([fields.get("prompt", b"").decode("utf-8", "replace")])
        images = 65 * sum(1 for name in fields if name.startswith("image"))
        usage = {
            "input_tokens": prompt + images,
            "output_tokens": 272 * n,
            "total_tokens": prompt + images + 272 * n,
            "input_tokens_details": {"text_tokens": prompt, "image_tokens": images},
        }
        shaped_usage = shaped(usage, _policy(b))
        if shaped_usage is not None:
            out["usage"] = shaped_usage
    return Reply(orjson.dumps(out))


def moderations(rec: ReceivedRequest, b: MockBehaviour) -> Reply:
    """POST /v1/moderations: one result per input; flagged when a text says `kill`."""
    body = _body(rec, "input")
    given = body["input"]
    items = given if isinstance(given, list) else [given]
    results = []
    for item in items:
        text = " ".join(texts(item)) if not isinstance(item, str) else item
        flagged = "kill" in text.lower()
        results.append(
            {
                "flagged": flagged,
                "categories": {"violence": flagged, "harassment": False, "self-harm": False},
                "category_scores": {"violence": 0.9 if flagged else 0.001, "harassment": 0.001, "self-harm": 0.0},
            }
        )
    model = str(body.get("model") or "omni-moderation-latest")
    return Reply(orjson.dumps({"id": f"modr-{rec.request_id}", "model": model, "results": results}))


def _form(rec: ReceivedRequest) -> dict[str, bytes]:
    """The fields of a multipart/form-data body, by name."""
    ctype = rec.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise BadRequest("Expected a multipart/form-data body.")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + rec.body)
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload
    return fields


def transcription(rec: ReceivedRequest, b: MockBehaviour) -> Reply:
    """POST /v1/audio/transcriptions and /translations: text naming the upload's size."""
    fields = _form(rec)
    if "file" not in fields:
        raise BadRequest("Missing required parameter: 'file'.")
    size = len(fields["file"])
    text = f"Mock transcription of {size} bytes."
    if fields.get("response_format", b"").decode() in ("text", "srt", "vtt"):
        return Reply(text.encode(), "text/plain; charset=utf-8")
    out: dict[str, Any] = {"text": text}
    usage = shaped({"type": "duration", "seconds": max(1, size // 16000)}, _policy(b))
    if usage is not None:
        out["usage"] = usage
    return Reply(orjson.dumps(out))


_MP3_FRAME = b"\xff\xf3\x14\xc4" + bytes(92)  # an MPEG-2 layer III header and a silent frame


def speech(rec: ReceivedRequest, b: MockBehaviour) -> Reply:
    """POST /v1/audio/speech: one silent MP3 frame per input word (at least one)."""
    body = _body(rec, "model", "input")
    frames = max(1, len(str(body["input"]).split()))
    return Reply(_MP3_FRAME * frames, "audio/mpeg")


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": OWNER}


def list_models(rec: ReceivedRequest, b: MockBehaviour) -> Reply:
    """GET /v1/models."""
    return Reply(orjson.dumps({"object": "list", "data": [_model(m) for m in MODELS]}))


def get_model(rec: ReceivedRequest, b: MockBehaviour) -> Reply:
    """GET /v1/models/{name}: any `mock-*` name exists; others are a 404."""
    name = rec.path.rsplit("/", 1)[-1]
    if not name.startswith("mock-"):
        raise BadRequest(f"The model '{name}' does not exist", 404)
    return Reply(orjson.dumps(_model(name)), JSON)
