"""Open holds: list them, and resolve a stuck one by hand.

A live request's hold shows a sign of life at least every `checkpoint_every` seconds (the
billing plugin checkpoints it on a timer; each checkpoint stamps `touched_at`). A hold with
none for much longer is owned by no live request: its settlement was lost. The audit
reports such holds as stuck (`stuck_after_of` is the threshold); `resolve_hold` settles one
with the store's ordinary, idempotent capture or release, logged with `end_reason`
`resolved_by_hand` and the operator's note (in the log row's `error` and on the funding
source's ledger entry).
"""

from __future__ import annotations

from typing import Any

from plugins.billing.accounts.errors import conflict, invalid, not_found
from plugins.billing.accounts.service import Accounts
from plugins.billing.accounts.values import Money, check_note, iso
from plugins.billing.config import billing_config
from plugins.billing.store.base import Hold, HoldState, LogDetails, Resolution
from plugins.billing.store.rules import HAND_RESOLVED, is_stuck
from plugins.billing.store.tasks import TASK_OWNER
from proxy.host import Config

MIN_STUCK_AFTER = 300.0
"""The least default stuck-after: 30 checkpoints at the default `checkpoint_every` (10 s)."""
STUCK_CHECKPOINTS = 30
"""The default stuck-after is this many `checkpoint_every` periods (at least 300 s)."""


def stuck_after_of(config: Config, given: float | None = None) -> float:
    """`given` if set (it must be positive), else max(300, 30 × the billing plugin's
    `checkpoint_every` from proxy.yaml)."""
    if given is not None:
        if not given > 0:
            raise invalid(f"stuck-after must be a positive number of seconds, got {given!r}")
        return float(given)
    return max(MIN_STUCK_AFTER, STUCK_CHECKPOINTS * billing_config(config).checkpoint_every)


def ago(seconds: float) -> str:
    """A duration, short: 42s, 17m, 5.2h."""
    if seconds < 120:
        return f"{max(seconds, 0):.0f}s"
    if seconds < 7200:
        return f"{seconds // 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def hold_json(
    hold: Hold, beats: dict[str, float], at: float, orphan_after: float, stuck_after: float, money: Money
) -> dict[str, Any]:
    """An open hold, with its age, last sign of life and its instance's liveness."""
    seen = beats.get(hold.instance_id)
    return {
        "request_id": hold.request_id,
        "user": hold.user,
        "key_id": hold.key_id,
        "source": hold.source.value,
        "subscription_id": hold.subscription_id,
        "amount": hold.amount,
        "amount_usd": money.usd(hold.amount),
        "key_amount": hold.key_amount,
        "checkpoint": hold.checkpoint,
        "created_at": iso(hold.created_at),
        "age_s": round(at - hold.created_at, 3),
        "touched_at": iso(hold.touched_at),
        "idle_s": round(at - hold.last_sign_of_life, 3),
        "expires_at": iso(hold.expires_at),
        "instance_id": hold.instance_id,
        "instance_last_seen": iso(seen),
        "instance_idle_s": None if seen is None else round(at - seen, 3),
        "instance_alive": seen is not None and seen >= at - orphan_after,
        "stuck": is_stuck(hold, at, stuck_after),
    }


async def list_holds(acc: Accounts, orphan_after: float, stuck_after: float) -> list[dict[str, Any]]:
    """Every open hold, oldest first."""
    at = acc.now()
    holds, beats = await acc.store.open_holds(), await acc.store.instances()
    return [hold_json(h, beats, at, orphan_after, stuck_after, acc.money) for h in holds]


def _refuse_live(hold: Hold, beats: dict[str, float], at: float, orphan_after: float, stuck_after: float) -> None:
    """A hold that a live request may still own is left alone (unless forced)."""
    seen = beats.get(hold.instance_id)
    if is_stuck(hold, at, stuck_after) or seen is None or seen < at - orphan_after:
        return
    raise conflict(
        f"hold {hold.request_id} showed a sign of life {ago(at - hold.last_sign_of_life)} ago and its instance"
        f" {hold.instance_id} is alive: a request may still own it. It is stuck only after {stuck_after:.0f}s"
        " without one; force it to resolve it now anyway"
    )


async def _settle(acc: Accounts, hold: Hold, capture: bool, note: str) -> tuple[Resolution, bool]:
    """Capture the checkpoint (when asked and there is one) or release; (resolution, captured)."""
    take = capture and hold.checkpoint is not None
    details = LogDetails(end_reason=HAND_RESOLVED, usage_source="partial" if take else "none", error=note)
    if take and hold.checkpoint is not None:
        return await acc.store.capture(hold.request_id, hold.checkpoint, details), True
    return await acc.store.release(hold.request_id, details), False


async def resolve_hold(
    acc: Accounts,
    request_id: str,
    *,
    capture_checkpoint: bool,
    note: str,
    force: bool = False,
    orphan_after: float,
    stuck_after: float,
) -> dict[str, Any]:
    """Resolve one open hold by hand: capture its checkpoint (`capture_checkpoint`; a hold
    without one is released) or release it. A hold a live request may still own is refused
    unless `force`. Resolving a resolved hold moves nothing and answers the first outcome."""
    note = check_note(note)
    hold = await acc.store.get_hold(request_id)
    if hold is None:
        raise not_found(f"unknown hold {request_id!r}")
    if hold.state is not HoldState.OPEN:  # a repeat resolution moves nothing and answers the first
        res, captured = await _settle(acc, hold, False, note)
    else:
        if hold.instance_id == TASK_OWNER:  # its task must end with it (docs/tasks.md)
            raise conflict(
                f"hold {hold.request_id} belongs to an async task: use `weir tasks settle {hold.request_id}`"
            )
        if not force:
            _refuse_live(hold, await acc.store.instances(), acc.now(), orphan_after, stuck_after)
        res, captured = await _settle(acc, hold, capture_checkpoint, note)
    return {
        "request_id": hold.request_id,
        "user": hold.user,
        "resolved_now": res.first,
        "already_resolved": not res.first,
        "state": res.state.value,
        "charged": res.charged,
        "overage": res.overage,
        "end_reason": HAND_RESOLVED if res.first else None,
        "note": note if res.first else None,
        "held": hold.amount,
        "captured_checkpoint": captured,
        "capture_asked": capture_checkpoint,
    }
