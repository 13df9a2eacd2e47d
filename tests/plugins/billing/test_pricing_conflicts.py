"""Conflict detection of the price editor, table-driven: every kind, and what must not be
flagged (seed 004; docs/pricing.md, "Conflicts")."""

from __future__ import annotations

from typing import Any

import pytest

from plugins.billing.price_data import LiteLLMPrices
from plugins.billing.price_table import PriceTable
from plugins.billing.prices.catalog import served_models
from plugins.billing.prices.conflicts import find_conflicts
from plugins.billing.prices.document import normalise, parse
from plugins.billing.pricing import PricingConfig
from proxy.config import parse_config

REFERENCE = LiteLLMPrices()
UPSTREAMS = [
    {"name": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["gpt-*", "mystery-model"]},
    {"name": "local", "base_url": "http://127.0.0.1:9/v1", "models": ["llama-*"]},
]
BASE: dict[str, Any] = {"gpt-4o-mini": {"input": "0.15", "output": "0.6"}}

CASES: list[tuple[str, dict[str, Any], bool, set[tuple[str, str, bool]]]] = [
    # (case, models, fallback litellm, {(kind, model, blocking)})
    (
        "clean: everything priced, near the reference",
        {**BASE, "mystery-model": {"per_request": 1}, "llama-*": {"input": 1, "output": 1}},
        True,
        set(),
    ),
    (
        "both ways",
        {**BASE, "mystery-model": {"per_request": 1, "input": 1, "output": 2}},
        True,
        {("both_modes", "mystery-model", True)},
    ),
    (
        "a glob over an exact configured name",
        {**BASE, "gpt-4o*": {"input": 2.5, "output": 10}, "mystery-model": {"per_request": 1}},
        True,
        {("glob_shadows_exact", "gpt-4o*", False)},
    ),
    (
        "served, no price, no fallback",
        {**BASE, "llama-*": {"input": 1, "output": 1}},
        False,
        {("unpriced", "mystery-model", False)},
    ),
    (
        "a served pattern with nothing under it, no fallback",
        {**BASE, "mystery-model": {"per_request": 1}},
        False,
        {("unpriced", "llama-*", False)},
    ),
    ("a zero price", {**BASE, "mystery-model": {"per_request": 0}}, True, {("zero_price", "mystery-model", False)}),
    (
        "a zero output",
        {"gpt-4o-mini": {"input": "0.15", "output": 0}, "mystery-model": {"per_request": 1}},
        True,
        {("zero_price", "gpt-4o-mini", False)},
    ),
    (
        "more than 10x above the reference",
        {"gpt-4o-mini": {"input": "1.51", "output": "0.6"}, "mystery-model": {"per_request": 1}},
        True,
        {("far_from_reference", "gpt-4o-mini", False)},
    ),
    (
        "more than 10x below the reference",
        {"gpt-4o-mini": {"input": "0.15", "output": "0.059"}, "mystery-model": {"per_request": 1}},
        True,
        {("far_from_reference", "gpt-4o-mini", False)},
    ),
    (
        "exactly 10x is not flagged",
        {"gpt-4o-mini": {"input": "1.5", "output": "0.06"}, "mystery-model": {"per_request": 1}},
        True,
        set(),
    ),
]


def _conflicts(models: dict[str, Any], fallback: bool) -> set[tuple[str, str, bool]]:
    config = parse_config({"upstreams": UPSTREAMS}, env={})
    try:
        prices = parse(normalise(models))
    except Exception:
        prices = parse(normalise(BASE))
    table = PriceTable(PricingConfig(fallback="litellm" if fallback else "none", models=prices), REFERENCE)
    served = served_models(config, table, prices, REFERENCE)
    return {(c.kind, c.model, c.blocking) for c in find_conflicts(models, served, REFERENCE, fallback)}


@pytest.mark.parametrize(("models", "fallback", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_conflicts(models: dict[str, Any], fallback: bool, expected: set[tuple[str, str, bool]]) -> None:
    assert _conflicts(models, fallback) == expected


def test_a_glob_replacing_a_reference_price_is_flagged() -> None:
    config = parse_config(
        {"upstreams": [{"name": "o", "base_url": "http://127.0.0.1:9/v1", "models": ["gpt-4o", "gpt-4o-mini"]}]}, env={}
    )
    models = {"gpt-4o*": {"input": 2.5, "output": 10}}
    prices = parse(normalise(models))
    table = PriceTable(PricingConfig(fallback="litellm", models=prices), REFERENCE)
    found = find_conflicts(models, served_models(config, table, prices, REFERENCE), REFERENCE, True)
    assert [(c.kind, c.model) for c in found] == [("glob_shadows_exact", "gpt-4o*")]
    assert "replaces the reference price of gpt-4o, gpt-4o-mini" in found[0].message


def test_every_kind_is_covered() -> None:
    kinds = {k for _, models, fb, expected in CASES for k, _, _ in expected}
    assert kinds == {"both_modes", "glob_shadows_exact", "unpriced", "zero_price", "far_from_reference"}
