"""What an async task costs, exactly (spec §1, §4, §9).

At submit: `(per_request + per_second × seconds) × n × size multiplier × group multiplier`,
in USD, times `quota_per_usd`, rounded half up once (a non-zero charge is at least 1 unit).
That is held, and charged when the task completes. When the upstream reports token usage
for the task and the model has token prices, the charge is recomputed from the usage (§4,
with the same group multiplier) instead, and the difference from the hold settled in the
same step.

The terms are recorded with the task (`TaskTerms.to_json`), so the end charges with the
prices and the multiplier the hold was computed with, whichever instance ends it and
whatever the price list says by then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from plugins.billing.charges import charge_tokens
from plugins.billing.pricing import ModelPrice
from plugins.billing.usage import Usage

__all__ = ["TaskTerms", "round_units"]

_TOKEN_FIELDS = (
    "input",
    "output",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "audio_input",
    "audio_output",
    "image_input",
)


def round_units(units: Fraction) -> int:
    """Quota units rounded half up; a positive amount below half a unit is still 1."""
    if units <= 0:
        return 0
    whole = int(units + Fraction(1, 2))
    return whole or 1


@dataclass(frozen=True, slots=True)
class TaskTerms:
    """The price terms of one task. `multiplier` is the group multiplier, `size_factor` the
    output size's; `tokens` the model's token prices (USD per 1M) when it has them."""

    model: str
    per_request: Decimal
    per_second: Decimal
    seconds: int
    n: int
    size: str
    size_factor: Fraction
    multiplier: Decimal
    quota_per_usd: int
    price_version: str
    tokens: dict[str, Decimal] | None = None

    @classmethod
    def of(
        cls,
        model: str,
        price: ModelPrice,
        seconds: int,
        n: int,
        size: str,
        size_factor: Fraction,
        multiplier: Decimal,
        quota_per_usd: int,
        price_version: str,
    ) -> TaskTerms:
        """The terms for a task of `model` at `price`."""
        tokens = {f: getattr(price, f) for f in _TOKEN_FIELDS} if price.has_tokens else None
        return cls(
            model,
            price.per_request or Decimal(0),
            price.per_second or Decimal(0),
            seconds,
            n,
            size,
            size_factor,
            multiplier,
            quota_per_usd,
            price_version,
            tokens,
        )

    @property
    def usd(self) -> Fraction:
        """The task's price in USD before rounding."""
        each = Fraction(self.per_request) + Fraction(self.per_second) * self.seconds
        return each * self.n * self.size_factor * Fraction(self.multiplier)

    def held(self) -> int:
        """Quota units held at submit, and charged at completion without reported usage."""
        return round_units(self.usd * self.quota_per_usd)

    def for_usage(self, usage: Usage) -> int | None:
        """The charge recomputed from reported token usage, or None when the model has no
        token prices (then the per-task price stands)."""
        if self.tokens is None:
            return None
        price = ModelPrice.tokens(
            self.tokens["input"],
            self.tokens["output"],
            **{f: self.tokens[f] for f in _TOKEN_FIELDS if f not in ("input", "output")},
        )
        return charge_tokens(price, usage, self.multiplier, self.quota_per_usd)

    def to_json(self) -> str:
        """The terms as stored with the task."""
        data: dict[str, Any] = {
            "v": 1,
            "model": self.model,
            "per_request": str(self.per_request),
            "per_second": str(self.per_second),
            "seconds": self.seconds,
            "n": self.n,
            "size": self.size,
            "size_factor": str(self.size_factor),
            "multiplier": str(self.multiplier),
            "quota_per_usd": self.quota_per_usd,
            "price_version": self.price_version,
            "tokens": None if self.tokens is None else {k: str(v) for k, v in self.tokens.items()},
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> TaskTerms:
        """The terms stored with a task."""
        d = json.loads(raw)
        tokens = d.get("tokens")
        return cls(
            str(d["model"]),
            Decimal(d["per_request"]),
            Decimal(d["per_second"]),
            int(d["seconds"]),
            int(d["n"]),
            str(d["size"]),
            Fraction(d["size_factor"]),
            Decimal(d["multiplier"]),
            int(d["quota_per_usd"]),
            str(d["price_version"]),
            None if tokens is None else {k: Decimal(v) for k, v in tokens.items()},
        )
