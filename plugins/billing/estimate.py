"""The hold estimate: prompt tokens + the output the request may produce, priced (spec §5).

Prompt counting per endpoint lives in `plugins.billing.prompt`.

Output: the largest of `max_tokens`, `max_completion_tokens`, `max_output_tokens` (and
Gemini `generationConfig.maxOutputTokens`); when none is given, the model's
`max_output_tokens` from the price data capped at `default_output_reserve`. Chat `n`,
completions `best_of`, and Gemini `candidateCount` multiply it; embeddings and moderations produce none.

A per-character price (text-to-speech) holds the exact charge of the speech `input`'s
characters (Unicode code points); the estimate's `prompt_tokens` then carries that character
count, which settlement charges. Multipart bodies reach the estimate as their text fields
(`form_payload`).

Hostile bodies raise only `BadRequest` (a `Reject` with status 400, and a `ValueError`) with
a message a client can act on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from plugins.billing.charges import charge_characters, charge_io, charge_requests
from plugins.billing.pricing import DEFAULT_QUOTA_PER_USD, ModelPrice
from plugins.billing.prompt import BadRequest, count_prompt_with, obj
from plugins.billing.tokenizer import Tokenizer
from plugins.billing.tuples import new_tuple
from proxy.plugin import Endpoint

__all__ = ["MAX_N", "MAX_OUTPUT_TOKENS", "BadRequest", "Estimate", "Estimator", "form_payload"]

MAX_OUTPUT_TOKENS = 10_000_000
MAX_N = 128
_OUTPUT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_NO_OUTPUT = frozenset(
    (
        Endpoint.EMBEDDINGS,
        Endpoint.COUNT_TOKENS,
        Endpoint.MODELS,
        Endpoint.MODERATIONS,
        Endpoint.GEMINI_COUNT_TOKENS,
        Endpoint.GEMINI_EMBED,
        Endpoint.GEMINI_BATCH_EMBED,
    )
)
#: Image endpoints: `n` images, each a request of a per-request price.
IMAGE_ENDPOINTS = frozenset((Endpoint.IMAGES, Endpoint.IMAGE_EDITS, Endpoint.IMAGE_VARIATIONS))
#: Multipart text fields that are integers on the wire's JSON twin.
_FORM_INTS = ("n",)
_GEMINI = frozenset((Endpoint.GEMINI_GENERATE, Endpoint.GEMINI_STREAM))


class Estimate(NamedTuple):
    """The hold for one request: estimated prompt and output tokens and their price.

    An immutable named tuple, not a frozen dataclass: it is built on every request, and a
    frozen dataclass costs ~1.4k instructions per field to build.
    """

    prompt_tokens: int  # for a per-character price: the input characters it charges
    output_tokens: int
    quota: int


_MULTIPLIERS: Mapping[Endpoint, tuple[str, ...]] = {
    Endpoint.CHAT: ("n",),
    Endpoint.COMPLETIONS: ("n", "best_of"),
    Endpoint.IMAGES: ("n",),
    Endpoint.IMAGE_EDITS: ("n",),
    Endpoint.IMAGE_VARIATIONS: ("n",),
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

    __slots__ = ("tokenizer", "quota_per_usd", "default_output_reserve", "_max_output", "_counters")

    #: Model names whose token counter is remembered (clients choose the names: bounded).
    COUNTER_MEMO = 1024

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
        self._counters: dict[str, Callable[[str], int]] = {}

    def counter(self, model: str) -> Callable[[str], int]:
        """The function counting `model`'s tokens in a text (`Tokenizer.counter` of the
        model's family), remembered per model name: the same function, so the same counts."""
        found = self._counters.get(model)
        if found is None:
            tokenizer = self.tokenizer
            found = tokenizer.counter(tokenizer.family(model))
            if len(self._counters) >= self.COUNTER_MEMO:
                self._counters.clear()
            self._counters[model] = found
        return found

    def estimate(self, endpoint: Endpoint, body: Any, model: str, price: ModelPrice, multiplier: Decimal) -> Estimate:
        """The hold for a request: token estimate priced like a charge, the full per-request
        price (× `n` for images), or the exact per-character charge of a speech `input`.
        Raises `BadRequest`."""
        body = _checked_body(body)
        if price.per_request is not None:
            n = _count_param(body.get("n"), "n") if endpoint in IMAGE_ENDPOINTS else 1
            return Estimate(0, 0, charge_requests(price, n, multiplier, self.quota_per_usd))
        if price.characters is not None:
            chars = _speech_characters(endpoint, body, model)
            return Estimate(chars, 0, charge_characters(price, chars, multiplier, self.quota_per_usd))
        prompt = self._prompt_tokens(endpoint, body, model)
        output = self._output_tokens(endpoint, body, model)
        # Every field, in order (`plugins.billing.tuples`): prompt_tokens, output_tokens, quota.
        return new_tuple(Estimate, (prompt, output, charge_io(price, prompt, output, multiplier, self.quota_per_usd)))

    def prompt_tokens(self, endpoint: Endpoint, body: Any, model: str) -> int:
        """The estimated prompt tokens of a request body (0 for endpoints without one)."""
        return self._prompt_tokens(endpoint, _checked_body(body), model)

    def output_tokens(self, endpoint: Endpoint, body: Any, model: str) -> int:
        """The output tokens to hold for: the request's limit × its choice count."""
        return self._output_tokens(endpoint, _checked_body(body), model)

    def _prompt_tokens(self, endpoint: Endpoint, body: dict[str, Any], model: str) -> int:
        return count_prompt_with(self.counter(model), endpoint, body)

    def _output_tokens(self, endpoint: Endpoint, body: dict[str, Any], model: str) -> int:
        if endpoint in _NO_OUTPUT:
            return 0
        limit = -1
        for key in _OUTPUT_KEYS:
            value = body.get(key)
            if value is not None:
                if type(value) is not int or not 0 <= value <= MAX_OUTPUT_TOKENS:
                    _limit(value, key)  # raises, naming the field
                if value > limit:
                    limit = value
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
    config = obj(config, "generationConfig")
    for key in ("maxOutputTokens", "max_output_tokens"):
        value = config.get(key)
        if value is not None:
            limit = max(limit, _limit(value, f"generationConfig.{key}"))
    count = config.get("candidateCount", config.get("candidate_count"))
    return limit, _count_param(count, "generationConfig.candidateCount")


def _speech_characters(endpoint: Endpoint, body: dict[str, Any], model: str) -> int:
    """The characters a per-character price charges: the speech `input`'s code points."""
    if endpoint is not Endpoint.SPEECH:
        raise BadRequest(
            f"model {model!r} is priced per character (text-to-speech): use it on /v1/audio/speech",
            code="model_not_priced",
        )
    text = body.get("input")
    if type(text) is not str:
        raise BadRequest("input must be a string (the text to speak)", param="input")
    return len(text)


def form_payload(form: Mapping[str, str] | None) -> dict[str, Any]:
    """A multipart body's text fields as the estimate reads a JSON body: `n` as an integer
    when it is one (otherwise left as text, which the estimate refuses with its name)."""
    if not form:
        return {}
    out: dict[str, Any] = dict(form)
    for key in _FORM_INTS:
        value = out.get(key)
        if value is not None and value.strip().isdigit():
            out[key] = int(value.strip())
    return out


def _checked_body(body: Any) -> dict[str, Any]:
    # None is a body that is not JSON at all (multipart audio and image uploads): it has no
    # prompt or limits to read, so it holds the default output (or the per-request price).
    if body is None:
        return {}
    if type(body) is not dict:
        raise BadRequest("the request body must be a JSON object")
    return body
