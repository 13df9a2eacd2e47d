"""The read side of `RedisStore`: consume logs, upstream stats, open holds and the audit.

These walk the global indexes (users, users with open holds, the global log index) and
read each user's slot; nothing here moves money.
"""

from __future__ import annotations

from proxy.store.base import AuditReport, HoldState, LogRow, StoreError
from proxy.store.redis_audit import Findings, UserSnapshot, audit_user
from proxy.store.redis_core import RedisCore
from proxy.store.redis_layout import Layout, pairs, to_log_row

_PAGE = 100


async def query_logs(
    core: RedisCore,
    k: Layout,
    user: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    before_id: int | None,
) -> list[LogRow]:
    """Log rows newest first (by id) with `since <= ts < until`, below `before_id`.

    The global index may hold ids whose settlement lost a race or never ran (an id is
    reserved before the script); they have no row and are skipped.
    """
    index = k.log_index(user) if user is not None else k.log_global
    top = "+inf" if before_id is None else f"({before_id}"
    rows: list[LogRow] = []
    while len(rows) < limit:
        batch: list[tuple[str, float]] = await core.client.zrevrangebyscore(
            index, top, "-inf", start=0, num=max(limit, _PAGE), withscores=True
        )
        if not batch:
            break
        calls = []
        for member, _ in batch:
            log_id, owner = (member, user) if user is not None else member.split(":", 1)
            calls.append(("hget", (k.log_rows(owner), log_id)))
        for raw in await core.batch(calls):
            row = None if raw is None else to_log_row(raw)
            if row and (since is None or row.ts >= since) and (until is None or row.ts < until):
                rows.append(row)
        top = f"({int(batch[-1][1])}"
    return rows[: max(limit, 0)]


async def upstream_stats(core: RedisCore, k: Layout) -> dict[str, tuple[int, int]]:
    """Per upstream: (used, requests), summed over every user's counters."""
    users = sorted(await core.smembers(k.users))
    calls = [c for u in users for c in (("hgetall", (k.upstream_used(u),)), ("hgetall", (k.upstream_count(u),)))]
    replies = await core.batch(calls)
    stats: dict[str, tuple[int, int]] = {}
    for used, count in zip(replies[::2], replies[1::2], strict=True):
        for name in set(used) | set(count):
            u, c = stats.get(name, (0, 0))
            stats[name] = (u + int(used.get(name, 0)), c + int(count.get(name, 0)))
    return dict(sorted(stats.items()))


async def open_hold_hashes(core: RedisCore, k: Layout) -> list[tuple[str, dict[str, str]]]:
    """(user, hold hash) of every open hold; forgets users that have none left."""
    out: list[tuple[str, dict[str, str]]] = []
    for user in sorted(await core.smembers(k.open_users)):
        ids = sorted(await core.smembers(k.open_holds(user)))
        if not ids:
            await _forget_open_user(core, k, user)
            continue
        hashes = await core.batch([("hgetall", (k.hold(user, rid),)) for rid in ids])
        out += [(user, h) for h in hashes if h.get("state") == HoldState.OPEN]
    return out


async def _forget_open_user(core: RedisCore, k: Layout, user: str) -> None:
    # Drop the mark, then look again: a hold taken meanwhile puts it back.
    await core.client.srem(k.open_users, user)
    if await core.client.scard(k.open_holds(user)):
        await core.client.sadd(k.open_users, user)


async def heartbeats(core: RedisCore, k: Layout) -> dict[str, float]:
    """Instance id -> last heartbeat."""
    return {i: float(t) for i, t in (await core.hgetall(k.instances)).items()}


async def audit(core: RedisCore, k: Layout, now: float, orphan_after: float) -> AuditReport:
    """Audit every user from an atomic snapshot of the user's slot."""
    beats = await heartbeats(core, k)
    found = Findings()
    for user in sorted(await core.smembers(k.users)):
        snap = await _snapshot(core, k, user)
        if snap is not None:
            audit_user(found, snap, beats, now, orphan_after)
    return AuditReport(found.mismatches, found.orphans, found.negatives)


async def _snapshot(core: RedisCore, k: Layout, user: str) -> UserSnapshot | None:
    for _ in range(10):  # retried while a key, subscription or hold appears meanwhile
        key_ids, sub_ids, open_set = await core.batch([
            ("lrange", (k.key_list(user), 0, -1)), ("lrange", (k.sub_list(user), 0, -1)),
            ("smembers", (k.open_holds(user),)),
        ])
        open_ids = sorted(open_set)
        r = await core.run(
            "snapshot",
            [k.user(user), k.ledger(user), k.open_holds(user), k.key_list(user), k.sub_list(user),
             k.log_rows(user), k.upstream_used(user), k.upstream_count(user),
             *(k.key(user, i) for i in key_ids), *(k.sub(user, i) for i in sub_ids),
             *(k.hold(user, rid) for rid in open_ids)],
            [len(key_ids), len(sub_ids)],
        )
        if not r[0]:
            return None
        if r[3] == key_ids and r[4] == sub_ids and sorted(r[2]) == open_ids:
            return UserSnapshot(
                user=pairs(r[0]), ledger=r[1], keys=[pairs(h) for h in r[5]], subs=[pairs(h) for h in r[6]],
                open_ids=open_ids, holds=[pairs(h) for h in r[7]], log_rows=int(r[8]),
                upstream_used=pairs(r[9]), upstream_count=pairs(r[10]),
            )
    raise StoreError(f"audit: no stable snapshot of user {user} after 10 tries")
