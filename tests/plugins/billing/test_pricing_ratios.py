"""Ratio-to-price conversion and the float traps of seed 004 (new-api's pricing design:
"several ratios multiplied as floats drift"): no float on any path from a ratio export or
the editor to the ledger."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from plugins.billing.price_table import PriceTable
from plugins.billing.prices import document as doc
from plugins.billing.pricing import PricingConfig, charge_requests, charge_tokens
from plugins.billing.ratios import convert_ratios
from plugins.billing.usage import Usage
from tests.plugins.billing.pricing_world import ADMIN, PRICES, ShopFactory, backend, shop  # noqa: F401


@pytest.mark.parametrize(
    ("ratio", "completion", "inp", "out"),
    [
        ("0.1", "3", "0.2", "0.6"),  # float: 0.2 * 3 = 0.6000000000000001
        ("0.075", "4", "0.15", "0.6"),  # gpt-4o-mini's ratio
        ("1.1", "1.1", "2.2", "2.42"),  # float: 2.2 * 1.1 = 2.4200000000000004
        ("0.0375", "4", "0.075", "0.3"),
        ("0.00001", "3.3", "0.00002", "0.000066"),
    ],
)
def test_ratio_products_are_exact(ratio: str, completion: str, inp: str, out: str) -> None:
    # As new-api exports them: tables as JSON strings, numbers as JSON floats.
    export = {"model_ratio": f'{{"m": {ratio}}}', "completion_ratio": f'{{"m": {completion}}}'}
    converted = convert_ratios(json.loads(json.dumps(export)))
    models = doc.normalise(converted.config["pricing"]["models"])
    assert models["m"] == {"input": inp, "output": out}


def test_ratio_times_group_times_quota_is_rounded_once() -> None:
    converted = convert_ratios({"model_ratio": {"m": 0.1}, "completion_ratio": {"m": 3}, "group_ratio": {"vip": 0.7}})
    price = doc.parse(doc.normalise(converted.config["pricing"]["models"]))["m"]
    multiplier = Decimal(str(converted.config["groups"]["vip"]))
    usage = Usage(input=333_333, output=111_111)
    charged = charge_tokens(price, usage, multiplier, 500_000)
    exact = (333_333 * Fraction("0.2") + 111_111 * Fraction("0.6")) / 1_000_000 * 500_000 * Fraction("0.7")
    assert charged == int(exact + Fraction(1, 2))  # 46666.62 → 46667, half up once


def test_a_half_unit_rounds_up_where_float_rounds_down() -> None:
    # 0.000249 USD × 500 000 is exactly 124.5 → 125; as floats it is 124.49999999999999 → 124.
    assert round(0.000249 * 500_000) == 124
    price = doc.parse(doc.normalise(json.loads('{"m": {"per_request": 0.000249}}', parse_float=Decimal)))["m"]
    assert charge_requests(price, 1, Decimal(1), 500_000) == 125
    table = PriceTable(PricingConfig(models={"m": price}))
    assert table.lookup("m") == price


async def test_an_imported_ratio_export_is_charged_exactly(shop: ShopFactory) -> None:
    import aiohttp

    world = await shop()
    auth = {"Authorization": f"Bearer {ADMIN}"}
    export: dict[str, Any] = {"ModelPrice": '{"mock-image": 0.000249}', "ModelRatio": '{"mock-embed": 0.01}'}
    async with aiohttp.ClientSession() as s:
        url = world.instances[0].url
        r = await s.post(url + "/api/admin/prices/import-ratios", json={"export": export}, headers=auth)
        proposal = await r.json()
        assert r.status == 200 and proposal["models"]["mock-image"] == {"per_request": "0.000249"}
        assert proposal["models"]["mock-embed"] == {"input": "0.02", "output": "0.02"}
        r = await s.put(url + "/api/admin/prices", json={"base_version": 1, "models": proposal["models"]}, headers=auth)
        assert r.status == 200, await r.text()
    assert await world.image() == 125
    assert PRICES["mock-image"] == {"per_request": 0.04}  # the fixture's prices are untouched
