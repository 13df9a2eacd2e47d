"""Normalised usage, per-dialect normalisers and the stream accumulator (spec §4).

This is the one place where upstream usage objects become `Usage`. The rules:

* OpenAI chat / completions / embeddings: `prompt_tokens` includes the cached and the
  audio tokens; `input = prompt − cached − audio_in`; `output = completion − audio_out`
  (reasoning tokens stay in output). DeepSeek-style `prompt_cache_hit_tokens` is read
  when `prompt_tokens_details.cached_tokens` is absent.
* OpenAI responses: `input_tokens` includes `input_tokens_details.cached_tokens`;
  `output_tokens` includes reasoning.
* OpenAI images (gpt-image-*; generations and edits): `input_tokens` includes
  `input_tokens_details.image_tokens`, which become `images` (image input tokens, priced at
  `image_input`).
* OpenAI speech (`stream_format: "sse"`, `speech.audio.done`): `input_tokens` is the text,
  `output_tokens` the audio produced (`audio_out`, priced at `audio_output`).
* Anthropic: `input_tokens` excludes cache tokens; `cache_creation_input_tokens` is split
  by `cache_creation.ephemeral_5m/1h_input_tokens`, and without the split all of it is 5m.
* Gemini: `promptTokenCount` includes `cachedContentTokenCount`; `toolUsePromptTokenCount`
  is extra input; `output = candidatesTokenCount + thoughtsTokenCount`.

Counts are clamped at 0 (a malformed upstream never produces a negative charge).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from plugins.billing.tuples import new_tuple
from proxy.plugin import Endpoint

__all__ = [
    "Usage",
    "from_anthropic",
    "from_gemini",
    "from_openai",
    "from_openai_images",
    "from_openai_responses",
    "from_openai_speech",
    "normaliser",
    "normalise",
]


class Usage(NamedTuple):
    """Token usage of one request, normalised across dialects (all counts are >= 0).

    `input` is uncached prompt tokens (text, and images unless a dialect reports them
    apart); `output` includes reasoning; `images` is image input tokens when a dialect
    reports them separately.

    An immutable named tuple rather than a frozen dataclass: one is built on every request,
    and a frozen dataclass costs ~1.4k instructions per field to build (each field goes
    through `object.__setattr__`), a tuple a tenth of that. The normalisers below pass the
    counts positionally, in field order: keyword arguments cost a dict per call.
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
        return not any(self)

    @property
    def total(self) -> int:
        """Every token counted, whatever its price."""
        return sum(self)


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _n(value: Any) -> int:
    """A token count from wire JSON: non-negative int, anything else is 0."""
    if type(value) is int:
        return value if value > 0 else 0
    if type(value) is float and value == value and 0 < value < 1e15:
        return int(value)
    return 0


def _sub(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    # Wire JSON is a dict (or absent): exact-type checks first spare the slow ABC isinstance.
    if type(value) is dict:
        return value
    return value if value is not None and isinstance(value, Mapping) else _EMPTY


def from_openai(u: Mapping[str, Any]) -> Usage:
    """OpenAI chat completions, legacy completions and embeddings `usage`."""
    prompt = u.get("prompt_tokens")
    completion = u.get("completion_tokens")
    # The common shape, read inline (each helper call costs about a thousand instructions):
    # whole non-negative counts, and details that are absent or say no cached or audio tokens.
    if type(prompt) is int and type(completion) is int and prompt >= 0 and completion >= 0:
        pd = u.get("prompt_tokens_details")
        cd = u.get("completion_tokens_details")
        if (
            (pd is None and "prompt_cache_hit_tokens" not in u)
            or (type(pd) is dict and pd.get("cached_tokens") == 0 and pd.get("audio_tokens", 0) == 0)
        ) and (cd is None or (type(cd) is dict and cd.get("audio_tokens", 0) == 0)):
            # Every field, in order (`plugins.billing.tuples`): input, cache_read,
            # cache_write_5m, cache_write_1h, output, audio_in, audio_out, images.
            return new_tuple(Usage, (prompt, 0, 0, 0, completion, 0, 0, 0))
    return _from_openai(u)


def _from_openai(u: Mapping[str, Any]) -> Usage:
    prompt = _n(u.get("prompt_tokens"))
    pd = _sub(u, "prompt_tokens_details")
    cached = _n(pd.get("cached_tokens")) if "cached_tokens" in pd else _n(u.get("prompt_cache_hit_tokens"))
    audio_in = _n(pd.get("audio_tokens"))
    cd = _sub(u, "completion_tokens_details")
    audio_out = _n(cd.get("audio_tokens"))
    completion = _n(u.get("completion_tokens"))
    return Usage(
        max(prompt - cached - audio_in, 0),  # input
        cached,  # cache_read
        0,  # cache_write_5m
        0,  # cache_write_1h
        max(completion - audio_out, 0),  # output
        audio_in,
        audio_out,
    )


def from_openai_responses(u: Mapping[str, Any]) -> Usage:
    """OpenAI Responses API `usage` (also found in `response.completed` events)."""
    total_in = _n(u.get("input_tokens"))
    cached = _n(_sub(u, "input_tokens_details").get("cached_tokens"))
    return Usage(max(total_in - cached, 0), cached, 0, 0, _n(u.get("output_tokens")))  # input, cache_read, output


def from_openai_images(u: Mapping[str, Any]) -> Usage:
    """OpenAI image generation `usage` (gpt-image-*): image input tokens go to `images`."""
    total_in = _n(u.get("input_tokens"))
    d = _sub(u, "input_tokens_details")
    images = _n(d.get("image_tokens"))
    cached = _n(d.get("cached_tokens"))
    return Usage(
        max(total_in - images - cached, 0),  # input
        cached,  # cache_read
        0,  # cache_write_5m
        0,  # cache_write_1h
        _n(u.get("output_tokens")),  # output
        0,  # audio_in
        0,  # audio_out
        images,
    )


def from_openai_speech(u: Mapping[str, Any]) -> Usage:
    """OpenAI text-to-speech `usage` (gpt-4o-mini-tts): the output tokens are audio."""
    return Usage(_n(u.get("input_tokens")), 0, 0, 0, 0, 0, _n(u.get("output_tokens")))  # input, audio_out


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
        _n(u.get("input_tokens")),  # input
        _n(u.get("cache_read_input_tokens")),  # cache_read
        w5,  # cache_write_5m
        w1,  # cache_write_1h
        _n(u.get("output_tokens")),  # output
    )


def from_gemini(u: Mapping[str, Any]) -> Usage:
    """Gemini `usageMetadata`."""
    prompt = _n(u.get("promptTokenCount"))
    cached = _n(u.get("cachedContentTokenCount"))
    return Usage(
        max(prompt - cached, 0) + _n(u.get("toolUsePromptTokenCount")),  # input
        cached,  # cache_read
        0,  # cache_write_5m
        0,  # cache_write_1h
        _n(u.get("candidatesTokenCount")) + _n(u.get("thoughtsTokenCount")),  # output
    )


_NORMALISERS: Mapping[Endpoint, Callable[[Mapping[str, Any]], Usage]] = {
    Endpoint.CHAT: from_openai,
    Endpoint.COMPLETIONS: from_openai,
    Endpoint.EMBEDDINGS: from_openai,
    Endpoint.RESPONSES: from_openai_responses,
    Endpoint.IMAGES: from_openai_images,
    Endpoint.IMAGE_EDITS: from_openai_images,
    Endpoint.IMAGE_VARIATIONS: from_openai_images,
    Endpoint.SPEECH: from_openai_speech,
    Endpoint.MODERATIONS: from_openai,
    Endpoint.GEMINI_EMBED: from_gemini,
    Endpoint.GEMINI_BATCH_EMBED: from_gemini,
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
