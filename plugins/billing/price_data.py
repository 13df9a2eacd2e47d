"""The LiteLLM reference price list: the `fallback: litellm` table (spec §2).

`litellm_prices.json` is a copy of LiteLLM's `model_prices_and_context_window` JSON
(see `LITELLM_LICENSE` for its MIT notice and the version it came from). It is read on
the first lookup only, with `parse_float=Decimal` so a price such as `2.5e-06` per token
becomes exactly 2.5 USD per 1M tokens.

Names: a bare key (`gpt-4o`) is found as itself; a provider-prefixed key
(`vertex_ai/gemini-pro`) is found as itself and, when no bare key of that name exists,
under the name without its first segment (`gemini-pro`). A client name with a provider
prefix that LiteLLM lists bare (`openai/gpt-4o`) finds the bare entry. When several
providers list the same name with different prices, the highest-priced entry wins: a
reference price must not under-bill, and `weir pricing show` names the key used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from plugins.billing.pricing import ModelPrice

__all__ = ["DEFAULT_PATH", "SNAPSHOT", "SNAPSHOT_DATE", "LiteLLMPrices", "price_from_entry"]

DEFAULT_PATH = Path(__file__).with_name("litellm_prices.json")
# Changing the JSON file means changing this, so price-table versions change with it.
SNAPSHOT = "litellm-1.109.1"
#: When the copy was taken into the repository (what the pricing page shows beside it).
SNAPSHOT_DATE = "2026-11-23"
_MILLION = Decimal(1_000_000)
_ONE = Decimal(1)


def _per_million(entry: Mapping[str, Any], key: str) -> Decimal | None:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        return None
    d = Decimal(value) * _MILLION
    if not d.is_finite() or d < 0:
        return None
    # Normalised so prices print the way they read: 2.5, 10 (not 2.500000E+0, 1E+1).
    d = d.normalize()
    return d.quantize(_ONE) if d.as_tuple().exponent > 0 else d  # type: ignore[operator]


def price_from_entry(entry: Mapping[str, Any]) -> ModelPrice | None:
    """Map one LiteLLM entry to a `ModelPrice`, or None if it carries no usable price.

    Token prices need `input_cost_per_token` and `output_cost_per_token` (an embedding
    model may omit the output price: it has no output tokens, so output = input). Without
    token prices, `input_cost_per_character` (text-to-speech) becomes a per-character price,
    else `output_cost_per_image` a per-request price.
    """
    inp = _per_million(entry, "input_cost_per_token")
    out = _per_million(entry, "output_cost_per_token")
    if inp is not None and out is None and entry.get("mode") == "embedding":
        out = inp
    if inp is not None and out is not None:
        return ModelPrice.tokens(
            inp,
            out,
            cache_read=_per_million(entry, "cache_read_input_token_cost"),
            cache_write=_per_million(entry, "cache_creation_input_token_cost"),
            cache_write_1h=_per_million(entry, "cache_creation_input_token_cost_above_1hr"),
            audio_input=_per_million(entry, "input_cost_per_audio_token"),
            audio_output=_per_million(entry, "output_cost_per_audio_token"),
            image_input=_per_million(entry, "input_cost_per_image_token"),
        )
    per_char = _per_million(entry, "input_cost_per_character")
    if per_char is not None:
        return ModelPrice.per_character(per_char)
    per_image = entry.get("output_cost_per_image")
    if isinstance(per_image, (int, Decimal)) and not isinstance(per_image, bool) and per_image >= 0:
        return ModelPrice.request(Decimal(per_image))
    return None


def _rank(price: ModelPrice) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    return (price.per_request or Decimal(0), price.characters or Decimal(0), price.output, price.input)


class LiteLLMPrices:
    """The LiteLLM price list, loaded on first use and indexed once.

    The plugin owns one instance (no module-level cache) and may share it between price
    table reloads. Implements `pricing.FallbackPrices`.
    """

    __slots__ = ("path", "snapshot", "_entries", "_aliases", "_prices")

    def __init__(self, path: Path | None = None, snapshot: str = SNAPSHOT) -> None:
        self.path = path or DEFAULT_PATH
        self.snapshot = snapshot
        self._entries: dict[str, Mapping[str, Any]] | None = None
        self._aliases: dict[str, str] = {}
        # Converted prices, one per LiteLLM key at most: bounded by the file, not by clients.
        self._prices: dict[str, ModelPrice | None] = {}

    def load(self) -> None:
        """Read and index the JSON now (idempotent); lookups call it on first use."""
        if self._entries is not None:
            return
        raw = json.loads(self.path.read_bytes(), parse_float=Decimal)
        if not isinstance(raw, dict):
            raise ValueError(f"{self.path}: expected a JSON object")
        entries: dict[str, Mapping[str, Any]] = {
            k: v for k, v in raw.items() if k != "sample_spec" and isinstance(v, dict)
        }
        candidates: dict[str, list[str]] = {}
        for key in entries:
            _, sep, rest = key.partition("/")
            if sep and rest and rest not in entries:
                candidates.setdefault(rest, []).append(key)
        self._entries = entries
        self._aliases = {name: self._best(keys) for name, keys in candidates.items()}

    def _best(self, keys: list[str]) -> str:
        if len(keys) == 1:
            return keys[0]
        priced = [(p, k) for k in sorted(keys) if (p := self._price(k)) is not None]
        if not priced:
            return sorted(keys)[0]
        return max(priced, key=lambda pk: _rank(pk[0]))[1]

    def _price(self, key: str) -> ModelPrice | None:
        if key in self._prices:
            return self._prices[key]
        assert self._entries is not None
        price = price_from_entry(self._entries[key])
        self._prices[key] = price
        return price

    def resolve(self, model: str) -> str | None:
        """The LiteLLM key that `model` is found under, or None."""
        self.load()
        entries = self._entries
        assert entries is not None
        if model in entries:
            return model
        # "openai/gpt-4o" finds the bare "gpt-4o" before any other provider's "x/openai/gpt-4o".
        _, sep, rest = model.partition("/")
        if sep and rest in entries:
            return rest
        return self._aliases.get(model)

    def lookup(self, model: str) -> tuple[ModelPrice, str] | None:
        """The price for `model` and the LiteLLM key it came from, or None if unpriced."""
        key = self.resolve(model)
        if key is None:
            return None
        price = self._price(key)
        return (price, key) if price is not None else None

    def entry(self, model: str) -> Mapping[str, Any] | None:
        """The raw LiteLLM entry `model` is found under (mode, provider, `supports_*` flags),
        or None. Prices in it are Decimal; read them through `lookup`."""
        key = self.resolve(model)
        if key is None:
            return None
        assert self._entries is not None
        return self._entries[key]

    def max_output_tokens(self, model: str) -> int | None:
        """The model's `max_output_tokens` from the price data, or None when unknown."""
        key = self.resolve(model)
        if key is None:
            return None
        assert self._entries is not None
        value = self._entries[key].get("max_output_tokens")
        return value if type(value) is int and value > 0 else None

    def __len__(self) -> int:
        """Number of entries (sample_spec excluded)."""
        self.load()
        assert self._entries is not None
        return len(self._entries)
