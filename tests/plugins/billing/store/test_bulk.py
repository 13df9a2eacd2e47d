"""SQLite's set-at-a-time holds and settlements (`plugins.billing.store.sqlite.group_commit`) write exactly what
the one-by-one functions write.

The same script of concurrent calls runs on two fresh databases: one store with the bulk
forms, one without them. Every answer and every row of every table must be the same, and
the batches must really have gone through the bulk forms (a spy counts them). The script
mixes what the bulk path decides itself (wallet holds on limited and unlimited keys, a
wallet running dry mid-batch, refused keys, captures on two upstreams, releases) with what
it hands back to the one-by-one functions (a user with a subscription, a subscription-funded
hold, an unknown key, an unknown hold, a request id held twice, a hold settled twice).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from plugins.billing.apikeys import hash_key
from plugins.billing.store.base import LogDetails, Plan, StoreError
from plugins.billing.store.sqlite import group_commit as sqlite_bulk
from plugins.billing.store.sqlite import store as sqlite_store
from plugins.billing.store.sqlite.store import SQLiteStore

from .conftest import START, FakeClock

TABLES = ("users", "api_keys", "subscriptions", "holds", "ledger", "consume_log", "upstream_counters")


def _details(upstream: str, n: int) -> LogDetails:
    return LogDetails(
        end_reason="completed",
        usage_source="upstream",
        model="m",
        upstream=upstream,
        input=n,
        output=2 * n,
        latency_ms=n,
        status=200,
    )


class _OneByOne(SQLiteStore):
    bulk = {}


def _spied(calls: Counter[str]) -> type[SQLiteStore]:
    def spy(name: str, fn: Callable[..., list[object]]) -> Callable[..., list[object]]:
        def counted(db: sqlite3.Connection, batch: Sequence[tuple[Any, ...]]) -> list[object]:
            answers = fn(db, batch)
            calls[name] += len(batch)  # answered by the bulk form (a raise sends them one by one)
            return answers

        return counted

    class Spied(SQLiteStore):
        bulk = {
            sqlite_bulk.hold_tx: spy("hold", sqlite_bulk.hold_many),
            sqlite_bulk.resolve_tx: spy("resolve", sqlite_bulk.resolve_many),
        }

    return Spied


async def _script(store: SQLiteStore) -> list[object]:
    """Accounts, then rounds of concurrent holds and settlements; every answer, in order."""
    await store.create_user("ann")
    await store.credit("ann", 1_000)
    await store.create_user("bob")
    await store.credit("bob", 45)
    await store.create_user("sue")
    await store.credit("sue", 500)
    await store.create_plan(Plan("pro", 300, "month", 30, ()))
    await store.grant_subscription("sue", "pro", START - 10, START + 86_400 * 30)
    ann = await store.create_key("ann", hash_key("ann-1"))
    ann_limited = await store.create_key("ann", hash_key("ann-2"), quota=250)
    bob = await store.create_key("bob", hash_key("bob-1"))
    sue = await store.create_key("sue", hash_key("sue-1"))
    off = await store.create_key("bob", hash_key("bob-2"))
    await store.set_key_status(off.id, "disabled")

    async def answer(aw: Any) -> object:
        try:
            return await aw
        except StoreError as exc:
            return f"error: {exc}"

    def hold(rid: str, user: str, key: str, amount: int) -> Any:
        return answer(store.hold(rid, user, key, amount, None, "pv", 3600, "i1", "m"))

    holds = [
        hold("a1", "ann", ann.id, 100),
        hold("a2", "ann", ann_limited.id, 100),
        hold("a3", "ann", ann_limited.id, 100),
        hold("a4", "ann", ann_limited.id, 100),  # the key quota is used up by a2 and a3
        hold("b1", "bob", bob.id, 20),
        hold("b2", "bob", bob.id, 20),
        hold("b3", "bob", bob.id, 20),  # runs dry
        hold("s1", "sue", sue.id, 50),
        hold("s2", "sue", sue.id, 50),  # the subscription pays
        hold("x1", "bob", off.id, 5),
        hold("x2", "ann", bob.id, 5),
        hold("x3", "ann", "k_nope", 5),
        hold("a5", "ann", ann.id, 10),
    ]
    # Each gather is one batch: its calls queue while the first one waits a turn.
    out: list[object] = list(await asyncio.gather(*holds))
    out += await asyncio.gather(  # a request id held already: the batch runs again one call at a time
        hold("a5", "ann", ann.id, 10),
        hold("a6", "ann", ann.id, 10),
    )
    out += await asyncio.gather(
        hold("a7", "ann", ann.id, 1),
        hold("a8", "ann", ann.id, 1),
        hold("a9", "ann", ann_limited.id, 40),
        hold("b4", "bob", bob.id, 5),
    )
    out += await asyncio.gather(
        answer(store.capture("a1", 70, _details("up1", 1))),
        answer(store.capture("a2", 130, _details("up2", 2))),
        answer(store.release("a3", _details("", 3))),
        answer(store.capture("b1", 0, _details("up1", 4))),
        answer(store.capture("b2", 25, _details("up1", 5))),
        answer(store.capture("s1", 60, _details("up2", 6))),
        answer(store.release("s2", _details("", 7))),
        answer(store.capture("a5", 10, _details("up1", 9))),
        answer(store.capture("b4", 9, _details("up2", 9))),
    )
    out += await asyncio.gather(  # an unknown hold: the batch runs again one call at a time
        answer(store.capture("nope", 1, _details("up1", 8))),
        answer(store.capture("a8", 1, _details("up1", 8))),
    )
    out += await asyncio.gather(  # one hold twice: handed to the one-by-one function
        answer(store.capture("a6", 3, _details("up1", 10))),
        answer(store.capture("a6", 4, _details("up1", 11))),
        answer(store.release("a7", _details("", 13))),
    )
    out += await asyncio.gather(  # settled before: answered as it was
        answer(store.capture("a1", 5, _details("up1", 12))),
        answer(store.capture("a9", 41, _details("up1", 14))),
    )
    return out


# Row ids of the journal and the log follow the order calls ran in; where the bulk path hands
# a call back to its one-by-one function, that call writes earlier, so compare without them.
_WITHOUT_ID = {"ledger", "consume_log"}


def _tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as db:
        rows = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES}
    return {t: sorted(r[1:] for r in v) if t in _WITHOUT_ID else v for t, v in rows.items()}


async def _run(
    cls: type[SQLiteStore], path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[object], dict[str, list[tuple[Any, ...]]]]:
    # Key and subscription ids are random: the same sequence in both runs instead.
    ids = iter(range(1_000))
    monkeypatch.setattr(sqlite_store.secrets, "token_hex", lambda n: f"{next(ids):0{2 * n}x}")
    store = cls(str(path), clock=FakeClock())
    await store.open()
    try:
        answers = await _script(store)
        report = await store.audit(START, 30)
        assert report.ok, report
    finally:
        await store.close()
    return answers, _tables(path)


async def test_bulk_batches_write_what_one_by_one_calls_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: Counter[str] = Counter()
    bulk_answers, bulk_rows = await _run(_spied(seen), tmp_path / "bulk.db", monkeypatch)
    one_answers, one_rows = await _run(_OneByOne, tmp_path / "one.db", monkeypatch)
    # The batches did go through the bulk forms, but for the two that raised in them.
    assert seen == Counter(hold=13 + 4, resolve=9 + 3 + 2), seen
    assert bulk_answers == one_answers
    for table in TABLES:
        assert bulk_rows[table] == one_rows[table], table
    # And the script exercised what it claims to.
    kinds = Counter(type(a).__name__ for a in bulk_answers)
    assert kinds["Hold"] >= 10 and kinds["HoldRefusal"] >= 4 and kinds["Resolution"] >= 10, kinds
    assert any(isinstance(a, str) and "unknown hold" in a for a in bulk_answers)
    assert any(r[3] == "subscription" for r in bulk_rows["holds"])


@pytest.mark.parametrize("repeat", ["hold", "capture"])
async def test_a_request_id_twice_in_one_batch_is_answered_like_one_call_after_the_other(
    tmp_path: Path, repeat: str
) -> None:
    store = SQLiteStore(str(tmp_path / "w.db"), clock=FakeClock())
    await store.open()
    try:
        await store.create_user("ann")
        await store.credit("ann", 1_000)
        key = await store.create_key("ann", hash_key("k"))
        await store.heartbeat("i1")  # the holds left open belong to a live instance
        first = await store.hold("r0", "ann", key.id, 10, None, "pv", 3600, "i1", "m")
        if repeat == "hold":
            got = await asyncio.gather(
                *(store.hold("r1", "ann", key.id, 10, None, "pv", 3600, "i1", "m") for _ in range(3))
            )
            assert got[0] == got[1] == got[2]
            assert (await store.get_user("ann")).reserved == 20  # type: ignore[union-attr]
        else:
            got = await asyncio.gather(*(store.capture("r0", 7 + i, _details("up", i)) for i in range(3)))
            assert [r.charged for r in got] == [7, 7, 7] and [r.first for r in got] == [True, False, False]  # type: ignore[attr-defined]
            assert (await store.get_user("ann")).balance == 993  # type: ignore[union-attr]
        assert first.request_id == "r0"  # type: ignore[union-attr]
        assert (await store.audit(START, 30)).ok
    finally:
        await store.close()
