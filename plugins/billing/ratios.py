"""Import a new-api / one-api ratio export into Weir's pricing config (spec §2).

new-api prices in ratios: model ratio 1 is $2 per 1M input tokens (with Weir's default
500 000 quota per USD, the quota numbers carry over unchanged). The conversion:

* `model_ratio` r → `input` = 2r USD per 1M tokens;
* `completion_ratio` c → `output` = input × c (default 1);
* `cache_ratio` k → `cache_read` = input × k; `create_cache_ratio` → `cache_write`;
* `model_price` p (USD per call) → `per_request` = p; it wins over a ratio, as in new-api;
* `group_ratio` → `groups`.

Each table may be a JSON object or a JSON-encoded string of one (new-api keeps them as
strings in its options table). Keys may be snake_case or new-api's option names
(`ModelRatio`, ...), at the top level or under `data`. All arithmetic is exact.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from plugins.billing.pricing import DEFAULT_QUOTA_PER_USD

__all__ = ["ImportResult", "convert_ratios", "yaml_number"]

_TABLES = {
    "model_ratio": "ModelRatio",
    "completion_ratio": "CompletionRatio",
    "cache_ratio": "CacheRatio",
    "create_cache_ratio": "CreateCacheRatio",
    "model_price": "ModelPrice",
    "group_ratio": "GroupRatio",
}
_USD_PER_M_PER_RATIO = Decimal(2)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The converted config (plain dicts, ready for `yaml.safe_dump`) and any warnings."""

    config: dict[str, Any]
    warnings: tuple[str, ...]


def convert_ratios(export: Any, quota_per_usd: int = DEFAULT_QUOTA_PER_USD) -> ImportResult:
    """Convert a parsed ratio export (a dict, or JSON text) into a billing config dict:
    `{"quota_per_usd": ..., "pricing": {"fallback": "none", "models": {...}},
    "groups": {...}}`. Raises `ValueError` when the export is not a JSON object of tables.
    """
    root = _load(export, "the export")
    if isinstance(root.get("data"), (Mapping, str)) and not any(_has(root, t) for t in _TABLES):
        root = _load(root["data"], "data")
    warnings: list[str] = []
    tables = {name: _table(root, name, warnings) for name in _TABLES}
    if not any(tables.values()):
        raise ValueError("no ratio tables found (expected model_ratio, model_price, group_ratio, ...)")
    ratio, completion, cache, create, price = (
        tables[k] for k in ("model_ratio", "completion_ratio", "cache_ratio", "create_cache_ratio", "model_price")
    )
    models: dict[str, dict[str, Any]] = {}
    for model in sorted(set(ratio) | set(price)):
        if model in price:
            if model in ratio:
                warnings.append(
                    f"{model}: has both model_ratio and model_price; using model_price "
                    f"(per_request {yaml_number(price[model])}) as new-api does"
                )
            models[model] = {"per_request": yaml_number(price[model])}
            continue
        inp = ratio[model] * _USD_PER_M_PER_RATIO
        entry = {"input": inp, "output": inp * completion.get(model, Decimal(1))}
        if model in cache:
            entry["cache_read"] = inp * cache[model]
        if model in create:
            entry["cache_write"] = inp * create[model]
        models[model] = {k: yaml_number(v) for k, v in entry.items()}
    for name in ("completion_ratio", "cache_ratio", "create_cache_ratio"):
        for model in sorted(set(tables[name]) - set(ratio)):
            warnings.append(f"{model}: {name} given without a model_ratio; ignored")
    config: dict[str, Any] = {
        "quota_per_usd": quota_per_usd,
        "pricing": {"fallback": "none", "models": models},
    }
    if tables["group_ratio"]:
        config["groups"] = {g: yaml_number(m) for g, m in sorted(tables["group_ratio"].items())}
    ignored = sorted(k for k in root if k not in _TABLES and k not in _TABLES.values() and k != "data")
    if ignored:
        warnings.append(f"ignored keys: {', '.join(map(str, ignored))}")
    return ImportResult(config, tuple(warnings))


def yaml_number(d: Decimal) -> int | float | str:
    """A YAML-safe value that parses back to exactly `d` via Decimal(str(value)): an int
    when integral, a float when its shortest repr is exact, else a decimal string."""
    d = d.normalize()
    if d == d.to_integral_value():
        return int(d)
    as_float = float(d)
    if Decimal(repr(as_float)) == d:
        return as_float
    return format(d, "f")


def _has(root: Mapping[str, Any], name: str) -> bool:
    return name in root or _TABLES[name] in root


def _load(value: Any, what: str) -> Mapping[str, Any]:
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value, parse_float=Decimal)
        except ValueError as exc:
            raise ValueError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a JSON object")
    return value


def _table(root: Mapping[str, Any], name: str, warnings: list[str]) -> dict[str, Decimal]:
    raw = root.get(name, root.get(_TABLES[name]))
    if raw is None or raw == "":
        return {}
    out: dict[str, Decimal] = {}
    for key, value in _load(raw, name).items():
        number = _number(value)
        if number is None:
            warnings.append(f"{name}.{key}: not a non-negative number ({value!r}); skipped")
        else:
            out[str(key)] = number
    return out


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() and d >= 0 else None
