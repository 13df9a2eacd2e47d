"""The §6 decision table, row by row, as a pure function."""

from __future__ import annotations

from decimal import Decimal

import pytest

from plugins.billing.charge_table import Metered, settle
from plugins.billing.pricing import ModelPrice
from plugins.billing.usage import Usage
from proxy.context import EndReason

GPT = ModelPrice.tokens(Decimal("0.15"), Decimal("0.60"), cache_read=Decimal("0.075"))
IMAGE = ModelPrice.request(Decimal("0.04"))
ONE = Decimal(1)
REAL = Usage(input=800, cache_read=200, output=500)


def m(
    usage: Usage | None = REAL, content: bool = True, terminal: bool = True, out: int = 0, prompt: int = 100
) -> Metered:
    return Metered(usage, content, terminal, out, prompt)


def test_completed_with_usage_is_vector_1() -> None:
    s = settle(EndReason.COMPLETED, m(), GPT, ONE, 500_000)
    assert (s.charge, s.usage_source, s.usage) == (218, "upstream", REAL)


def test_multiplier_is_vector_2() -> None:
    assert settle(EndReason.COMPLETED, m(), GPT, Decimal("0.8"), 500_000).charge == 174


def test_tiny_usage_costs_at_least_one_unit_vector_4() -> None:
    assert settle(EndReason.COMPLETED, m(Usage(input=1)), GPT, ONE, 500_000).charge == 1


def test_usage_missing_is_estimated() -> None:
    s = settle(EndReason.COMPLETED, m(None, out=40, prompt=1000), GPT, ONE, 500_000)
    assert s.usage_source == "estimated" and s.usage == Usage(input=1000, output=40)
    assert s.charge == 87  # (1000·0.15 + 40·0.6)/1e6 × 5e5 = 87


def test_zero_usage_with_content_counts_as_missing() -> None:
    s = settle(EndReason.COMPLETED, m(Usage(), content=True, out=10, prompt=10), GPT, ONE, 500_000)
    assert s.usage_source == "estimated" and s.charge > 0


def test_zero_usage_nothing_relayed_is_vector_5() -> None:
    s = settle(EndReason.COMPLETED, m(Usage(), content=False), GPT, ONE, 500_000)
    assert s.charge == 0


@pytest.mark.parametrize(
    "reason",
    [
        EndReason.UPSTREAM_TRUNCATED,
        EndReason.UPSTREAM_ERROR,
        EndReason.SHUTDOWN,
        EndReason.PLUGIN_FAILED,
        EndReason.CLIENT_DISCONNECTED,
        EndReason.CLIENT_STALLED,
    ],
)
def test_broken_stream_without_usage_is_partial(reason: EndReason) -> None:
    s = settle(reason, m(None, terminal=False, out=30, prompt=200), GPT, ONE, 500_000)
    assert s.usage_source == "partial" and s.usage == Usage(input=200, output=30)


def test_broken_stream_with_early_usage_keeps_at_least_the_relayed_output() -> None:
    early = Usage(input=2000, output=1)  # Anthropic's message_start
    s = settle(EndReason.UPSTREAM_TRUNCATED, m(early, terminal=False, out=50), GPT, ONE, 500_000)
    assert s.usage_source == "upstream" and s.usage == Usage(input=2000, output=50)


def test_broken_before_any_content_charges_nothing() -> None:
    s = settle(EndReason.UPSTREAM_ERROR, m(None, content=False, terminal=False), GPT, ONE, 500_000)
    assert s.charge == 0


@pytest.mark.parametrize("reason", [EndReason.CLIENT_STALLED, EndReason.SHUTDOWN])
def test_stalled_or_shut_down_is_partial_even_after_the_terminal_event(reason: EndReason) -> None:
    """Unlike a drained disconnect, a relay stopped on a stalled client or at shutdown is
    never a finished answer: the partial row, and no per-request charge."""
    s = settle(reason, m(None, terminal=True, out=30, prompt=200), GPT, ONE, 500_000)
    assert s.usage_source == "partial" and s.usage == Usage(input=200, output=30)
    assert settle(reason, Metered(None, True, True, 0, 0, 2), IMAGE, ONE, 500_000).charge == 0


def test_drained_disconnect_bills_the_upstream_usage() -> None:
    s = settle(EndReason.CLIENT_DISCONNECTED, m(REAL, terminal=True, out=3), GPT, ONE, 500_000)
    assert (s.charge, s.usage_source) == (218, "upstream")


def test_per_request_is_vector_6_and_only_when_finished() -> None:
    done = Metered(None, True, True, 0, 0, requests=2)
    assert settle(EndReason.COMPLETED, done, IMAGE, ONE, 500_000).charge == 40000
    assert settle(EndReason.UPSTREAM_TRUNCATED, Metered(None, True, False, 0, 0, 2), IMAGE, ONE, 500_000).charge == 0


TTS = ModelPrice.per_character(Decimal(15))


def test_per_character_charges_the_request_characters_once_audio_was_delivered() -> None:
    # The estimate carries the characters as its prompt: 1000 × $15 / 1M = $0.015 = 7500 units.
    done = settle(EndReason.COMPLETED, Metered(None, False, True, 0, 1000), TTS, ONE, 500_000)
    assert (done.charge, done.usage, done.usage_source) == (7500, Usage(input=1000), "request")
    left = settle(EndReason.CLIENT_DISCONNECTED, Metered(None, True, False, 0, 1000), TTS, Decimal("0.8"), 500_000)
    assert left.charge == 6000  # the client had audio before it left: the synthesis is paid
    nothing = settle(EndReason.UPSTREAM_TRUNCATED, Metered(None, False, False, 0, 1000), TTS, ONE, 500_000)
    assert (nothing.charge, nothing.usage) == (0, Usage())


def _counting(tokens: int) -> tuple[list[int], Metered, Metered, Metered]:
    calls: list[int] = []

    def count() -> int:
        calls.append(tokens)
        return tokens

    return (
        calls,
        Metered(REAL, True, True, count, 100),  # completed with usage
        Metered(None, True, True, count, 1000),  # completed without usage
        Metered(Usage(input=800, output=5), True, False, count, 100),  # broke after early usage
    )


def test_the_output_is_counted_only_for_the_rows_that_need_it() -> None:
    calls, with_usage, without, early = _counting(40)
    s = settle(EndReason.COMPLETED, with_usage, GPT, ONE, 500_000)
    assert (s.charge, s.usage_source, calls) == (218, "upstream", [])  # no tokenizing
    s = settle(EndReason.COMPLETED, without, GPT, ONE, 500_000)
    assert (s.usage, s.usage_source, calls) == (Usage(input=1000, output=40), "estimated", [40])
    s = settle(EndReason.UPSTREAM_TRUNCATED, early, GPT, ONE, 500_000)
    assert (s.usage, s.usage_source, calls) == (Usage(input=800, output=40), "upstream", [40, 40])
