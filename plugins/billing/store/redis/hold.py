"""`RedisStore.hold`: the hold script's keys and arguments, its round trip, and its answer.

A hold is one script (`lua/hold.lua`) that checks the key and a funding source and reserves,
atomically. Around it:

* **The request index and the open-users mark.** A hold must be findable by its request id
  (`{requests}`) and its user listed as one that may have open holds (`{openusers}`), however
  the process dies. On one server the script writes both itself, in the same atomic step, so
  a billed request's hold is a single command. On a Cluster those indexes live in slots of
  their own, so the caller claims and marks first, pipelined before the script in the same
  round trip; a crash in between leaves at worst an index entry pointing at nothing.
* **Subscription terms.** The script is built from the terms (id -> meta JSON) this process
  last read for the user: which subscriptions may pay and their current period. Terms are
  only ever added, so the script tells a stale view by their count and answers `stale`
  without writing; the terms are then read and the script runs again. A user's terms are
  read in the same round trip as their first hold in this process.
* **A request id held by another user** (never with Weir's own ids): that user's hold is the
  answer; on a Cluster this caller's script may have run already, and its reservation is
  released again (`duplicate_request_id`).
"""

from __future__ import annotations

from collections.abc import Callable

from plugins.billing.store.base import (
    FundingSource,
    Hold,
    HoldRefusal,
    HoldState,
    LogDetails,
    Preference,
    Refusal,
    StoreUnavailable,
)
from plugins.billing.store.redis import cross_slot as records
from plugins.billing.store.redis.client import Call, RedisCore
from plugins.billing.store.redis.layout import Held, HeldMemory, KnownTerms, Layout, units
from plugins.billing.store.redis.rows import fmt_time, pairs, to_hold, usable_subscriptions
from plugins.billing.tuples import new_tuple

__all__ = ["Holder"]

_SOURCES = {s.value: s for s in FundingSource}
_OPEN = HoldState.OPEN
# Answers after which the script ran again: `stale` (terms read again) or `claimed` (the
# other user's hold is gone and the index names this user now). Each happens once at most
# unless other writers keep changing the user's terms meanwhile.
_RETRIES = 3


class Holder:
    """Makes holds for one `RedisStore` (see the module docstring)."""

    def __init__(
        self, core: RedisCore, layout: Layout, clock: Callable[[], float], held: HeldMemory, terms: KnownTerms
    ) -> None:
        """Share the store's connection, key names, clock and memories."""
        self._core = core
        self._k = layout
        self._clock = clock
        self._held = held
        self._terms = terms

    async def hold(
        self,
        request_id: str,
        user: str,
        key_id: str,
        amount: int,
        preference: Preference | None,
        price_version: str,
        ttl: float,
        instance_id: str,
        model: str,
    ) -> Hold | HoldRefusal:
        """`Store.hold` (see `plugins.billing.store.base`)."""
        units(amount, "a hold amount")
        k, now = self._k, self._clock()
        claim = not self._core.one_slot_scripts
        script = self._script(
            claim, now, request_id, user, key_id, amount, preference, price_version, ttl, instance_id, model
        )
        known = self._terms.get(user)
        calls: list[Call] = (
            []
            if claim
            else [
                ("hsetnx", (k.requests, request_id, user)),
                ("sadd", (k.open_users, user)),
            ]
        )
        if known is None:
            calls.append(("hgetall", (k.sub_meta(user),)))
        if calls:
            replies, reply = await self._core.batch_and_run(calls, "hold", *script(known or {}))
        else:
            replies, reply = [], await self._core.run("hold", *script(known or {}))
        metas = known if known is not None else replies[-1]
        if known is None:
            self._terms.remember(user, metas)
        if not claim and not replies[0]:  # the id was in the index already
            theirs = await records.claimed_before(self._core, k, request_id, user)
            if theirs is not None:
                if reply[0] == "new":  # the script ran anyway: give this user's reservation back
                    await self._void(request_id, user, key_id, reply[2] or "", metas)
                return theirs
        for _ in range(_RETRIES):
            if reply[0] == "claimed":
                theirs = await records.claimed_before(self._core, k, request_id, user)
                if theirs is not None:
                    return theirs
            elif reply[0] == "stale":
                metas = await self._core.hgetall(k.sub_meta(user))
                self._terms.remember(user, metas)
            else:
                break
            reply = await self._core.run("hold", *script(metas))
        return await self._answer(reply, request_id, user, key_id, amount, price_version, instance_id, now, ttl, metas)

    def _script(
        self,
        claim: bool,
        now: float,
        request_id: str,
        user: str,
        key_id: str,
        amount: int,
        preference: Preference | None,
        price_version: str,
        ttl: float,
        instance_id: str,
        model: str,
    ) -> Callable[[dict[str, str]], tuple[list[str], list[str | int]]]:
        """The hold script's KEYS and ARGV for the user's subscription terms as known (a
        function of them: a `stale` answer means calling it again with fresher terms)."""
        k = self._k
        u = k.of(user)
        keys = [
            u.user,
            u.hold(request_id),
            u.key(key_id),
            u.open_holds,
            u.ledger,
            u.unmarked,
            u.sub_meta,
            *((k.requests, k.open_users) if claim else ()),
        ]
        args: list[str | int] = [
            request_id,
            key_id,
            int(amount),
            "" if preference is None else Preference(preference).value,
            price_version,
            fmt_time(now),
            fmt_time(now + ttl),
            instance_id,
            model,
        ]
        flag = "1" if claim else "0"

        def script(terms: dict[str, str]) -> tuple[list[str], list[str | int]]:
            offers = usable_subscriptions(terms, now, model) if terms else ()
            return (
                [*keys, *(u.sub(sub_id) for sub_id, _ in offers)],
                [*args, len(terms), flag, *(t for _, t in offers)],
            )

        return script

    async def _answer(
        self,
        reply: list[str],
        request_id: str,
        user: str,
        key_id: str,
        amount: int,
        price_version: str,
        instance_id: str,
        now: float,
        ttl: float,
        metas: dict[str, str],
    ) -> Hold | HoldRefusal:
        """The script's answer as a Hold or HoldRefusal; an open hold is remembered."""
        kind = reply[0]
        if kind == "refused":
            return HoldRefusal(Refusal(reply[1]), int(reply[2]), int(reply[3]))
        if kind == "hold":  # it existed: a repeated call
            held = to_hold(pairs(reply[1]))
        elif kind == "new":
            # All fourteen fields, in order (`plugins.billing.tuples`).
            held = new_tuple(
                Hold,
                (
                    request_id,
                    user,
                    key_id,
                    _SOURCES[reply[1]],
                    reply[2] or None,
                    int(amount),
                    int(reply[3]),
                    price_version,
                    instance_id,
                    float(now),
                    float(now + ttl),
                    _OPEN,
                    None,
                    None,
                ),
            )
            if int(reply[4]):  # a resolver dropped the mark after ours was set: set it again
                await self._core.call("sadd", self._k.open_users, user)
        else:  # still stale or claimed after every retry: others keep changing this user
            raise StoreUnavailable(f"redis: the hold of {request_id!r} kept meeting concurrent changes ({kind})")
        if held.state is _OPEN:
            sub_id = held.subscription_id or ""
            self._held.remember(request_id, new_tuple(Held, (user, held.key_id, sub_id, metas.get(sub_id))))
        return held

    async def _void(self, request_id: str, user: str, key_id: str, sub_id: str, metas: dict[str, str]) -> None:
        """Release a hold made under a request id that turned out to be another user's
        (logged as `duplicate_request_id`); never reached with Weir's own request ids."""
        details = LogDetails(end_reason="duplicate_request_id", usage_source="none")
        held = Held(user, key_id, sub_id, metas.get(sub_id))
        await records.settle(self._core, self._k, "release", request_id, held, details, 0, self._clock())
