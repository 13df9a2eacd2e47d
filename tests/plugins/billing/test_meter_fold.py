"""A long answer is counted in slices: memory stays bounded, the count stays right."""

from __future__ import annotations

from plugins.billing.meter import UsageMeter
from plugins.billing.tokenizer import Tokenizer
from proxy.context import Endpoint


def test_long_output_is_folded_and_counted() -> None:
    tok = Tokenizer()
    meter = UsageMeter(Endpoint.CHAT, lambda t: tok.count(t, "gpt-4o"))
    word = " lorem"
    pieces = 40_000  # 240 000 characters, several folds
    for _ in range(pieces):
        meter.feed({"choices": [{"index": 0, "delta": {"content": word}}]})
    assert meter.has_content
    assert len(meter.output_text()) < UsageMeter.FOLD_AT  # the rest was counted and dropped
    exact = tok.count(word * pieces, "gpt-4o")
    assert abs(meter.output_count() - exact) <= 4  # a token at most per slice boundary


def test_without_a_counter_all_text_is_kept() -> None:
    meter = UsageMeter(Endpoint.CHAT)
    meter.feed({"choices": [{"index": 0, "delta": {"content": "hello"}}]})
    assert meter.output_text() == "hello" and meter.has_content
