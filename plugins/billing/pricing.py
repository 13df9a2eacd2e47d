"""Prices and group multipliers (docs/billing-rules.md §1, §2); the charge arithmetic that
uses them is `plugins.billing.charges` (re-exported here).

Everything here is exact: prices are `Decimal` parsed from the string form of the YAML
value (so a YAML float 0.15 becomes exactly 0.15), and a charge is rounded once, at the
end, with ROUND_HALF_UP. Prices are USD per 1M tokens, USD per request, or USD per 1M
input characters (text-to-speech).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation, localcontext
from math import lcm
from typing import Any, Literal, Protocol

# The charges live in their own module; imported from here by many callers.
from plugins.billing.charges import UNIT_MULTIPLIER, charge_characters, charge_io, charge_requests, charge_tokens
from proxy.host import ConfigError

__all__ = [
    "DEFAULT_QUOTA_PER_USD",
    "ConfigError",
    "FallbackPrices",
    "ModelPrice",
    "PricingConfig",
    "charge_characters",
    "charge_io",
    "charge_requests",
    "charge_tokens",
    "format_usd",
    "multiplier",
    "parse_pricing",
    "usd",
]

DEFAULT_QUOTA_PER_USD = 500_000
_ONE = UNIT_MULTIPLIER
_ZERO = Decimal(0)
# Wide enough that no realistic tokens × price product is ever rounded before the final step.
_EXACT = Context(prec=60, rounding=ROUND_HALF_UP)
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
_PRICE_KEYS = frozenset((*_TOKEN_FIELDS, "per_request", "characters", "per_second"))
# The price of each `Usage` count, in the order `charge_tokens` multiplies them.
_RATE_FIELDS = (
    "input",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "output",
    "audio_input",
    "audio_output",
    "image_input",
)
_PRICING_KEYS = ("fallback", "group_overrides", "groups", "models", "quota_per_usd")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """The resolved price of one model: every token price filled in, a per-request price,
    or a per-character price.

    Token prices are USD per 1M tokens. For a per-request model `per_request` is set, for a
    per-character one (text-to-speech) `characters` (USD per 1M input characters); their
    token prices are zero and unused (`charge_tokens` refuses such a price rather than
    charge nothing). Build with `ModelPrice.tokens(...)`, `ModelPrice.request(...)` or
    `ModelPrice.per_character(...)`, which apply the §2 defaults.

    `per_second` (USD per second of a task's output, spec §9) makes the model a task model:
    a task is charged `per_request + per_second × seconds` (either may be absent), and token
    prices, when set too, price the token usage a task reports (`with_task_prices`).
    """

    input: Decimal = _ZERO
    output: Decimal = _ZERO
    cache_read: Decimal = _ZERO
    cache_write: Decimal = _ZERO
    cache_write_1h: Decimal = _ZERO
    audio_input: Decimal = _ZERO
    audio_output: Decimal = _ZERO
    image_input: Decimal = _ZERO
    per_request: Decimal | None = None
    characters: Decimal | None = None
    per_second: Decimal | None = None
    # The prices as integers over one common denominator (`_scale`), in `_RATE_FIELDS`
    # order, computed once: a charge is then integer arithmetic, exact like the Decimal
    # formula it replaces (which cost ~10 µs a request, twice), with the same rounding.
    _rates: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _scale: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ratios = [getattr(self, name).as_integer_ratio() for name in _RATE_FIELDS]
        # At most one of these is set (`_model_price` refuses both): it is `_rates[-1]`.
        if self.per_request is not None:
            ratios.append(self.per_request.as_integer_ratio())
        elif self.characters is not None:
            ratios.append(self.characters.as_integer_ratio())
        scale = lcm(*(d for _, d in ratios))
        object.__setattr__(self, "_scale", scale)
        object.__setattr__(self, "_rates", tuple(n * (scale // d) for n, d in ratios))

    @classmethod
    def tokens(
        cls,
        input: Decimal,
        output: Decimal,
        *,
        cache_read: Decimal | None = None,
        cache_write: Decimal | None = None,
        cache_write_1h: Decimal | None = None,
        audio_input: Decimal | None = None,
        audio_output: Decimal | None = None,
        image_input: Decimal | None = None,
    ) -> ModelPrice:
        """A token-priced model; a missing price takes its §2 default, never 0."""
        return cls(
            input=input,
            output=output,
            cache_read=input if cache_read is None else cache_read,
            cache_write=input * Decimal("1.25") if cache_write is None else cache_write,
            cache_write_1h=input * 2 if cache_write_1h is None else cache_write_1h,
            audio_input=input if audio_input is None else audio_input,
            audio_output=output if audio_output is None else audio_output,
            image_input=input if image_input is None else image_input,
        )

    @classmethod
    def request(cls, per_request: Decimal) -> ModelPrice:
        """A model priced per request (image generation and the like)."""
        return cls(per_request=per_request)

    @classmethod
    def per_character(cls, characters: Decimal) -> ModelPrice:
        """A model priced per 1M input characters (text-to-speech)."""
        return cls(characters=characters)

    @property
    def is_free(self) -> bool:
        """True when every price is zero (LiteLLM lists moderation models so)."""
        return not any(self._rates) and not self.per_second

    def with_task_prices(self, per_request: Decimal | None, per_second: Decimal | None) -> ModelPrice:
        """This price (token prices, or none) made a task model's: `per_second` and
        `per_request` per task."""
        tokens = {name: getattr(self, name) for name in _TOKEN_FIELDS}
        return ModelPrice(**tokens, per_request=per_request, per_second=per_second)

    @property
    def is_per_request(self) -> bool:
        """True when this model is charged per request rather than per token."""
        return self.per_request is not None

    @property
    def is_task(self) -> bool:
        """True for a task model (it has `per_second`, spec §9): priced per task, not per call."""
        return self.per_second is not None

    @property
    def has_tokens(self) -> bool:
        """True when any token price is set (a task model may have them for reported usage)."""
        return any(getattr(self, name) for name in _TOKEN_FIELDS)

    def as_dict(self) -> dict[str, str]:
        """The prices as plain decimal strings (for `weir pricing show` and hashing)."""
        if self.per_second is not None:
            out = {name: plain_decimal(getattr(self, name)) for name in _TOKEN_FIELDS} if self.has_tokens else {}
            if self.per_request is not None:
                out["per_request"] = plain_decimal(self.per_request)
            out["per_second"] = plain_decimal(self.per_second)
            return out
        if self.per_request is not None:
            return {"per_request": plain_decimal(self.per_request)}
        if self.characters is not None:
            return {"characters": plain_decimal(self.characters)}
        return {name: plain_decimal(getattr(self, name)) for name in _TOKEN_FIELDS}


@dataclass(frozen=True, slots=True)
class PricingConfig:
    """The billing plugin's price list: the `pricing:` block plus quota and group settings.

    `models` maps an exact name or a glob to its resolved price. `groups` maps a group to
    its price multiplier; `group_overrides[user_group][key_group]` replaces it (spec §3).
    """

    quota_per_usd: int = DEFAULT_QUOTA_PER_USD
    fallback: Literal["none", "litellm"] = "none"
    models: Mapping[str, ModelPrice] = field(default_factory=dict)
    groups: Mapping[str, Decimal] = field(default_factory=dict)
    group_overrides: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)

    def multiplier(self, user_group: str, key_group: str | None) -> Decimal:
        """The price multiplier for a user's group and the using key's group."""
        return multiplier(self.groups, self.group_overrides, user_group, key_group)

    @classmethod
    def from_plugin_config(cls, data: Mapping[str, Any], path: str = "config") -> PricingConfig:
        """Read the spec §2 layout: `quota_per_usd`, `pricing: {fallback, models}`,
        `groups`, `group_overrides`. Other keys of the plugin's config are left alone."""
        pricing = data.get("pricing") or {}
        if not isinstance(pricing, Mapping):
            raise ConfigError(f"{path}.pricing", "expected a mapping")
        flat: dict[str, Any] = {k: data[k] for k in ("quota_per_usd", "groups", "group_overrides") if k in data}
        flat.update(pricing)
        return parse_pricing(flat, path, pricing_path=f"{path}.pricing")


class FallbackPrices(Protocol):
    """A reference price list consulted after the configured models (LiteLLM's)."""

    snapshot: str

    def lookup(self, model: str) -> tuple[ModelPrice, str] | None:
        """The price for `model` and the reference key it was found under, or None."""
        ...


def parse_pricing(data: Mapping[str, Any], path: str = "pricing", *, pricing_path: str | None = None) -> PricingConfig:
    """Build a `PricingConfig` from a flat mapping with the keys `quota_per_usd`,
    `fallback`, `models`, `groups` and `group_overrides`.

    Raises `ConfigError` naming the YAML path (and so the model) of the first problem.
    `pricing_path` is where `fallback` and `models` live when they came from a nested block.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(path, "expected a mapping")
    ppath = pricing_path or path
    unknown = sorted(set(map(str, data)) - set(_PRICING_KEYS))
    if unknown:
        raise ConfigError(f"{ppath}.{unknown[0]}", f"unknown key (known keys: {', '.join(_PRICING_KEYS)})")
    qpu = _positive_int(data.get("quota_per_usd", DEFAULT_QUOTA_PER_USD), f"{path}.quota_per_usd")
    fallback = data.get("fallback", "none")
    if fallback not in ("none", "litellm"):
        raise ConfigError(f"{ppath}.fallback", f"expected none or litellm, got {fallback!r}")
    models_raw = _mapping(data.get("models"), f"{ppath}.models")
    models = {str(name): _model_price(spec, f"{ppath}.models.{name}") for name, spec in models_raw.items()}
    groups = {
        str(g): _decimal(v, f"{path}.groups.{g}") for g, v in _mapping(data.get("groups"), f"{path}.groups").items()
    }
    overrides: dict[str, dict[str, Decimal]] = {}
    for ug, inner in _mapping(data.get("group_overrides"), f"{path}.group_overrides").items():
        ipath = f"{path}.group_overrides.{ug}"
        overrides[str(ug)] = {str(kg): _decimal(v, f"{ipath}.{kg}") for kg, v in _mapping(inner, ipath).items()}
    return PricingConfig(qpu, fallback, models, groups, overrides)


def _model_price(spec: Any, path: str) -> ModelPrice:
    if not isinstance(spec, Mapping):
        raise ConfigError(path, "expected a mapping of prices")
    unknown = sorted(set(map(str, spec)) - _PRICE_KEYS)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", f"unknown price (known: {', '.join(sorted(_PRICE_KEYS))})")
    vals = {str(k): _decimal(v, f"{path}.{k}") for k, v in spec.items()}
    model = path.rsplit(".models.", 1)[-1]
    if "characters" in vals:
        others = sorted(set(vals) - {"characters"})
        if others:
            raise ConfigError(
                path,
                f"model {model!r} sets both characters and {', '.join(others)}; a per-character "
                "(text-to-speech) price stands alone",
            )
        return ModelPrice.per_character(vals["characters"])
    if "per_second" in vals:
        return _task_price(vals, path, model)
    if "per_request" in vals:
        tokens = sorted(set(vals) - {"per_request"})
        if tokens:
            raise ConfigError(
                path, f"model {model!r} sets both per_request and token prices ({', '.join(tokens)}); choose one"
            )
        return ModelPrice.request(vals["per_request"])
    for required in ("input", "output"):
        if required not in vals:
            raise ConfigError(path, f"model {model!r} needs `{required}` (USD per 1M tokens) or `per_request`")
    return ModelPrice.tokens(**vals)


def _task_price(vals: dict[str, Decimal], path: str, model: str) -> ModelPrice:
    """A task model (spec §9): `per_second`, optionally `per_request`, and optionally token
    prices (then both `input` and `output`) for the token usage a task reports."""
    per_request, per_second = vals.pop("per_request", None), vals.pop("per_second")
    if not vals:
        return ModelPrice().with_task_prices(per_request, per_second)
    for required in ("input", "output"):
        if required not in vals:
            raise ConfigError(path, f"model {model!r}: token prices for task usage need `{required}` too")
    return ModelPrice.tokens(**vals).with_task_prices(per_request, per_second)


def _decimal(value: Any, path: str) -> Decimal:
    # str() first: a YAML float 0.1 must become Decimal("0.1"), not its binary expansion.
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ConfigError(path, f"expected a number, got {value!r}")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(path, f"expected a number, got {value!r}") from None
    if not d.is_finite() or d < 0:
        raise ConfigError(path, f"expected a finite number >= 0, got {value!r}")
    return d


def _positive_int(value: Any, path: str) -> int:
    d = _decimal(value, path)
    if d != d.to_integral_value() or d <= 0:
        raise ConfigError(path, f"expected a positive integer, got {value!r}")
    return int(d)


def _mapping(value: Any, path: str) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def plain_decimal(d: Decimal) -> str:
    """A canonical string: 0.150 and 0.15 and 1.5E-1 all give "0.15"."""
    return format(d.normalize(), "f") if d else "0"


def multiplier(
    groups: Mapping[str, Decimal],
    overrides: Mapping[str, Mapping[str, Decimal]],
    user_group: str,
    key_group: str | None,
) -> Decimal:
    """The price multiplier (spec §3): `overrides[user_group][key_group]` if set, else
    `groups[key_group]`. A key without a group uses its user's group. A group that is not
    listed costs 1 (so a config without `groups:` bills list prices)."""
    using = key_group or user_group
    inner = overrides.get(user_group)
    if inner is not None:
        m = inner.get(using)
        if m is not None:
            return m
    return groups.get(using, _ONE)


def usd(quota: int, quota_per_usd: int) -> Decimal:
    """Quota units as exact USD (for messages and reports)."""
    with localcontext(_EXACT):
        return Decimal(quota) / quota_per_usd


def format_usd(quota: int, quota_per_usd: int) -> str:
    """Quota units as a human string, e.g. "$0.000435" (at most 6 decimals, half-up)."""
    amount = usd(quota, quota_per_usd).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
    text = format(amount, "f").rstrip("0").rstrip(".")
    return f"-${text[1:]}" if text.startswith("-") else f"${text or '0'}"
