"""Prices, lookups, multipliers and the charge arithmetic (spec §1, §2, §4, §8)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from plugins.billing.price_data import LiteLLMPrices, price_from_entry
from plugins.billing.price_table import PriceTable
from plugins.billing.pricing import (
    ConfigError,
    ModelPrice,
    PricingConfig,
    charge_characters,
    charge_requests,
    charge_tokens,
    format_usd,
    multiplier,
    parse_pricing,
    usd,
)
from plugins.billing.usage import Usage, from_anthropic, from_openai

SPEC_YAML = """
quota_per_usd: 500000
pricing:
  fallback: none
  models:
    gpt-4o-mini:       {input: 0.15, output: 0.60, cache_read: 0.075}
    claude-sonnet-4-5: {input: 3, output: 15, cache_read: 0.30, cache_write: 3.75, cache_write_1h: 6}
    dall-e-3:          {per_request: 0.04}
    "acme-*":          {input: 1, output: 2}
groups: {default: 1, vip: 0.8}
group_overrides: {vip: {default: 0.9}}
"""


@pytest.fixture
def config() -> PricingConfig:
    return PricingConfig.from_plugin_config(yaml.safe_load(SPEC_YAML))


@pytest.fixture
def table(config: PricingConfig) -> PriceTable:
    return PriceTable(config)


def _price(table: PriceTable, model: str) -> ModelPrice:
    price = table.lookup(model)
    assert price is not None
    return price


# -- the spec's public vectors (§8, 1-6) --------------------------------------------------


def test_vector_1_worked_example(table: PriceTable) -> None:
    usage = from_openai(
        {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 200}}
    )
    assert usage == Usage(input=800, cache_read=200, output=500)
    assert charge_tokens(_price(table, "gpt-4o-mini"), usage, Decimal(1), 500_000) == 218


def test_worked_example_is_exact(table: PriceTable) -> None:
    price = _price(table, "gpt-4o-mini")
    assert price.input == Decimal("0.15") and price.cache_read == Decimal("0.075")
    # 800·0.15 + 200·0.075 + 500·0.60 = 435 USD per 1M → 0.000435 USD → exactly 217.5 → 218.
    assert charge_tokens(price, Usage(input=800, cache_read=200, output=500), Decimal(1), 1_000_000) == 435
    assert usd(218, 500_000) == Decimal("0.000436")
    # What binary floating point would have charged: 217.49999999999997 → 217.
    assert round((800 * 0.15e-6 + 200 * 0.075e-6 + 500 * 0.60e-6) * 500000) == 217


def test_vector_2_multiplier(table: PriceTable) -> None:
    usage = Usage(input=800, cache_read=200, output=500)
    assert charge_tokens(_price(table, "gpt-4o-mini"), usage, Decimal("0.8"), 500_000) == 174


def test_vector_3_anthropic_cache_split(table: PriceTable) -> None:
    usage = from_anthropic(
        {
            "input_tokens": 2000,
            "cache_read_input_tokens": 10000,
            "cache_creation_input_tokens": 1000,
            "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600},
            "output_tokens": 300,
        }
    )
    assert charge_tokens(_price(table, "claude-sonnet-4-5"), usage, Decimal(1), 500_000) == 9300


def test_vector_4_minimum_one_unit(table: PriceTable) -> None:
    usage = from_openai({"prompt_tokens": 1, "completion_tokens": 0})
    assert charge_tokens(_price(table, "gpt-4o-mini"), usage, Decimal(1), 500_000) == 1


def test_vector_5_zero_usage_is_free(table: PriceTable) -> None:
    usage = from_openai({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
    assert usage.is_zero
    assert charge_tokens(_price(table, "gpt-4o-mini"), usage, Decimal(1), 500_000) == 0


def test_vector_6_per_request(table: PriceTable) -> None:
    assert charge_requests(_price(table, "dall-e-3"), 2, Decimal(1), 500_000) == 40000


# -- charge arithmetic --------------------------------------------------------------------


def test_half_up_rounding_once_at_the_end() -> None:
    price = ModelPrice.tokens(Decimal(1), Decimal(1))
    # 3 tokens × $1/M × 500000 = 1.5 → 2.
    assert charge_tokens(price, Usage(input=3), Decimal(1), 500_000) == 2
    # 5 tokens → 2.5 → 3 (banker's rounding would give 2).
    assert charge_tokens(price, Usage(input=5), Decimal(1), 500_000) == 3
    # Each field alone rounds to 0.5 → 1; summed first, 1.0 → 1 (rounding only once).
    assert charge_tokens(price, Usage(input=1, output=1), Decimal(1), 500_000) == 1


def test_free_group_and_free_model_charge_zero() -> None:
    price = ModelPrice.tokens(Decimal(1), Decimal(1))
    assert charge_tokens(price, Usage(input=1000), Decimal(0), 500_000) == 0
    free = ModelPrice.tokens(Decimal(0), Decimal(0), cache_read=Decimal(0))
    assert charge_tokens(free, Usage(input=1000, output=5), Decimal(1), 500_000) == 0


def test_every_usage_field_has_its_price() -> None:
    price = ModelPrice.tokens(
        Decimal(1),
        Decimal(2),
        cache_read=Decimal(3),
        cache_write=Decimal(4),
        cache_write_1h=Decimal(5),
        audio_input=Decimal(6),
        audio_output=Decimal(7),
        image_input=Decimal(8),
    )
    usage = Usage(1, 1, 1, 1, 1, 1, 1, 1)  # input, cache_read, 5m, 1h, output, audio in/out, images
    # Σ = 1+3+4+5+2+6+7+8 = 36 USD per 1M tokens; with 1M quota per USD that is 36 units.
    assert charge_tokens(price, usage, Decimal(1), 1_000_000) == 36


def test_charge_refuses_the_wrong_kind_of_price(table: PriceTable) -> None:
    with pytest.raises(ValueError):
        charge_tokens(_price(table, "dall-e-3"), Usage(input=1), Decimal(1), 500_000)
    with pytest.raises(ValueError):
        charge_requests(_price(table, "gpt-4o-mini"), 1, Decimal(1), 500_000)
    assert charge_requests(_price(table, "dall-e-3"), 0, Decimal(1), 500_000) == 0


def test_usd_and_format() -> None:
    assert usd(218, 500_000) == Decimal("0.000436")
    assert format_usd(40000, 500_000) == "$0.08"
    assert format_usd(500_000, 500_000) == "$1"
    assert format_usd(-250_000, 500_000) == "-$0.5"
    assert format_usd(0, 500_000) == "$0"


# -- config parsing -----------------------------------------------------------------------


def test_yaml_floats_become_exact_decimals(config: PricingConfig) -> None:
    price = config.models["gpt-4o-mini"]
    assert price.output == Decimal("0.6")
    assert str(price.cache_read) == "0.075"
    assert config.quota_per_usd == 500_000
    assert config.groups == {"default": Decimal(1), "vip": Decimal("0.8")}


def test_defaults_are_never_zero() -> None:
    cfg = parse_pricing({"models": {"m": {"input": 2, "output": 8}}})
    p = cfg.models["m"]
    assert (p.cache_read, p.cache_write, p.cache_write_1h) == (Decimal(2), Decimal("2.5"), Decimal(4))
    assert (p.audio_input, p.audio_output, p.image_input) == (Decimal(2), Decimal(8), Decimal(2))
    assert all(Decimal(v) != 0 for v in p.as_dict().values())


def test_explicit_prices_are_kept() -> None:
    cfg = parse_pricing({"models": {"m": {"input": 2, "output": 8, "cache_read": 0, "audio_output": 80}}})
    p = cfg.models["m"]
    assert p.cache_read == 0 and p.audio_output == 80 and p.cache_write == Decimal("2.5")


def test_per_request_and_token_prices_is_an_error_naming_the_model() -> None:
    with pytest.raises(ConfigError) as err:
        parse_pricing({"models": {"dall-e-3": {"per_request": 0.04, "input": 1}}})
    assert "dall-e-3" in str(err.value) and "per_request" in str(err.value)


def test_per_character_prices_stand_alone() -> None:
    cfg = parse_pricing({"models": {"tts": {"characters": 15}}})
    price = cfg.models["tts"]
    assert price.characters == Decimal(15) and price.as_dict() == {"characters": "15"}
    assert charge_characters(price, 1000, Decimal(1), 500_000) == 7500
    assert charge_characters(price, 0, Decimal(1), 500_000) == 0
    with pytest.raises(ValueError):
        charge_tokens(price, Usage(input=1), Decimal(1), 500_000)
    with pytest.raises(ValueError):
        charge_characters(ModelPrice.tokens(Decimal(1), Decimal(1)), 1, Decimal(1), 500_000)
    for other in ({"input": 1, "output": 1}, {"per_request": 0.01}):
        with pytest.raises(ConfigError) as err:
            parse_pricing({"models": {"tts": {"characters": 15, **other}}})
        assert "'tts' sets both characters and" in str(err.value)


def test_zero_prices_are_free_and_others_are_not() -> None:
    assert ModelPrice.tokens(Decimal(0), Decimal(0)).is_free
    assert not ModelPrice.tokens(Decimal(0), Decimal("0.1")).is_free
    assert not ModelPrice.per_character(Decimal(15)).is_free


@pytest.mark.parametrize(
    ("models", "needle"),
    [
        ({"m": {"input": 1}}, "output"),
        ({"m": {}}, "input"),
        ({"m": {"input": -1, "output": 1}}, "m.input"),
        ({"m": {"input": True, "output": 1}}, "m.input"),
        ({"m": {"input": "cheap", "output": 1}}, "m.input"),
        ({"m": {"input": float("nan"), "output": 1}}, "m.input"),
        ({"m": {"inptu": 1, "output": 1}}, "m.inptu"),
        ({"m": 3}, "m"),
    ],
)
def test_bad_model_prices_are_config_errors(models: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_pricing({"models": models}, "plugins[0].config.pricing")
    assert needle in str(err.value)
    assert str(err.value).startswith("plugins[0].config.pricing.models.m")


@pytest.mark.parametrize(
    "data",
    [
        {"fallback": "openrouter"},
        {"quota_per_usd": 0},
        {"quota_per_usd": 2.5},
        {"groups": {"vip": -1}},
        {"groups": ["vip"]},
        {"group_overrides": {"vip": 0.9}},
        {"colour": "blue"},
    ],
)
def test_bad_pricing_blocks_are_config_errors(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse_pricing(data)


def test_string_prices_are_accepted_exactly() -> None:
    cfg = parse_pricing({"models": {"m": {"input": "0.1", "output": "1e-1"}}})
    assert cfg.models["m"].input == cfg.models["m"].output == Decimal("0.1")


# -- lookup -------------------------------------------------------------------------------


def test_exact_beats_glob_and_longest_literal_prefix_wins() -> None:
    models = {
        "*": {"input": 9, "output": 9},
        "acme-*": {"input": 1, "output": 1},
        "acme-pro-*": {"input": 2, "output": 2},
        "acme-pro-max": {"input": 3, "output": 3},
        "acme-?ro-*": {"input": 4, "output": 4},
    }
    table = PriceTable(parse_pricing({"models": models}))
    assert table.describe("acme-pro-max") == (table.config.models["acme-pro-max"], "config")
    assert table.describe("acme-pro-mini")[1] == "config-glob:acme-pro-*"  # type: ignore[index]
    assert table.describe("acme-bro-1")[1] == "config-glob:acme-?ro-*"  # type: ignore[index]
    assert table.describe("acme-lite")[1] == "config-glob:acme-*"  # type: ignore[index]
    assert table.describe("zzz")[1] == "config-glob:*"  # type: ignore[index]
    # The YAML order of the patterns does not matter.
    reversed_table = PriceTable(parse_pricing({"models": dict(reversed(list(models.items())))}))
    for name in ("acme-pro-mini", "acme-bro-1", "acme-lite", "zzz"):
        assert reversed_table.describe(name) == table.describe(name)


def test_glob_match_is_case_sensitive_and_whole_name(table: PriceTable) -> None:
    assert table.lookup("acme-1") is not None
    assert table.lookup("ACME-1") is None
    assert table.lookup("x-acme-1") is None
    assert table.lookup("gpt-4o-mini-2024-07-18") is None


def test_unpriced_model_is_none_without_fallback(table: PriceTable) -> None:
    assert table.lookup("gpt-4o") is None
    assert table.describe("gpt-4o") is None


def test_litellm_fallback_comes_after_config() -> None:
    cfg = parse_pricing({"fallback": "litellm", "models": {"gpt-4o": {"input": 1, "output": 1}}})
    table = PriceTable(cfg, LiteLLMPrices())
    assert table.describe("gpt-4o")[1] == "config"  # type: ignore[index]
    price, source = table.describe("gpt-4o-mini")  # type: ignore[misc]
    assert source == "litellm:gpt-4o-mini"
    assert (price.input, price.output, price.cache_read) == (Decimal("0.15"), Decimal("0.6"), Decimal("0.075"))
    assert table.lookup("no-such-model-anywhere") is None


def test_multiplier_resolution(config: PricingConfig) -> None:
    assert config.multiplier("vip", "default") == Decimal("0.9")  # override replaces
    assert config.multiplier("vip", "vip") == Decimal("0.8")  # no override for vip→vip
    assert config.multiplier("vip", None) == Decimal("0.8")  # key without group: user's group
    assert config.multiplier("default", "vip") == Decimal("0.8")  # the key's group prices
    assert config.multiplier("default", None) == Decimal(1)
    assert config.multiplier("nobody", "unknown") == Decimal(1)
    assert multiplier({}, {}, "any", None) == Decimal(1)


# -- versions -----------------------------------------------------------------------------


def test_version_tracks_content_not_spelling(config: PricingConfig) -> None:
    v = PriceTable(config).version
    assert len(v) == 12 and v == PriceTable(config).version
    respelled = yaml.safe_load(SPEC_YAML.replace("0.60", "0.6000").replace("input: 3,", "input: 3.0,"))
    assert PriceTable(PricingConfig.from_plugin_config(respelled)).version == v
    for old, new in [("0.60", "0.61"), ("vip: 0.8", "vip: 0.7"), ("{default: 0.9}", "{default: 0.95}")]:
        changed = yaml.safe_load(SPEC_YAML.replace(old, new))
        assert PriceTable(PricingConfig.from_plugin_config(changed)).version != v, old
    with_qpu = yaml.safe_load(SPEC_YAML.replace("500000", "1000000"))
    assert PriceTable(PricingConfig.from_plugin_config(with_qpu)).version != v
    with_fallback = yaml.safe_load(SPEC_YAML.replace("fallback: none", "fallback: litellm"))
    assert PriceTable(PricingConfig.from_plugin_config(with_fallback), LiteLLMPrices()).version != v


# -- the LiteLLM table --------------------------------------------------------------------


@pytest.fixture
def small_litellm(tmp_path: Path) -> LiteLLMPrices:
    data = {
        "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "max_output_tokens": "n/a"},
        "gpt-x": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "max_output_tokens": 16384},
        "prov/gpt-x": {"input_cost_per_token": 9e-06, "output_cost_per_token": 9e-06},
        "vendor/only-here": {
            "input_cost_per_token": 3e-06,
            "output_cost_per_token": 1.5e-05,
            "cache_read_input_token_cost": 3e-07,
            "cache_creation_input_token_cost": 3.75e-06,
            "cache_creation_input_token_cost_above_1hr": 6e-06,
            "input_cost_per_audio_token": 4e-05,
            "output_cost_per_audio_token": 8e-05,
            "max_output_tokens": 64000,
        },
        "a/dup": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},
        "b/dup": {"input_cost_per_token": 1e-06, "output_cost_per_token": 4e-06},
        "painter": {"output_cost_per_image": 0.04, "mode": "image_generation"},
        "embedder": {"input_cost_per_token": 2e-08, "mode": "embedding"},
        "no-price": {"mode": "chat", "max_output_tokens": 100},
        "speaker": {"input_cost_per_character": 1.5e-05, "mode": "audio_speech"},
    }
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data))
    return LiteLLMPrices(path, snapshot="test")


def test_litellm_float_prices_parse_exactly(small_litellm: LiteLLMPrices) -> None:
    price, key = small_litellm.lookup("gpt-x")  # type: ignore[misc]
    assert key == "gpt-x"
    assert price.input == Decimal("2.5") and str(price.input) == "2.5"
    assert price.output == Decimal(10) and str(price.output) == "10"


def test_litellm_bare_key_wins_over_prefixed(small_litellm: LiteLLMPrices) -> None:
    assert small_litellm.lookup("gpt-x")[1] == "gpt-x"  # type: ignore[index]
    assert small_litellm.lookup("prov/gpt-x")[1] == "prov/gpt-x"  # type: ignore[index]
    assert small_litellm.lookup("other/gpt-x")[1] == "gpt-x"  # type: ignore[index]


def test_litellm_prefixed_key_reachable_bare(small_litellm: LiteLLMPrices) -> None:
    price, key = small_litellm.lookup("only-here")  # type: ignore[misc]
    assert key == "vendor/only-here"
    assert price.cache_read == Decimal("0.3") and price.cache_write == Decimal("3.75")
    assert price.cache_write_1h == Decimal(6)
    assert (price.audio_input, price.audio_output) == (Decimal(40), Decimal(80))
    assert small_litellm.max_output_tokens("only-here") == 64000


def test_litellm_ambiguous_bare_name_takes_the_highest_price(small_litellm: LiteLLMPrices) -> None:
    price, key = small_litellm.lookup("dup")  # type: ignore[misc]
    assert key == "b/dup" and price.output == Decimal(4)


def test_litellm_sample_spec_and_unpriced_entries_are_skipped(small_litellm: LiteLLMPrices) -> None:
    assert small_litellm.lookup("sample_spec") is None
    assert small_litellm.max_output_tokens("sample_spec") is None
    assert small_litellm.lookup("no-price") is None
    assert small_litellm.max_output_tokens("no-price") == 100
    assert len(small_litellm) == 9


def test_litellm_per_image_and_embedding_entries(small_litellm: LiteLLMPrices) -> None:
    painter = small_litellm.lookup("painter")[0]  # type: ignore[index]
    assert painter.per_request == Decimal("0.04")
    embedder = small_litellm.lookup("embedder")[0]  # type: ignore[index]
    assert embedder.input == embedder.output == Decimal("0.02")
    speaker = small_litellm.lookup("speaker")[0]  # type: ignore[index]
    assert speaker.characters == Decimal(15) and str(speaker.characters) == "15"  # $ per 1M characters


def test_litellm_loads_lazily(small_litellm: LiteLLMPrices) -> None:
    # Nothing was read when the object was built: the broken file is only seen on first use.
    small_litellm.path.write_text("{not json")
    with pytest.raises(ValueError):
        small_litellm.lookup("gpt-x")


def test_bundled_snapshot_prices_known_models() -> None:
    data = LiteLLMPrices()
    sonnet = data.lookup("claude-sonnet-4-5")[0]  # type: ignore[index]
    assert (sonnet.input, sonnet.output, sonnet.cache_read) == (Decimal(3), Decimal(15), Decimal("0.3"))
    assert (sonnet.cache_write, sonnet.cache_write_1h) == (Decimal("3.75"), Decimal(6))
    assert data.lookup("openai/gpt-4o")[1] == "gpt-4o"  # type: ignore[index]
    assert data.lookup("sample_spec") is None
    assert data.max_output_tokens("gpt-4o-mini") == 16384


def test_price_from_entry_ignores_non_numbers() -> None:
    assert price_from_entry({"input_cost_per_token": "free", "output_cost_per_token": 1}) is None
    assert price_from_entry({"output_cost_per_image": True}) is None
