"""The store contract for price versions (docs/billing-rules.md §9), on every backend.

A save appends `base + 1` only when `base` is the head; a stale base is a conflict that
writes nothing. Concurrent saves from several store objects on the same data (several
connections to one SQLite file, several Redis clients on one prefix) have exactly one
winner per base.
"""

from __future__ import annotations

import asyncio

from plugins.billing.store.base import PriceConflict, PriceVersion, Store
from plugins.billing.store.prices import document_digest

from .conftest import Backend, FakeClock

DOC1 = '{"gpt-4o-mini":{"input":"0.15","output":"0.6"}}'
DOC2 = '{"gpt-4o-mini":{"input":"0.2","output":"0.8"}}'


async def test_an_empty_store_has_no_price_version(store: Store) -> None:
    assert await store.price_head() == 0
    assert await store.get_price_version() is None
    assert await store.get_price_version(1) is None
    assert await store.list_price_versions() == []


async def test_versions_are_numbered_from_1_and_kept_exactly(store: Store, clock: FakeClock) -> None:
    first = await store.save_price_version(0, DOC1, "proxy.yaml", "from proxy.yaml")
    assert isinstance(first, PriceVersion)
    assert (first.number, first.base, first.document, first.source, first.note, first.created_at) == (
        1,
        0,
        DOC1,
        "proxy.yaml",
        "from proxy.yaml",
        clock.now,
    )
    assert first.digest == document_digest(DOC1) and len(first.digest) == 12
    clock.advance(5)
    second = await store.save_price_version(1, DOC2, "editor")
    assert isinstance(second, PriceVersion) and (second.number, second.base, second.note) == (2, 1, "")
    assert await store.price_head() == 2
    assert await store.get_price_version() == second
    assert await store.get_price_version(1) == first
    assert await store.get_price_version(3) is None
    assert await store.list_price_versions() == [second, first]
    assert await store.list_price_versions(limit=1) == [second]


async def test_a_stale_base_is_a_conflict_and_writes_nothing(store: Store) -> None:
    await store.save_price_version(0, DOC1, "proxy.yaml")
    await store.save_price_version(1, DOC2, "editor")
    for stale in (0, 1, 5):
        refused = await store.save_price_version(stale, DOC1, "editor")
        assert refused == PriceConflict(base=stale, head=2)
    assert await store.price_head() == 2
    assert [v.number for v in await store.list_price_versions()] == [2, 1]


async def test_concurrent_saves_on_one_base_have_one_winner(store: Store, backend: Backend, clock: FakeClock) -> None:
    await store.save_price_version(0, DOC1, "proxy.yaml")
    peers = [store] + [await backend.open_peer(clock) for _ in range(3)]
    results = await asyncio.gather(
        *(peers[i % len(peers)].save_price_version(1, f'{{"m{i}":{{"per_request":"1"}}}}', "api") for i in range(12))
    )
    won = [r for r in results if isinstance(r, PriceVersion)]
    lost = [r for r in results if isinstance(r, PriceConflict)]
    assert len(won) == 1 and len(lost) == 11
    assert all(c.head == 2 for c in lost)
    for peer in peers:
        assert await peer.price_head() == 2
        assert await peer.get_price_version() == won[0]


async def test_documents_with_any_characters_survive(store: Store) -> None:
    doc = (
        '{"acme-\u00e9*":{"input":"0.000001","output":"12345678901234567890.123456789"},"q\\"uote":{"per_request":"0"}}'
    )
    saved = await store.save_price_version(0, doc, "api", "n" * 2000)
    assert isinstance(saved, PriceVersion) and len(saved.note) == 500
    again = await store.get_price_version(1)
    assert again is not None and again.document == doc and again.note == saved.note
