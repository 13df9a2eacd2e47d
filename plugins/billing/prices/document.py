"""The models block of a price version as one canonical document, and diffs between two.

A document maps a model name (exact, or a glob) to its price fields as they were written
(`input`, `output`, ... or `per_request`), each a plain decimal string: `0.150`, `1.5E-1`
and YAML's `0.15` all become `"0.15"`. Defaults (`cache_read` = input, ...) are not filled
in, so an edit round-trips exactly what the operator wrote. Values come in as YAML
numbers, JSON numbers parsed with `parse_float=Decimal`, or strings: never as binary
floats that lost digits (a YAML float is read through its shortest text, which is the
text the operator typed).

`normalise` validates through the same parser as proxy.yaml (`pricing.parse_pricing`), so
a document the editor can save is one proxy.yaml could have held, and the errors name the
model the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation, localcontext
from typing import Any, Literal

from plugins.billing.pricing import ModelPrice, parse_pricing
from proxy.host import ConfigError

__all__ = ["Change", "Models", "diff", "dumps", "loads", "normalise", "parse"]

#: model → field → plain decimal string.
Models = dict[str, dict[str, str]]

_MAX_DIGITS = 40
_MIN_EXP, _MAX_EXP = -30, 15
_WIDE = Context(prec=_MAX_DIGITS + 2)


def plain(value: Any, path: str) -> str:
    """`value` (an int, Decimal, YAML float or string) as a canonical decimal string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ConfigError(path, f"expected a number, got {value!r}")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(path, f"expected a number, got {value!r}") from None
    if not d.is_finite() or d < 0:
        raise ConfigError(path, f"expected a finite number >= 0, got {value!r}")
    if not d:
        return "0"
    # Bounded so that a price's text stays short (no "1e-999999" expanded to a megabyte).
    if len(d.as_tuple().digits) > _MAX_DIGITS or not _MIN_EXP <= d.adjusted() <= _MAX_EXP:
        raise ConfigError(
            path, f"{value!r} is out of range (at most {_MAX_DIGITS} digits, from 1e{_MIN_EXP} to 1e{_MAX_EXP})"
        )
    # normalize() rounds to the context's precision (28 digits by default): widen it first.
    with localcontext(_WIDE):
        return format(d.normalize(), "f")


def normalise(raw: Any, path: str = "models") -> Models:
    """Validate a models block and return it canonical. Raises `ConfigError` naming the
    model and field of the first problem (unknown field, both token and per-request
    prices, a missing `input`/`output`, a negative or non-numeric price)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"expected a mapping of model → prices, got {type(raw).__name__}")
    out: Models = {}
    for name, spec in raw.items():
        model = str(name)
        if not model or model != model.strip() or len(model) > 200:
            raise ConfigError(f"{path}.{model}", "a model name must be 1-200 characters without surrounding spaces")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{path}.{model}", "expected a mapping of prices")
        out[model] = {str(k): plain(v, f"{path}.{model}.{k}") for k, v in spec.items()}
    parse_pricing({"models": out}, pricing_path=path.removesuffix(".models") if path.endswith(".models") else "pricing")
    return {name: dict(sorted(fields.items())) for name, fields in sorted(out.items())}


def parse(models: Models) -> dict[str, ModelPrice]:
    """The resolved prices of a canonical document (defaults filled in)."""
    return dict(parse_pricing({"models": models}).models)


def dumps(models: Models) -> str:
    """The canonical JSON text of a document (what the store keeps and hashes)."""
    return json.dumps(models, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def loads(document: str) -> Models:
    """A stored document back as a canonical mapping (validated: a hand-edited store
    cannot smuggle a float or a bad price in)."""
    try:
        raw = json.loads(document, parse_float=Decimal)
    except ValueError as exc:
        raise ConfigError("models", f"the stored price document is not JSON: {exc}") from None
    return normalise(raw)


@dataclass(frozen=True, slots=True)
class Change:
    """One model's difference between two documents."""

    model: str
    kind: Literal["added", "removed", "changed"]
    before: Mapping[str, str] | None
    after: Mapping[str, str] | None

    def as_dict(self) -> dict[str, Any]:
        """Wire form: `{"model", "kind", "before", "after"}`."""
        return {"model": self.model, "kind": self.kind, "before": self.before, "after": self.after}

    def describe(self) -> str:
        """One line for people: `~ gpt-4o: input 2.5 → 3, output 10 → 12`."""
        if self.kind == "added":
            return f"+ {self.model}: {_fields(self.after)}"
        if self.kind == "removed":
            return f"- {self.model}: {_fields(self.before)}"
        before, after = self.before or {}, self.after or {}
        parts = []
        for field in sorted(set(before) | set(after)):
            b, a = before.get(field, "(default)"), after.get(field, "(default)")
            if b != a:
                parts.append(f"{field} {b} → {a}")
        return f"~ {self.model}: {', '.join(parts)}"


def _fields(prices: Mapping[str, str] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((prices or {}).items()))


def diff(old: Models, new: Models) -> list[Change]:
    """What changes from `old` to `new`, by model name."""
    changes: list[Change] = []
    for model in sorted(set(old) | set(new)):
        before, after = old.get(model), new.get(model)
        if before == after:
            continue
        kind: Literal["added", "removed", "changed"] = (
            "added" if before is None else "removed" if after is None else "changed"
        )
        changes.append(Change(model, kind, before, after))
    return changes
