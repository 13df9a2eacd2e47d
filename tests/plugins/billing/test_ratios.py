"""new-api / one-api ratio import (spec §2, `weir pricing import-ratios`)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
import yaml

from plugins.billing.price_table import PriceTable
from plugins.billing.pricing import PricingConfig, charge_requests, charge_tokens
from plugins.billing.ratios import convert_ratios, yaml_number
from plugins.billing.usage import Usage

EXPORT = {
    "model_ratio": {"gpt-4o-mini": 0.075, "claude-3-haiku": 0.125, "gpt-4o": 1.25},
    "completion_ratio": {"gpt-4o-mini": 4, "gpt-4o": 4},
    "cache_ratio": {"gpt-4o-mini": 0.5, "claude-3-haiku": 0.1},
    "model_price": {"dall-e-3": 0.04, "gpt-4o": 0.01},
    "group_ratio": {"default": 1, "vip": 0.8, "svip": 0.5},
}
# As exported: a ratio with more digits than a float holds, read from the JSON text exactly.
EXPORT_TEXT = json.dumps(EXPORT).replace('"gpt-4o": 1.25', '"gpt-4o": 1.25, "odd": 0.1234567890123456789')


def _models(result_config: dict[str, Any]) -> dict[str, dict[str, object]]:
    models: dict[str, dict[str, object]] = result_config["pricing"]["models"]
    return models


def test_ratio_conversion_is_exact() -> None:
    result = convert_ratios(EXPORT_TEXT)
    models = _models(result.config)
    # ratio 0.075 → $0.15/M in, completion 4 → $0.60/M out, cache 0.5 → $0.075/M.
    assert models["gpt-4o-mini"] == {"input": 0.15, "output": 0.6, "cache_read": 0.075}
    assert models["claude-3-haiku"] == {"input": 0.25, "output": 0.25, "cache_read": 0.025}
    assert models["dall-e-3"] == {"per_request": 0.04}
    # 19 significant digits do not survive a float: the value is kept as an exact string.
    assert models["odd"] == {"input": "0.2469135780246913578", "output": "0.2469135780246913578"}
    assert result.config["groups"] == {"default": 1, "svip": 0.5, "vip": 0.8}
    assert result.config["quota_per_usd"] == 500_000


def test_price_wins_over_ratio_with_a_warning() -> None:
    result = convert_ratios(EXPORT)
    assert _models(result.config)["gpt-4o"] == {"per_request": 0.01}
    assert any("gpt-4o" in w and "model_price" in w for w in result.warnings)


def test_new_api_option_table_strings() -> None:
    # new-api keeps each table as a JSON string in its options table.
    options = {
        "ModelRatio": json.dumps({"m": 1}),
        "CompletionRatio": json.dumps({"m": 2}),
        "ModelPrice": json.dumps({"p": 0.02}),
        "GroupRatio": json.dumps({"default": 1}),
    }
    result = convert_ratios({"success": True, "data": options})
    assert _models(result.config) == {"m": {"input": 2, "output": 4}, "p": {"per_request": 0.02}}
    assert result.config["groups"] == {"default": 1}


def test_round_trip_through_yaml_into_the_price_table() -> None:
    result = convert_ratios(EXPORT_TEXT)
    text = yaml.safe_dump(result.config, sort_keys=False)
    config = PricingConfig.from_plugin_config(yaml.safe_load(text))
    table = PriceTable(config)
    mini = table.lookup("gpt-4o-mini")
    assert mini is not None and (mini.input, mini.output, mini.cache_read) == (
        Decimal("0.15"),
        Decimal("0.6"),
        Decimal("0.075"),
    )
    # The spec's worked example, priced from the imported table: 218.
    assert charge_tokens(mini, Usage(input=800, cache_read=200, output=500), Decimal(1), config.quota_per_usd) == 218
    odd = table.lookup("odd")
    assert odd is not None and odd.input == Decimal("0.2469135780246913578")
    dalle = table.lookup("dall-e-3")
    assert dalle is not None and charge_requests(dalle, 2, Decimal(1), config.quota_per_usd) == 40000
    assert config.multiplier("vip", None) == Decimal("0.8")


def test_bad_entries_are_warned_and_skipped() -> None:
    result = convert_ratios(
        {
            "model_ratio": {"a": 1, "b": -1, "c": "x", "d": None, "e": True},
            "completion_ratio": {"ghost": 3},
            "extra_table": {},
        }
    )
    assert list(_models(result.config)) == ["a"]
    text = "\n".join(result.warnings)
    for needle in ("model_ratio.b", "model_ratio.c", "model_ratio.d", "model_ratio.e", "ghost", "extra_table"):
        assert needle in text


@pytest.mark.parametrize("export", ["[1, 2]", "not json", {"nothing": 1}, {"model_ratio": "[1]"}, 42])
def test_unusable_exports_raise_value_error(export: object) -> None:
    with pytest.raises(ValueError):
        convert_ratios(export)


@pytest.mark.parametrize("text", ["0.15", "2", "1e-7", "0.1234567890123456789", "100.50"])
def test_yaml_number_round_trips_exactly(text: str) -> None:
    value = yaml_number(Decimal(text))
    dumped = yaml.safe_load(yaml.safe_dump({"v": value}))["v"]
    assert Decimal(str(dumped)) == Decimal(text)
