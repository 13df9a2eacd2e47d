"""What `RedisStore` does across slots: the settlement calls (a log id, then the script),
the request-id claim check, orphan expiry, and the readers (consume logs, upstream stats,
open holds, the audit).

The readers walk the global indexes (users, users with open holds, the global log index)
and read each user's slot; they move no money.
"""

from __future__ import annotations

from collections.abc import Callable

from plugins.billing.store.base import AuditReport, Hold, HoldState, LogDetails, LogRow, Resolution, StoreError
from plugins.billing.store.redis.audit import Findings, UserSnapshot, audit_user
from plugins.billing.store.redis.client import RedisCore
from plugins.billing.store.redis.layout import Held, Layout
from plugins.billing.store.redis.rows import details_json, fmt_time, pairs, sub_target, to_hold, to_log_row
from plugins.billing.store.rules import ledger_note
from plugins.billing.store.tasks import TASK_OWNER
from plugins.billing.tuples import new_tuple

_PAGE = 100
_STATES = {state.value: state for state in HoldState}


async def settle(
    core: RedisCore, k: Layout, script: str, rid: str, held: Held, log: LogDetails, actual: int, now: float
) -> Resolution | None:
    """Run settlement `script` (capture, release, expire) on hold `rid`: one round trip on a
    single server, two on a cluster (a log id, then the script). A repeat returns the stored
    outcome; None when the hold is not the one `held` describes (nothing was written)."""
    keys, args = await settle_call(core, k, rid, held, log, actual, now)
    r = await core.run(script, keys, args)
    if r[0] == "stale":
        return None
    # `new_tuple` and a dict lookup: the NamedTuple's __new__ and HoldState(...) are Python calls.
    return new_tuple(Resolution, (rid, _STATES[r[0]], int(r[1]), int(r[2]), bool(int(r[3]))))


async def settle_call(
    core: RedisCore, k: Layout, rid: str, held: Held, log: LogDetails, actual: int, now: float
) -> tuple[list[str], list[str | int]]:
    """The KEYS and ARGV of a settlement script (`lua/settle.lib.lua`) for hold `rid`."""
    user = held.user
    u = k.of(user)
    sub_key = u.sub(held.subscription_id) if held.subscription_id else u.no_sub
    target = sub_target(held.sub_meta, now) if held.subscription_id else ""
    keys = [
        u.user,
        u.hold(rid),
        u.key(held.key_id),
        sub_key,
        u.open_holds,
        u.ledger,
        u.log_rows,
        u.log_index,
        u.upstream_used,
        u.upstream_count,
    ]
    # The id comes from one global counter in a slot of its own: query_logs pages all users'
    # rows together, newest first, by it. On one server the script takes it as it writes the
    # row, so ids follow settlement order with no gaps; a cluster cannot run a script across
    # slots, so there it is reserved just before (a settlement that then loses a race leaves
    # a gap, skipped on read).
    if core.one_slot_scripts:
        log_id = str(await core.run("log_id", [k.log_seq, k.log_global], [user]))
    else:
        log_id = ""
        keys += [k.log_seq, k.log_global]
    return keys, [
        fmt_time(now),
        target,
        log_id,
        details_json(log),
        log.upstream,
        actual,
        held.key_id,
        held.subscription_id,
        ledger_note(log),
    ]


async def settle_by_index(
    core: RedisCore, k: Layout, script: str, rid: str, log: LogDetails, actual: int, now: float
) -> Resolution:
    """`settle` for a hold this process does not remember: find it through the request index."""
    user = await core.hget(k.requests, rid)
    h = {} if user is None else await core.hgetall(k.hold(user, rid))
    if user is None or not h:
        raise StoreError(f"unknown hold {rid!r}")
    if h["state"] != HoldState.OPEN:  # a repeat: the stored outcome, without taking a log id
        return Resolution(rid, HoldState(h["state"]), int(h.get("charged") or 0), int(h.get("overage") or 0), False)
    resolved = await settle(core, k, script, rid, await held_of(core, k, user, h), log, actual, now)
    if resolved is None:
        raise StoreError(f"unknown hold {rid!r}")
    return resolved


async def claimed_before(core: RedisCore, k: Layout, rid: str, user: str) -> Hold | None:
    """A hold's request id was already in the index: another user's hold if it exists (the
    index is then left alone); otherwise None, and the index names `user` from now on."""
    owner = await core.hget(k.requests, rid)
    if owner == user:
        return None
    if owner is not None:
        existing = await core.hgetall(k.hold(owner, rid))
        if existing:
            return to_hold(existing)
    await core.call("hset", k.requests, rid, user)
    return None


async def expire_orphans(
    core: RedisCore, k: Layout, now: float, orphan_after: float, clock: Callable[[], float]
) -> list[Resolution]:
    """Expire the open holds of instances silent since `now - orphan_after` (or never seen)
    and those past their ttl, oldest first; the resolutions this call won."""
    beats = await heartbeats(core, k)
    won: list[Resolution] = []
    for user, h in sorted(
        await open_hold_hashes(core, k), key=lambda uh: (float(uh[1]["created_at"]), uh[1]["request_id"])
    ):
        seen = beats.get(h["instance_id"])
        if h["instance_id"] == TASK_OWNER:  # a task's hold lives as long as its task
            continue
        if float(h["expires_at"]) >= now and seen is not None and seen >= now - orphan_after:
            continue
        details = LogDetails(end_reason="orphaned", usage_source="none", model=h.get("model", ""))
        res = await settle(core, k, "expire", h["request_id"], await held_of(core, k, user, h), details, 0, clock())
        if res is not None and res.first:
            won.append(res)
    return won


async def held_of(core: RedisCore, k: Layout, user: str, h: dict[str, str]) -> Held:
    """A hold hash read from Redis as what settling it needs (with its subscription's terms)."""
    sub_id = h["subscription_id"]
    meta = await core.hget(k.sub_meta(user), sub_id) if sub_id else None
    return Held(user, h["key_id"], sub_id, meta)


async def query_logs(
    core: RedisCore,
    k: Layout,
    user: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    before_id: int | None,
    match: Callable[[LogRow], bool] | None = None,
) -> list[LogRow]:
    """Log rows newest first (by id) with `since <= ts < until`, below `before_id`, that
    `match` accepts (every row without it).

    The global index may hold ids whose settlement lost a race or never ran (an id is
    reserved before the script); they have no row and are skipped.
    """
    index = k.log_index(user) if user is not None else k.log_global
    top = "+inf" if before_id is None else f"({before_id}"
    rows: list[LogRow] = []
    while len(rows) < limit:
        batch: list[tuple[str, float]] = await core.call(
            "zrevrangebyscore", index, top, "-inf", 0, max(limit, _PAGE), True
        )
        if not batch:
            break
        calls = []
        for member, _ in batch:
            log_id, owner = (member, user) if user is not None else member.split(":", 1)
            calls.append(("hget", (k.log_rows(owner), log_id)))
        for raw in await core.batch(calls):
            row = None if raw is None else to_log_row(raw)
            if (
                row
                and (since is None or row.ts >= since)
                and (until is None or row.ts < until)
                and (match is None or match(row))
            ):
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
    # Drop the mark, then look again in the user's slot: open holds put it back at once; a
    # hold between its caller's mark and its script finds the flag `forget` raises and has
    # its caller mark the user again.
    await core.call("srem", k.open_users, user)
    if await core.run("forget", [k.open_holds(user), k.unmarked(user)], []):
        await core.call("sadd", k.open_users, user)


async def heartbeats(core: RedisCore, k: Layout) -> dict[str, float]:
    """Instance id -> last heartbeat."""
    return {i: float(t) for i, t in (await core.hgetall(k.instances)).items()}


async def audit(
    core: RedisCore, k: Layout, now: float, orphan_after: float, stuck_after: float | None = None
) -> AuditReport:
    """Audit every user from an atomic snapshot of the user's slot."""
    beats = await heartbeats(core, k)
    found = Findings()
    for user in sorted(await core.smembers(k.users)):
        snap = await _snapshot(core, k, user)
        if snap is not None:
            audit_user(found, snap, beats, now, orphan_after, stuck_after)
    return AuditReport(found.mismatches, found.orphans, found.negatives, found.stuck)


async def _snapshot(core: RedisCore, k: Layout, user: str) -> UserSnapshot | None:
    for _ in range(10):  # retried while a key, subscription or hold appears meanwhile
        key_ids, sub_ids, open_set = await core.batch(
            [
                ("lrange", (k.key_list(user), 0, -1)),
                ("lrange", (k.sub_list(user), 0, -1)),
                ("smembers", (k.open_holds(user),)),
            ]
        )
        open_ids = sorted(open_set)
        r = await core.run(
            "snapshot",
            [
                k.user(user),
                k.ledger(user),
                k.open_holds(user),
                k.key_list(user),
                k.sub_list(user),
                k.log_rows(user),
                k.upstream_used(user),
                k.upstream_count(user),
                *(k.key(user, i) for i in key_ids),
                *(k.sub(user, i) for i in sub_ids),
                *(k.hold(user, rid) for rid in open_ids),
            ],
            [len(key_ids), len(sub_ids)],
        )
        if not r[0]:
            return None
        if r[3] == key_ids and r[4] == sub_ids and sorted(r[2]) == open_ids:
            return UserSnapshot(
                user=pairs(r[0]),
                ledger=r[1],
                keys=[pairs(h) for h in r[5]],
                subs=[pairs(h) for h in r[6]],
                open_ids=open_ids,
                holds=[pairs(h) for h in r[7]],
                log_rows=int(r[8]),
                upstream_used=pairs(r[9]),
                upstream_count=pairs(r[10]),
            )
    raise StoreError(f"audit: no stable snapshot of user {user} after 10 tries")
