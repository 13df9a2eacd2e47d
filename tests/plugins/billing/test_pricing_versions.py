"""Price versions as billing sees them: the canonical document, proxy.yaml as version 1,
edits as new versions, and instances that pick them up (docs/billing-rules.md §9).

These run `PriceBook` on a real SQLite store (the store contract itself, on every backend,
is tests/plugins/billing/store/test_prices.py); the end-to-end money tests are in test_pricing_reload.py.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from plugins.billing.price_data import LiteLLMPrices
from plugins.billing.prices import document as doc
from plugins.billing.prices.book import FROM_CONFIG, PriceBook
from plugins.billing.store.base import PriceConflict, PriceVersion
from plugins.billing.store.sqlite.store import SQLiteStore
from proxy.host import ConfigError

MODELS = {"gpt-4o-mini": {"input": 0.15, "output": 0.60, "cache_read": 0.075}, "dall-e-3": {"per_request": 0.04}}


def block(models: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"quota_per_usd": 500_000, "pricing": {"models": models, **extra}, "groups": {}, "group_overrides": {}}


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = SQLiteStore(str(tmp_path / "w.db"))
    await s.open()
    yield s
    await s.close()


# the document ----------------------------------------------------------------------------


def test_the_document_is_canonical_text_of_what_was_written() -> None:
    a = doc.normalise({"b": {"output": "0.600", "input": Decimal("1.5E-1")}, "a": {"per_request": 2}})
    b = doc.normalise(yaml.safe_load("a: {per_request: 2.0}\nb: {input: 0.15, output: 0.6}"))
    assert a == b == {"a": {"per_request": "2"}, "b": {"input": "0.15", "output": "0.6"}}
    assert doc.dumps(a) == '{"a":{"per_request":"2"},"b":{"input":"0.15","output":"0.6"}}'
    assert doc.loads(doc.dumps(a)) == a


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        # Binary floats that are not what they print as: the text the operator wrote is kept.
        ("0.1", "0.1"),
        ("0.3", "0.3"),
        ("1e-7", "0.0000001"),
        ("2.5e-06", "0.0000025"),
        ("0.000000123456789", "0.000000123456789"),
        ("123456789012345.6", "123456789012345.6"),
    ],
)
def test_prices_survive_without_float_rounding(written: str, kept: str) -> None:
    # YAML numbers up to 15 significant digits come back as typed (a double's shortest repr).
    from_yaml = doc.normalise(yaml.safe_load(f"m: {{input: {written}, output: {written}}}"))
    from_json = doc.normalise(
        json.loads(f'{{"m": {{"input": {written}, "output": "{written}"}}}}', parse_float=Decimal)
    )
    assert from_yaml["m"]["input"] == from_json["m"]["input"] == from_json["m"]["output"] == kept


def test_json_and_strings_keep_every_digit() -> None:
    # The editor and the API read JSON with parse_float=Decimal: no digit is lost anywhere.
    long = "1234567.890123456789012345678901"
    from_json = doc.normalise(json.loads(f'{{"m": {{"input": {long}, "output": "{long}"}}}}', parse_float=Decimal))
    assert from_json["m"] == {"input": long, "output": long}
    assert doc.loads(doc.dumps(from_json)) == from_json


def test_a_sum_that_float_gets_wrong_is_exact() -> None:
    # 0.1 + 0.2 != 0.3 in binary: the charge of 1M input + 1M output tokens is exactly 0.3 USD.
    price = doc.parse(doc.normalise({"m": {"input": 0.1, "output": 0.2}}))["m"]
    assert price.input + price.output == Decimal("0.3")


@pytest.mark.parametrize(
    ("models", "fragment"),
    [
        ({"m": {"input": 1, "output": 2, "per_request": 1}}, "both per_request and token prices"),
        ({"m": {"input": 1}}, "needs `output`"),
        ({"m": {"input": -1, "output": 1}}, ">= 0"),
        ({"m": {"input": "abc", "output": 1}}, "expected a number"),
        ({"m": {"input": True, "output": 1}}, "expected a number"),
        ({"m": {"inputs": 1, "output": 1}}, "unknown price"),
        ({"m": {"input": "NaN", "output": 1}}, "finite"),
        ({" m": {"per_request": 1}}, "surrounding spaces"),
        ({"m": 3}, "mapping of prices"),
        ({"m": {"input": "1e-999999", "output": 1}}, "out of range"),
        ({"m": {"input": "1" * 41, "output": 1}}, "out of range"),
    ],
)
def test_a_bad_document_names_the_model(models: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        doc.normalise(models)
    assert fragment in str(err.value) and "m" in str(err.value)


def test_diff_names_added_removed_and_changed_fields() -> None:
    old = doc.normalise({"a": {"input": 1, "output": 2}, "b": {"per_request": 1}})
    new = doc.normalise({"a": {"input": 1, "output": 3}, "c": {"per_request": 2}})
    lines = [c.describe() for c in doc.diff(old, new)]
    assert lines == ["~ a: output 2 → 3", "- b: per_request 1", "+ c: per_request 2"]
    assert doc.diff(old, old) == []


# the book --------------------------------------------------------------------------------


async def test_proxy_yaml_is_version_1_and_a_restart_keeps_it(store: SQLiteStore) -> None:
    book = PriceBook(block(MODELS), None)
    assert book.current.number == 0
    await book.start(store)
    head = await store.get_price_version()
    assert head is not None and (head.number, head.source) == (1, FROM_CONFIG)
    assert json.loads(head.document)["gpt-4o-mini"] == {"cache_read": "0.075", "input": "0.15", "output": "0.6"}
    assert book.current.number == 1 and book.current.label == f"v1:{book.current.table.version}"
    again = PriceBook(block(MODELS), None)
    await again.start(store)
    assert (await store.price_head(), again.current.number) == (1, 1)


async def test_an_edit_is_a_new_version_that_survives_a_restart(store: SQLiteStore) -> None:
    book = PriceBook(block(MODELS), None)
    await book.start(store)
    saved = await book.save(store, 1, {"gpt-4o-mini": {"input": "0.2", "output": "0.8"}}, "editor", "dearer")
    assert isinstance(saved, PriceVersion) and saved.number == 2
    price = book.current.table.lookup("gpt-4o-mini")
    assert price is not None and (price.input, price.output) == (Decimal("0.2"), Decimal("0.8"))
    assert book.current.table.lookup("dall-e-3") is None  # the edit removed it
    assert await book.save(store, 1, MODELS, "editor") == PriceConflict(base=1, head=2)
    restarted = PriceBook(block(MODELS), None)  # the same proxy.yaml: the editor's version stands
    await restarted.start(store)
    assert restarted.current.number == 2
    assert restarted.current.models == doc.loads(saved.document)


async def test_a_changed_proxy_yaml_wins_as_a_new_version(store: SQLiteStore) -> None:
    book = PriceBook(block(MODELS), None)
    await book.start(store)
    await book.save(store, 1, {"gpt-4o-mini": {"input": 1, "output": 1}}, "editor")
    edited_file = {**MODELS, "gpt-4o": {"input": 2.5, "output": 10}}
    restarted = PriceBook(block(edited_file), None)
    await restarted.start(store)
    head = await store.get_price_version()
    assert head is not None and (head.number, head.base, head.source) == (3, 2, FROM_CONFIG)
    assert restarted.current.number == 3 and restarted.current.table.lookup("gpt-4o") is not None


async def test_another_instance_picks_a_version_up_on_refresh(store: SQLiteStore, tmp_path: Path) -> None:
    a, b = PriceBook(block(MODELS), None), PriceBook(block(MODELS), None)
    peer = SQLiteStore(str(tmp_path / "w.db"))
    await peer.open()
    try:
        await a.start(store)
        await b.start(peer)
        assert not await b.refresh(peer)
        await a.save(store, 1, {"gpt-4o-mini": {"input": 3, "output": 4}}, "api")
        assert await b.refresh(peer)
        price = b.current.table.lookup("gpt-4o-mini")
        assert price is not None and price.input == 3 and b.current.number == 2
    finally:
        await peer.close()


async def test_a_version_that_cannot_be_charged_is_refused_and_not_adopted(store: SQLiteStore) -> None:
    book = PriceBook(block(MODELS, fallback="litellm"), LiteLLMPrices())
    await book.start(store)
    with pytest.raises(ConfigError):
        await book.save(store, 1, {"x": {"per_request": 1, "input": 1, "output": 1}}, "api")
    assert await store.price_head() == 1
    # A stored document broken behind the store's back is logged and skipped, not charged.
    await store.save_price_version(1, '{"x": {"input": 0.1}}', "hand")
    assert not await book.refresh(store)
    assert book.current.number == 1
