"""What the price editor flags before a save (seed 004, new-api's visual editor; spec §9).

Kinds, each with the model it concerns and a sentence for people:
  * `both_modes`: a model priced per token and per request at once. It cannot be charged,
    so it blocks the save whatever the operator confirms (`blocking`).
  * `glob_shadows_exact`: a glob matches a name that has a price of its own: a configured
    exact name (the exact price wins, so the glob never applies to it), or a served name
    whose reference price the glob replaces.
  * `unpriced`: a served model with no price: requests for it are refused. A served
    pattern counts only when no configured name falls under it and there is no fallback.
  * `zero_price`: a configured price of 0 (the model, or that part of it, is free).
  * `far_from_reference`: a configured input, output or per-request price more than 10×
    above or below the LiteLLM reference for the same name.

Everything but `both_modes` may be saved once confirmed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from plugins.billing.price_data import LiteLLMPrices
from plugins.billing.prices import document as doc
from plugins.billing.prices.catalog import Listed, is_pattern
from plugins.billing.pricing import ModelPrice

__all__ = ["Conflict", "find_conflicts"]

#: How far from the reference a configured price may be before it is flagged.
FACTOR = Decimal(10)
_COMPARED = ("input", "output", "per_request")


@dataclass(frozen=True, slots=True)
class Conflict:
    """One problem in a pending price list."""

    kind: str
    model: str
    message: str
    blocking: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Wire form."""
        return {"kind": self.kind, "model": self.model, "message": self.message, "blocking": self.blocking}


def find_conflicts(
    models: Mapping[str, Mapping[str, Any]], served: Sequence[Listed], reference: LiteLLMPrices, fallback: bool
) -> list[Conflict]:
    """Every conflict in `models` (a models block, not yet validated) given what the
    upstreams serve (`served`, from the current catalog) and the reference prices."""
    found = [
        Conflict(
            "both_modes",
            name,
            f"{name} has both per-request and token prices "
            f"({', '.join(sorted(set(spec) - {'per_request'}))}); choose one",
            blocking=True,
        )
        for name, spec in models.items()
        if isinstance(spec, Mapping)
        and "per_request" in spec
        and "per_second" not in spec
        and set(spec) - {"per_request"}
    ]  # a task model may have both
    clean = {n: s for n, s in models.items() if n not in {c.model for c in found}}
    try:
        prices = doc.parse(doc.normalise(clean))
    except Exception:  # noqa: BLE001 - other errors are reported by the save itself, with their path
        return found
    found += _shadows(prices, served, reference)
    found += _unpriced(prices, served, fallback, set(map(str, models)))
    found += _zeros(prices)
    found += _far(prices, reference)
    return found


def _shadows(prices: Mapping[str, ModelPrice], served: Sequence[Listed], reference: LiteLLMPrices) -> list[Conflict]:
    out = []
    exact = sorted(n for n in prices if not is_pattern(n))
    served_exact = sorted({i.model for i in served if not i.pattern} - set(prices))
    for glob in sorted(n for n in prices if is_pattern(n)):
        covered = [n for n in exact if fnmatch.fnmatchcase(n, glob)]
        if covered:
            out.append(
                Conflict(
                    "glob_shadows_exact",
                    glob,
                    f"{glob} also matches {_names(covered)}, priced on their own: the exact price wins there",
                )
            )
        replaced = [n for n in served_exact if fnmatch.fnmatchcase(n, glob) and reference.lookup(n) is not None]
        if replaced:
            out.append(
                Conflict("glob_shadows_exact", glob, f"{glob} replaces the reference price of {_names(replaced)}")
            )
    return out


def _unpriced(
    prices: Mapping[str, ModelPrice], served: Sequence[Listed], fallback: bool, named: set[str]
) -> list[Conflict]:
    out = []
    for item in served:
        if item.model in named or any(fnmatch.fnmatchcase(item.model, g) for g in prices if is_pattern(g)):
            continue
        if fallback and (item.pattern or item.reference is not None):
            continue
        # A pattern that covers configured names (a catch-all "*") is priced where it is used.
        if item.pattern and any(fnmatch.fnmatchcase(name, item.model) for name in prices):
            continue
        what = "names matching this pattern" if item.pattern else "it"
        out.append(
            Conflict(
                "unpriced",
                item.model,
                f"{item.model} is served by {', '.join(item.upstreams)} "
                f"but has no price: requests for {what} are refused (model_not_priced)",
            )
        )
    return out


def _zeros(prices: Mapping[str, ModelPrice]) -> list[Conflict]:
    out = []
    for name, price in sorted(prices.items()):
        zero = [
            f
            for f in _COMPARED
            if getattr(price, f) is not None and getattr(price, f) == 0 and (f == "per_request") == price.is_per_request
        ]
        if zero:
            out.append(Conflict("zero_price", name, f"{name} costs nothing ({', '.join(zero)} is 0)"))
    return out


def _far(prices: Mapping[str, ModelPrice], reference: LiteLLMPrices) -> list[Conflict]:
    out = []
    for name, price in sorted(prices.items()):
        ref = None if is_pattern(name) else reference.lookup(name)
        if ref is None or ref[0].is_per_request != price.is_per_request:
            continue
        for f in _COMPARED:
            mine, theirs = getattr(price, f), getattr(ref[0], f)
            if not mine or not theirs or (f == "per_request") != price.is_per_request:
                continue
            if mine > theirs * FACTOR or mine * FACTOR < theirs:
                out.append(
                    Conflict(
                        "far_from_reference",
                        name,
                        f"{name} {f} is {mine}, more than 10× from the reference {theirs} (LiteLLM {ref[1]})",
                    )
                )
    return out


def _names(names: Sequence[str], shown: int = 5) -> str:
    head = ", ".join(names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "")
