"""Deterministic content for the mock upstream: prompt reading, answer words, usage, errors.

Everything here is a pure function of the request, so one request always yields the same
bytes. The rules, which tests and the benchmark rely on:

- The prompt count is the whitespace-word count of every text in the prompt (system,
  instructions, all messages) plus `PROMPT_OVERHEAD`. A token array counts one per token.
- The answer is `Mock answer`, then the words of the last user message, then `1 2 3 ...`,
  cut to `words` pieces, or fewer when the request caps its output. One word is one piece,
  one piece is one streamed content event, and the output count is the number of pieces.
- A model whose name contains `cache` reports half of its prompt as read from cache; for
  Anthropic another quarter as written to cache, split evenly between 5m and 1h.
- A model whose name contains `think` reports `THINK_TOKENS` hidden reasoning tokens
  (OpenAI `reasoning_tokens`, Gemini `thoughtsTokenCount`), on top of the visible output.
- A scripted reply (`proxy.mock.behaviour.Script`) replaces the answer's pieces, and
  scripted `Usage` counts replace the counted ones.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.context import Dialect
from proxy.mock.behaviour import Usage

CREATED = 1_700_000_000
PROMPT_OVERHEAD = 5
THINK_TOKENS = 8
OWNER = "weir-mock"
MODELS = (
    "mock-gpt",
    "mock-gpt-mini",
    "mock-claude",
    "mock-gemini",
    "mock-embed",
    "mock-image",
    "mock-whisper",
)
TINY_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGPwmvDoPwAFoAK8aVvjuwAAAABJRU5ErkJggg=="
_MAX_ECHO = 24  # long prompt words are clipped so an answer stays short per piece
_TEXT_KEYS = ("text", "content", "parts", "input")


@dataclass(frozen=True, slots=True)
class UsagePolicy:
    """How usage is reported: normally, never (`omit`), all zero, or repeated per chunk."""

    omit: bool = False
    zero: bool = False
    repeat: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """What one mock answer contains: its pieces and the token counts to report."""

    rid: str
    model: str
    pieces: tuple[str, ...]
    prompt: int
    cached: int
    cache_write_5m: int
    cache_write_1h: int
    reasoning: int
    capped: bool
    n: int = 1
    output_tokens: int | None = None

    @property
    def output(self) -> int:
        """Visible output tokens of one choice: one per piece, unless scripted."""
        return len(self.pieces) if self.output_tokens is None else self.output_tokens

    @property
    def text(self) -> str:
        """The whole answer of one choice."""
        return "".join(self.pieces)


def request_id(path: str, body: bytes) -> str:
    """A stable id for a request: equal requests get equal ids, hence equal bytes.

    `body` should be a canonical form of the request (the server passes sorted-key JSON).
    """
    return hashlib.sha256(path.encode() + b"\0" + body).hexdigest()[:24]


def texts(value: Any) -> list[str]:
    """Every text inside a prompt value: strings, content parts, Gemini parts, token arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return ["#"]  # one token of a pre-tokenised prompt
    if isinstance(value, list):
        return [t for item in value for t in texts(item)]
    if isinstance(value, dict):
        return [t for key in _TEXT_KEYS if key in value for t in texts(value[key])]
    return []


def word_count(parts: list[str]) -> int:
    """Whitespace-separated words across `parts`."""
    return sum(len(p.split()) for p in parts)


def prompt_texts(dialect: Dialect, path: str, body: dict[str, Any]) -> tuple[list[str], str]:
    """(all prompt texts, the last user text) of a request body in its dialect."""
    if dialect is Dialect.GEMINI:
        turns = body.get("contents") or []
        every = texts(body.get("systemInstruction")) + texts(turns)
        return every, _last_user(turns, "user", allow_missing=True)
    if dialect is Dialect.ANTHROPIC:
        turns = body.get("messages") or []
        return texts(body.get("system")) + texts(turns), _last_user(turns, "user")
    if path.endswith("/chat/completions"):
        turns = body.get("messages") or []
        return texts(turns), _last_user(turns, "user")
    if path.endswith("/responses"):
        given = body.get("input")
        every = texts(body.get("instructions")) + texts(given)
        last = given if isinstance(given, str) else _last_user(given or [], "user")
        return every, last
    prompt = body.get("prompt", body.get("input"))
    every = texts(prompt)
    return every, (every[-1] if every else "")


def _last_user(turns: Any, role: str, allow_missing: bool = False) -> str:
    if not isinstance(turns, list):
        return ""
    for turn in reversed(turns):
        if isinstance(turn, dict):
            who = turn.get("role")
            if who == role or (allow_missing and who is None):
                return " ".join(texts(turn))
    return ""


def make_plan(
    *,
    rid: str,
    model: str,
    every: list[str],
    last_user: str,
    words: int,
    limit: int | None,
    n: int = 1,
    anthropic: bool = False,
    reply: str | tuple[str, ...] | None = None,
    usage: Usage | None = None,
) -> Plan:
    """Decide the answer and its token counts (see the module docstring for the rules)."""
    want = max(0, words)
    count = want if limit is None else max(0, min(want, limit))
    if reply is None:
        echo = [w[:_MAX_ECHO] for w in last_user.split()]
        chosen = (["Mock", "answer", *echo] + [str(i) for i in range(1, count + 1)])[:count]
        pieces = as_pieces(chosen)
    else:
        pieces = as_pieces(reply.split()) if isinstance(reply, str) else tuple(reply)
        want = count = len(pieces)  # a scripted reply is never cut
    u = usage or Usage()
    prompt = word_count(every) + PROMPT_OVERHEAD if u.input is None else u.input
    cache = "cache" in model
    cached = (prompt // 2 if cache else 0) if u.cached is None else u.cached
    written = prompt // 4 if cache and anthropic else 0
    reasoning = THINK_TOKENS if "think" in model and not anthropic else 0
    return Plan(
        rid=rid,
        model=model,
        pieces=pieces,
        prompt=prompt,
        cached=cached,
        cache_write_5m=written - written // 2,
        cache_write_1h=written // 2,
        reasoning=reasoning if u.reasoning is None else u.reasoning,
        capped=count < want,
        n=max(1, n),
        output_tokens=u.output,
    )


def as_pieces(words: list[str]) -> tuple[str, ...]:
    """Words as streamed pieces: the first bare, every other one after a space."""
    return tuple(w if i == 0 else " " + w for i, w in enumerate(words))


def zeroed(value: Any) -> Any:
    """A copy of a usage object with every count set to 0."""
    if isinstance(value, dict):
        return {k: zeroed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [zeroed(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return 0
    return value


def shaped(usage: dict[str, Any], policy: UsagePolicy) -> dict[str, Any] | None:
    """Apply the usage policy: None when usage is omitted, zeroed when asked."""
    if policy.omit:
        return None
    return zeroed(usage) if policy.zero else usage


def openai_usage(plan: Plan, output: int | None = None) -> dict[str, Any]:
    """Chat/completions/embeddings usage; `output` is the visible count so far (all choices)."""
    done = plan.output * plan.n if output is None else output
    completion = done + plan.reasoning
    return {
        "prompt_tokens": plan.prompt,
        "completion_tokens": completion,
        "total_tokens": plan.prompt + completion,
        "prompt_tokens_details": {"cached_tokens": plan.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def responses_usage(plan: Plan) -> dict[str, Any]:
    """Responses API usage: input includes cached, output includes reasoning."""
    out = plan.output + plan.reasoning
    return {
        "input_tokens": plan.prompt,
        "input_tokens_details": {"cached_tokens": plan.cached},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning},
        "total_tokens": plan.prompt + out,
    }


def anthropic_usage(plan: Plan, output: int) -> dict[str, Any]:
    """Anthropic usage: `input_tokens` excludes the cache reads and writes."""
    written = plan.cache_write_5m + plan.cache_write_1h
    return {
        "input_tokens": plan.prompt - plan.cached - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": plan.cached,
        "cache_creation": {
            "ephemeral_5m_input_tokens": plan.cache_write_5m,
            "ephemeral_1h_input_tokens": plan.cache_write_1h,
        },
        "output_tokens": output,
        "service_tier": "standard",
    }


def gemini_usage(plan: Plan, output: int | None = None) -> dict[str, Any]:
    """Gemini usageMetadata; like the real API, zero cache and thought counts are left out."""
    out = plan.output if output is None else output
    meta: dict[str, Any] = {
        "promptTokenCount": plan.prompt,
        "candidatesTokenCount": out,
        "totalTokenCount": plan.prompt + out + plan.reasoning,
    }
    if plan.cached:
        meta["cachedContentTokenCount"] = plan.cached
    if plan.reasoning:
        meta["thoughtsTokenCount"] = plan.reasoning
    meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": plan.prompt}]
    return meta


_OPENAI_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_payload(dialect: Dialect, status: int, message: str) -> dict[str, Any]:
    """The error object a real API of `dialect` answers with for `status`."""
    if dialect is Dialect.ANTHROPIC:
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if dialect is Dialect.GEMINI:
        grpc = _GEMINI_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return {"error": {"code": status, "message": message, "status": grpc}}
    fallback: tuple[str, str | None] = ("server_error" if status >= 500 else "invalid_request_error", None)
    kind, code = _OPENAI_TYPES.get(status, fallback)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_body(dialect: Dialect, status: int, message: str) -> bytes:
    """`error_payload` as JSON bytes."""
    return orjson.dumps(error_payload(dialect, status, message))


def embedding(text: str, dims: int) -> list[float]:
    """A deterministic unit-range vector for `text`, derived from its SHA-256."""
    seed = hashlib.sha256(text.encode()).digest()
    return [round(seed[i % len(seed)] / 127.5 - 1.0, 6) for i in range(dims)]


def pack_floats(values: list[float]) -> bytes:
    """Little-endian float32, the layout of OpenAI's base64 embeddings."""
    return struct.pack(f"<{len(values)}f", *values)
