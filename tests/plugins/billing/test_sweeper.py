"""A live instance resolves its own open holds that are no longer in flight."""

from __future__ import annotations

import time
from pathlib import Path

from plugins.billing.store.base import Hold, LogDetails
from plugins.billing.store.sqlite.store import SQLiteStore
from plugins.billing.sweeper import InflightSweeper


async def test_strays_resolved_in_flight_and_young_left_alone(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "w.db"))
    await store.open()
    try:
        await store.create_user("u")
        await store.credit("u", 10_000)
        key = await store.create_key("u", "0" * 64, name="k")
        holds = {}
        for rid in ("stray-cp", "stray", "inflight", "young", "other"):
            inst = "peer" if rid == "other" else "me"
            h = await store.hold(rid, "u", key.id, 100, None, "v1", 3600, inst)
            assert isinstance(h, Hold)
            holds[rid] = h
        await store.checkpoint("stray-cp", 150)
        sweeper = InflightSweeper("me", grace=60)
        sweeper.track("inflight")
        later = time.time() + 120
        # "young" is younger than the grace period as seen from its own creation time.
        assert await sweeper.sweep(store, now=holds["young"].created_at + 30) == 0
        assert await sweeper.sweep(store, now=later) == 3  # stray-cp, stray, young
        states = {rid: (await store.get_hold(rid)).state.value for rid in holds}  # type: ignore[union-attr]
        assert states == {
            "stray-cp": "captured",
            "stray": "released",
            "inflight": "open",
            "young": "released",
            "other": "open",
        }
        rows = {r.request_id: r for r in await store.query_logs(user="u")}
        assert rows["stray-cp"].charge == 150 and rows["stray-cp"].details.end_reason == "orphaned"
        user = await store.get_user("u")
        assert user is not None and user.balance == 10_000 - 150 and user.reserved == 200
        for rid in ("inflight", "other"):
            await store.release(rid, LogDetails(end_reason="test", usage_source="none"))
        assert (await store.audit(time.time(), 3600)).ok
    finally:
        await store.close()
