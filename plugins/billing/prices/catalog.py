"""Every model the upstreams serve, with the price a caller pays and where it comes from.

What is "served" (the configured upstreams, never a call to them):
  * each upstream's `models` entries (exact names, and globs kept as patterns) and the
    names in its `model_map`;
  * each configured price key (exact or glob) that one of the upstreams' globs accepts.

Each entry's `source` (seed 003, sub2api's available-channels view):
  * `configured`: priced by the current price version (an exact name or a glob);
  * `reference`: not configured, priced from the LiteLLM snapshot (`fallback: litellm`):
    callable, shown with the snapshot's label and date. A pattern with no configured price
    is `reference` too when the fallback is on: each name under it pays its reference price;
  * `unpriced`: neither: requests for it are refused with `model_not_priced` until priced.

The reference price is looked up for every exact name whatever `fallback` says, so the
editor can show it beside the configured price.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from plugins.billing.price_data import LiteLLMPrices
from plugins.billing.price_table import PriceTable
from plugins.billing.pricing import ModelPrice
from proxy.host import Config

__all__ = ["Listed", "Source", "capabilities", "served_models"]

Source = Literal["configured", "reference", "unpriced"]
_GLOB = re.compile(r"[*?\[]")
_MODES = {
    "chat": "chat",
    "completion": "chat",
    "responses": "chat",
    "embedding": "embedding",
    "image_generation": "image",
    "image_edit": "image",
    "audio_transcription": "audio",
    "audio_speech": "audio",
    "moderation": "moderation",
    "rerank": "rerank",
    "video_generation": "video",
}
_FLAGS = (
    ("supports_vision", "vision"),
    ("supports_function_calling", "tools"),
    ("supports_reasoning", "reasoning"),
    ("supports_prompt_caching", "caching"),
    ("supports_audio_input", "audio-in"),
    ("supports_audio_output", "audio-out"),
)


@dataclass(frozen=True, slots=True)
class Listed:
    """One served model (or pattern) and its price."""

    model: str
    pattern: bool
    upstreams: tuple[str, ...]
    providers: tuple[str, ...]
    source: Source
    #: The charged price (None: unpriced, or a pattern priced name by name from the reference).
    price: ModelPrice | None
    #: Where `price` came from: "config", "config-glob:<pattern>", "litellm:<key>" or "".
    matched: str
    #: LiteLLM's price for this exact name (None for patterns and unknown names).
    reference: ModelPrice | None
    reference_key: str
    capabilities: tuple[str, ...]


def is_pattern(name: str) -> bool:
    """True when `name` is a glob (`*`, `?` or `[`)."""
    return _GLOB.search(name) is not None


def capabilities(entry: Mapping[str, Any] | None) -> tuple[str, ...]:
    """What a LiteLLM entry says the model does: its mode (chat, embedding, image, audio,
    ...) and flags (vision, tools, reasoning, caching, audio-in, audio-out)."""
    if entry is None:
        return ()
    found: list[str] = []
    mode = _MODES.get(str(entry.get("mode", "")))
    if mode:
        found.append(mode)
    found += [name for flag, name in _FLAGS if entry.get(flag) is True]
    return tuple(found)


def _served(config: Config, priced: Iterable[str]) -> dict[str, set[str]]:
    """Served name → the upstreams that serve it."""
    names: dict[str, set[str]] = {}
    for up in config.upstreams:
        for name in (*up.models, *up.model_map):
            names.setdefault(name, set()).add(up.name)
    for key in priced:
        for up in config.upstreams:
            # A configured glob is compared as text: "acme-gpt*" is served by an upstream of "acme-*".
            if any(fnmatch.fnmatchcase(key, g) for g in up.models) or key in up.model_map:
                names.setdefault(key, set()).add(up.name)
    return names


def serving(config: Config, name: str) -> tuple[str, ...]:
    """The upstreams whose model list accepts `name` (a pattern is compared as text)."""
    return tuple(
        up.name
        for up in config.upstreams
        if name in up.model_map or any(fnmatch.fnmatchcase(name, g) for g in up.models)
    )


def served_models(
    config: Config, table: PriceTable, configured: Mapping[str, ModelPrice], reference: LiteLLMPrices
) -> list[Listed]:
    """Every served model of `config`'s upstreams, by name, priced by `table` (see module doc)."""
    kinds = {up.name: up.type for up in config.upstreams}
    listed = []
    for name, ups in sorted(_served(config, configured).items()):
        upstreams = tuple(sorted(ups))
        providers = tuple(sorted({kinds[u] for u in upstreams}))
        listed.append(_listed(name, upstreams, providers, table, configured, reference))
    return listed


def _listed(
    name: str,
    upstreams: tuple[str, ...],
    providers: tuple[str, ...],
    table: PriceTable,
    configured: Mapping[str, ModelPrice],
    reference: LiteLLMPrices,
) -> Listed:
    pattern = is_pattern(name)
    ref = None if pattern else reference.lookup(name)
    caps = () if pattern else capabilities(reference.entry(name))
    found = (configured[name], "config") if name in configured else table.describe(name)
    source: Source = "unpriced"
    price: ModelPrice | None = None
    matched = ""
    if found is not None:
        price, matched = found
        source = "reference" if matched.startswith("litellm:") else "configured"
    elif pattern and table.config.fallback == "litellm":
        source = "reference"
    return Listed(
        name,
        pattern,
        upstreams,
        providers,
        source,
        price,
        matched,
        ref[0] if ref else None,
        ref[1] if ref else "",
        caps,
    )


def sort_key(field: str) -> Any:
    """A sort key for `Listed` by `field` (model, source, or a price field; unpriced last)."""
    if field in ("model", "source"):
        return lambda item: (False, getattr(item, field), item.model)

    def by_price(item: Listed) -> tuple[bool, Any, str]:
        p = item.price
        if p is None:
            value = None
        elif field == "per_request":
            value = p.per_request
        else:
            value = None if p.is_per_request else getattr(p, field, None)
        return (value is None, value if value is not None else 0, item.model)

    return by_price


def filtered(
    items: Sequence[Listed], *, q: str = "", provider: str = "", capability: str = "", source: str = ""
) -> list[Listed]:
    """The items matching every given filter (`q`: a case-insensitive substring of the name)."""
    needle = q.strip().lower()
    return [
        i
        for i in items
        if (not needle or needle in i.model.lower())
        and (not provider or provider in i.providers)
        and (not capability or capability in i.capabilities)
        and (not source or source == i.source)
    ]
