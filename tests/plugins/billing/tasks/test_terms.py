"""Task prices, exactly: per request and per second, × n and size, × the group multiplier,
rounded once half up; the usage recompute; the terms' round trip; the price config rules."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from plugins.billing.pricing import ConfigError, ModelPrice, parse_pricing
from plugins.billing.tasks.apis import VIDEOS, TaskApi, pointer_get, pointer_set
from plugins.billing.tasks.settings import TasksConfig
from plugins.billing.tasks.terms import TaskTerms, round_units
from plugins.billing.usage import Usage

D = Decimal


def terms(
    price: ModelPrice, seconds: int = 8, n: int = 1, size: Fraction = Fraction(1), multiplier: str = "1"
) -> TaskTerms:
    return TaskTerms.of("m", price, seconds, n, "720x1280", size, D(multiplier), 500_000, "pv")


def test_per_second_times_seconds_n_size_and_group() -> None:
    sora = ModelPrice().with_task_prices(None, D("0.10"))
    assert terms(sora).held() == 400_000  # 8 × 0.10 × 500 000
    assert terms(sora, seconds=12, size=Fraction(5, 3)).held() == 1_000_000  # 12 × 0.10 × 5/3 = $2
    assert terms(sora, seconds=4, n=3, multiplier="0.8").held() == 480_000
    both = ModelPrice().with_task_prices(D("0.05"), D("0.10"))
    assert terms(both, seconds=4, n=2).held() == 450_000  # (0.05 + 0.40) × 2


def test_rounding_is_once_and_half_up_and_never_free() -> None:
    tiny = ModelPrice().with_task_prices(None, D("0.000001"))
    assert terms(tiny, seconds=1).held() == 1  # 0.5 units rounds half up to 1
    assert terms(ModelPrice().with_task_prices(None, D("0.0000001")), seconds=1).held() == 1  # 0.05 → at least 1
    assert terms(ModelPrice().with_task_prices(None, D("0.000003")), seconds=1).held() == 2  # 1.5 → 2
    assert terms(ModelPrice().with_task_prices(D(0), D(0))).held() == 0
    # 1/3 of a unit per second, 3 seconds: exactly 1, with no float drift on the way.
    third = terms(ModelPrice().with_task_prices(None, D(1) / D(1_500_000)), seconds=3)
    assert third.held() == 1
    assert round_units(Fraction(5, 2)) == 3 and round_units(Fraction(-1)) == 0


def test_usage_is_recomputed_only_with_token_prices() -> None:
    priced = ModelPrice.tokens(D(1), D(2)).with_task_prices(None, D("0.10"))
    t = terms(priced, multiplier="0.8")
    assert t.for_usage(Usage(input=100_000, output=50_000)) == 80_000  # $0.20 × 0.8
    assert terms(ModelPrice().with_task_prices(None, D("0.10"))).for_usage(Usage(input=5)) is None


def test_terms_survive_the_store() -> None:
    priced = ModelPrice.tokens(D("0.15"), D("0.6")).with_task_prices(D("0.01"), D("0.1"))
    t = terms(priced, seconds=12, n=2, size=Fraction(5, 3), multiplier="0.9")
    again = TaskTerms.from_json(t.to_json())
    assert again == t and again.held() == t.held()


def test_task_prices_in_the_config() -> None:
    cfg = parse_pricing(
        {
            "models": {
                "sora-2": {"per_second": "0.10"},
                "suno": {"per_request": 0.1, "per_second": 0, "input": 1, "output": 2},
            }
        }
    )
    sora, suno = cfg.models["sora-2"], cfg.models["suno"]
    assert sora.is_task and not sora.has_tokens and sora.as_dict() == {"per_second": "0.1"}
    assert suno.is_task and suno.has_tokens and suno.per_request == D("0.1")
    with pytest.raises(ConfigError, match="need `output` too"):
        parse_pricing({"models": {"v": {"per_second": 1, "input": 1}}})
    with pytest.raises(ConfigError, match="sets both per_request and token prices"):
        parse_pricing({"models": {"v": {"per_request": 1, "input": 1, "output": 1}}})


def test_size_multipliers_pick_the_most_specific_model() -> None:
    cfg = TasksConfig(size_multipliers={"sora-*": {"1792x1024": 2}, "sora-2-pro": {"1792x1024": "5/3"}})
    assert cfg.size_factor("sora-2-pro", "1792x1024") == Fraction(5, 3)
    assert cfg.size_factor("sora-2", "1792x1024") == 2
    assert cfg.size_factor("sora-2", "720x1280") == 1 and cfg.size_factor("other", "1792x1024") == 1
    with pytest.raises(ValueError, match="size_multipliers.x.y"):
        TasksConfig(size_multipliers={"x": {"y": "-1"}})
    with pytest.raises(ValueError, match="poll_every"):
        TasksConfig(poll_every=0)


def test_pointers_and_observations() -> None:
    doc = {"data": {"task_id": "u1", "status": "SUCCESS", "progress": "100%", "items": [{"a": 1}]}, "a/b": 2}
    assert pointer_get(doc, "/data/items/0/a") == 1 and pointer_get(doc, "/a~1b") == 2
    assert pointer_get(doc, "/data/missing") is None and pointer_get(doc, "") is None
    assert pointer_set(doc, "/data/task_id", "task_1") and doc["data"]["task_id"] == "task_1"  # type: ignore[index]
    assert not pointer_set(doc, "/data/nope", 1)
    api = TaskApi(
        "suno",
        "task_",
        "/suno/fetch/{id}",
        "/data",
        "/data/task_id",
        "/data/status",
        "/data/progress",
        "/data/fail_reason",
        "/data/usage",
        {"SUCCESS": "completed", "FAILURE": "failed"},
    )
    seen = api.observe(doc)
    assert (seen.state, seen.status, seen.progress, seen.usage) == ("completed", "SUCCESS", 100, None)
    assert api.observe({"data": {"status": "WEIRD"}}).state == "in_progress"
    assert api.observe({"data": {}}).state is None
    video = VIDEOS.observe(
        {"status": "failed", "progress": 40, "error": {"code": "x", "message": "policy"}, "usage": {"total_tokens": 7}}
    )
    assert (video.state, video.failure, video.usage) == ("failed", "policy", Usage(input=7))
