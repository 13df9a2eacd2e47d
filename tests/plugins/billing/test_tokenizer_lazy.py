"""The vocabularies load on first use, once, however many first uses race (issue 20, item 6)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tiktoken

from plugins.billing import tokenizer as tokenizer_module
from plugins.billing.testing import BilledProxy
from plugins.billing.tokenizer import Family, Tokenizer

PRICES = {"gpt-4o*": {"input": 1, "output": 1}, "mock-gpt*": {"input": 1, "output": 1}}


def _counting_builds(monkeypatch: pytest.MonkeyPatch, gate: threading.Event | None = None) -> list[Family]:
    """Record every vocabulary build; with `gate`, each build waits for it first."""
    built: list[Family] = []
    real = tokenizer_module.build_encoding

    def build(path: Path, family: Family) -> tiktoken.Encoding:
        built.append(family)
        if gate is not None:
            gate.wait(10)
        return real(path, family)

    monkeypatch.setattr(tokenizer_module, "build_encoding", build)
    return built


def test_a_new_tokenizer_has_loaded_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    built = _counting_builds(monkeypatch)
    tok = Tokenizer()
    assert tok.unloaded("gpt-4o") is Family.O200K
    assert tok.unloaded("gpt-4") is Family.CL100K
    assert tok.unloaded("claude-sonnet-4-5") is None  # heuristic: no vocabulary
    assert tok.count("Grüße, Weir!", "claude-sonnet-4-5") > 0
    assert built == []


def test_only_the_vocabulary_a_model_needs_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    built = _counting_builds(monkeypatch)
    tok = Tokenizer()
    assert tok.count("hello world", "gpt-4o-mini") == 2
    assert tok.count("hello world", "gpt-4o") == 2
    assert built == [Family.O200K]
    assert tok.unloaded("gpt-4o") is None
    assert tok.unloaded("gpt-3.5-turbo") is Family.CL100K


def test_concurrent_first_uses_load_once_and_count_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    built = _counting_builds(monkeypatch, gate)
    tok = Tokenizer()
    with ThreadPoolExecutor(4) as pool:
        counts = [pool.submit(tok.count, "tiktoken is great!", "gpt-3.5-turbo") for _ in range(4)]
        gate.set()
        assert [c.result(timeout=30) for c in counts] == [6, 6, 6, 6]
    assert built == [Family.CL100K]


def test_a_loaded_encoding_still_encodes_and_decodes() -> None:
    enc = Tokenizer().encoding(Family.O200K)
    text = "Weir relays 100 events; ünïcödé and 🎉 too.\n"
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert enc.encode_ordinary("hello world") == [24912, 2375]


async def test_two_first_requests_load_the_vocabulary_once_and_are_billed_alike(
    billing_proxy: Callable[..., Awaitable[BilledProxy]], monkeypatch: pytest.MonkeyPatch
) -> None:
    built = _counting_builds(monkeypatch)
    billed = await billing_proxy(prices=PRICES)
    assert built == []  # start-up loads no vocabulary
    content = "Count me exactly, twice at once."
    answers = await asyncio.gather(*(billed.chat(content, model="gpt-4o", max_tokens=8) for _ in range(2)))
    assert [a.status for a in answers] == [200, 200]
    assert built == [Family.O200K]
    assert (await billed.chat(content, model="mock-gpt", max_tokens=8)).status == 200
    assert built == [Family.O200K]  # a heuristic model loads none
    rows = [r for r in await billed.logs() if r.details.model == "gpt-4o"]
    assert len(rows) == 2 and rows[0].charge == rows[1].charge > 0
    assert await billed.open_holds() == []
