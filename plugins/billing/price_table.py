"""The loaded price list a request is priced with: exact model names first, then globs
(the most specific first), then the reference prices; and its version hash, which a hold
keeps so that it settles at the prices it was estimated with. The price values and the
`pricing:` block's parsing are in `plugins.billing.pricing`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal

from plugins.billing.pricing import FallbackPrices, ModelPrice, PricingConfig, plain_decimal

_GLOB_CHARS = re.compile(r"[*?\[]")

__all__ = ["PriceTable"]


@dataclass(frozen=True, slots=True)
class _Glob:
    pattern: str
    regex: re.Pattern[str]
    price: ModelPrice


class PriceTable:
    """One loaded, immutable price list: exact names, globs, then the fallback table.

    `version` is a short hash of the normalised content (prices, groups, quota per USD,
    fallback snapshot), so a hold can be settled with the prices it was estimated with.
    """

    __slots__ = ("config", "version", "_fallback", "_globs", "_exact", "_matched")

    #: Model names whose glob or fallback answer is remembered (clients choose the names,
    #: so the memo is bounded; the table never changes, so an answer never goes stale).
    MATCH_MEMO = 1024

    def __init__(self, config: PricingConfig, fallback: FallbackPrices | None = None) -> None:
        if config.fallback == "litellm" and fallback is None:
            raise ValueError("fallback: litellm needs the reference prices (plugins.billing.price_data.LiteLLMPrices)")
        self.config = config
        self._fallback = fallback if config.fallback == "litellm" else None
        self._exact = {n: p for n, p in config.models.items() if not _GLOB_CHARS.search(n)}
        globs = [
            _Glob(n, re.compile(fnmatch.translate(n)), p) for n, p in config.models.items() if _GLOB_CHARS.search(n)
        ]
        # The longest literal prefix is the most specific pattern; ties go to the longer
        # pattern, then to the name, so the order never depends on YAML key order.
        globs.sort(key=lambda g: (-_literal_prefix_len(g.pattern), -len(g.pattern), g.pattern))
        self._globs = tuple(globs)
        self._matched: dict[str, tuple[ModelPrice, str] | None] = {}
        self.version = self._hash()

    def lookup(self, model: str) -> ModelPrice | None:
        """The price for the model name the client sent, or None (answer `model_not_priced`)."""
        found = self.describe(model)
        return found[0] if found else None

    def describe(self, model: str) -> tuple[ModelPrice, str] | None:
        """The price and where it came from: "config", "config-glob:<pattern>" or
        "litellm:<key>"; None when the model is not priced."""
        price = self._exact.get(model)
        if price is not None:
            return price, "config"
        if model in self._matched:
            return self._matched[model]
        found = self._match(model)
        if len(self._matched) >= self.MATCH_MEMO:
            self._matched.clear()
        self._matched[model] = found
        return found

    def _match(self, model: str) -> tuple[ModelPrice, str] | None:
        for g in self._globs:
            if g.regex.match(model):
                return g.price, f"config-glob:{g.pattern}"
        if self._fallback is not None:
            hit = self._fallback.lookup(model)
            if hit is not None:
                return hit[0], f"litellm:{hit[1]}"
        return None

    def multiplier(self, user_group: str, key_group: str | None) -> Decimal:
        """The price multiplier for a user's group and the using key's group."""
        return self.config.multiplier(user_group, key_group)

    def _hash(self) -> str:
        c = self.config
        doc = {
            "quota_per_usd": c.quota_per_usd,
            "fallback": self._fallback.snapshot if self._fallback is not None else "none",
            "models": {n: p.as_dict() for n, p in sorted(c.models.items())},
            "groups": {g: plain_decimal(m) for g, m in sorted(c.groups.items())},
            "group_overrides": {
                u: {k: plain_decimal(m) for k, m in sorted(inner.items())}
                for u, inner in sorted(c.group_overrides.items())
            },
        }
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _literal_prefix_len(pattern: str) -> int:
    m = _GLOB_CHARS.search(pattern)
    return m.start() if m else len(pattern)
