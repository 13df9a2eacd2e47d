"""`weir holds [list]` and `weir holds resolve`: open holds, and resolving a stuck one by hand.

A live request's hold shows a sign of life at least every `checkpoint_every` seconds (the
billing plugin checkpoints it on a timer; each checkpoint stamps `touched_at`). A hold with
none for much longer is owned by no live request: its settlement was lost. `weir audit`
reports such holds as stuck (`stuck_after_of` is the threshold); `weir holds resolve`
settles one by hand with the store's ordinary, idempotent capture or release, logged with
`end_reason` `resolved_by_hand` and the operator's note (in the log row's `error` and on the
funding source's ledger entry).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from proxy.cli_frame import CLIError, emit
from plugins.billing.cli.accounts import Money, iso, money_of, now, table, with_store
from plugins.billing.config import billing_config
from proxy.host import Config
from plugins.billing.store.base import Hold, HoldState, LogDetails, Resolution, Store
from plugins.billing.store.rules import HAND_RESOLVED, is_stuck
from plugins.billing.store.tasks import TASK_OWNER

MIN_STUCK_AFTER = 300.0
"""The least default `--stuck-after`: 30 checkpoints at the default `checkpoint_every` (10 s)."""
STUCK_CHECKPOINTS = 30
"""The default `--stuck-after` is this many `checkpoint_every` periods (at least 300 s)."""
MAX_NOTE = 500


def stuck_after_of(args: argparse.Namespace, config: Config) -> float:
    """`--stuck-after` if given (it must be positive), else max(300, 30 × the billing
    plugin's `checkpoint_every` from proxy.yaml)."""
    given: float | None = getattr(args, "stuck_after", None)
    if given is not None:
        if not given > 0:
            raise CLIError(f"--stuck-after must be a positive number of seconds, got {given!r}")
        return float(given)
    return max(MIN_STUCK_AFTER, STUCK_CHECKPOINTS * billing_config(config).checkpoint_every)


def add_stuck_after(parser: argparse.ArgumentParser) -> None:
    """The `--stuck-after SECONDS` option (default: see `stuck_after_of`)."""
    parser.add_argument(
        "--stuck-after", type=float, metavar="SECONDS",
        help="an open hold with no checkpoint or creation for this long is stuck"
             " (default max(300, 30 x the billing plugin's checkpoint_every))",
    )


def ago(seconds: float) -> str:
    """A duration, short: 42s, 17m, 5.2h."""
    if seconds < 120:
        return f"{max(seconds, 0):.0f}s"
    if seconds < 7200:
        return f"{seconds // 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def hold_json(hold: Hold, beats: dict[str, float], at: float, orphan_after: float, stuck_after: float,
              money: Money) -> dict[str, Any]:
    """An open hold as wire JSON, with its age, last sign of life and its instance's liveness."""
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
        "instance_alive": seen is not None and seen >= at - orphan_after,
        "stuck": is_stuck(hold, at, stuck_after),
    }


def _instance_text(h: dict[str, Any], seen: float | None, at: float) -> str:
    if seen is None:
        return f"{h['instance_id']} (never seen)"
    state = "alive" if h["instance_alive"] else "silent"
    return f"{h['instance_id']} ({state}, seen {ago(at - seen)} ago)"


def _row(hold: Hold, h: dict[str, Any], seen: float | None, at: float) -> list[str]:
    touched = "never" if hold.touched_at is None else f"{ago(at - hold.touched_at)} ago"
    checkpoint = "-" if hold.checkpoint is None else str(hold.checkpoint)
    return [hold.request_id, hold.user, hold.key_id, str(hold.amount), checkpoint, ago(h["age_s"]), touched,
            _instance_text(h, seen, at), "STUCK" if h["stuck"] else ""]


def _list(args: argparse.Namespace, config: Config) -> int:
    orphan_after, stuck_after = config.store.orphan_after, stuck_after_of(args, config)
    money, at = money_of(config), now()

    async def work(store: Store) -> tuple[list[Hold], dict[str, float]]:
        return await store.open_holds(), await store.instances()

    holds, beats = with_store(config, work)
    data = [hold_json(h, beats, at, orphan_after, stuck_after, money) for h in holds]
    rows = [["REQUEST", "USER", "KEY", "AMOUNT", "CHECKPOINT", "AGE", "TOUCHED", "INSTANCE", ""]] if data else []
    rows += [_row(hold, h, beats.get(hold.instance_id), at) for hold, h in zip(holds, data, strict=True)]
    text = table(rows, "no open holds")
    stuck = sum(1 for h in data if h["stuck"])
    if stuck:
        text += f"\n{stuck} stuck hold(s): no sign of life for over {stuck_after:.0f}s (see `weir holds resolve`)"
    emit(args, data, text)
    return 0


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What `weir holds resolve` did: the hold as found, and its resolution (`first` False:
    it was resolved before); `captured` says whether the checkpoint was captured, `asked`
    whether that was asked for."""

    hold: Hold
    resolution: Resolution
    captured: bool
    asked: bool = False


def _check_note(note: str) -> str:
    note = note.strip()
    if not note:
        raise CLIError("--note must say why the hold is resolved by hand")
    if len(note) > MAX_NOTE or any(ord(c) < 32 for c in note):
        raise CLIError(f"--note must be one line of at most {MAX_NOTE} characters")
    return note


def _refuse_live(hold: Hold, beats: dict[str, float], at: float, orphan_after: float, stuck_after: float) -> None:
    """A hold that a live request may still own is left alone (without --force)."""
    seen = beats.get(hold.instance_id)
    if is_stuck(hold, at, stuck_after) or seen is None or seen < at - orphan_after:
        return
    raise CLIError(
        f"hold {hold.request_id} showed a sign of life {ago(at - hold.last_sign_of_life)} ago and its instance"
        f" {hold.instance_id} is alive: a request may still own it. It is stuck only after {stuck_after:.0f}s"
        " without one; pass --force to resolve it now anyway"
    )


async def _resolve_one(
    store: Store, args: argparse.Namespace, note: str, limits: tuple[float, float, float]
) -> _Outcome:
    """Resolve `args.request_id` as asked; `limits` are (now, orphan_after, stuck_after)."""
    hold = await store.get_hold(args.request_id)
    if hold is None:
        raise CLIError(f"unknown hold {args.request_id!r}")
    capture = args.capture_checkpoint and hold.checkpoint is not None
    details = LogDetails(end_reason=HAND_RESOLVED, usage_source="partial" if capture else "none", error=note)
    if hold.state is not HoldState.OPEN:  # a repeat resolution moves nothing and answers the first
        return _Outcome(hold, await store.release(hold.request_id, details), False, args.capture_checkpoint)
    if hold.instance_id == TASK_OWNER:  # its task must end with it (docs/tasks.md)
        raise CLIError(f"hold {hold.request_id} belongs to an async task: use `weir tasks settle {hold.request_id}`")
    if not args.force:
        _refuse_live(hold, await store.instances(), *limits)
    if capture and hold.checkpoint is not None:
        return _Outcome(hold, await store.capture(hold.request_id, hold.checkpoint, details), True, True)
    return _Outcome(hold, await store.release(hold.request_id, details), False, args.capture_checkpoint)


def _resolve_text(out: _Outcome, note: str) -> str:
    hold, res = out.hold, out.resolution
    if not res.first:
        return f"hold {hold.request_id} was already resolved ({res.state.value}, charged {res.charged}): nothing done"
    if out.captured:
        what = f"captured its checkpoint {res.charged} (held {hold.amount}"
        what += f", overage {res.overage} to the wallet)" if res.overage else ")"
    else:
        why = ": it has no checkpoint to capture" if out.asked else ""
        what = f"released all {hold.amount} held{why}"
    return f"resolved hold {hold.request_id} (user {hold.user}) by hand: {what}; note: {note}"


def _resolve(args: argparse.Namespace, config: Config) -> int:
    note = _check_note(args.note)
    limits = (now(), config.store.orphan_after, stuck_after_of(args, config))
    out = with_store(config, lambda store: _resolve_one(store, args, note, limits))
    res = out.resolution
    data = {
        "request_id": out.hold.request_id,
        "user": out.hold.user,
        "resolved_now": res.first,
        "already_resolved": not res.first,
        "state": res.state.value,
        "charged": res.charged,
        "overage": res.overage,
        "end_reason": HAND_RESOLVED if res.first else None,
        "note": note if res.first else None,
    }
    emit(args, data, _resolve_text(out, note))
    return 0


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add `weir holds [list]` and `weir holds resolve`."""
    text = "open holds: list them, resolve a stuck one by hand"
    group = sub.add_parser("holds", parents=[common], help=text, description=text)
    add_stuck_after(group)
    actions = group.add_subparsers(dest="action", metavar="ACTION")
    group.set_defaults(action="list")  # after the subparsers: `weir holds` alone lists
    lister = actions.add_parser(
        "list", parents=[common], help="every open hold with its age, last sign of life and instance"
    )
    add_stuck_after(lister)
    commands["holds list"] = _list
    res = actions.add_parser(
        "resolve", parents=[common],
        help="resolve one open hold by hand: capture its checkpoint (release when it has none) or release it",
    )
    res.add_argument("request_id", metavar="REQUEST_ID")
    how = res.add_mutually_exclusive_group(required=True)
    how.add_argument("--capture-checkpoint", action="store_true", help="charge the last checkpoint, release the rest")
    how.add_argument("--release", action="store_true", help="charge nothing, release the whole hold")
    res.add_argument("--note", required=True, help="why (kept in the log row and on the ledger entry)")
    res.add_argument("--force", action="store_true", help="also when a live request may still own the hold")
    add_stuck_after(res)
    commands["holds resolve"] = _resolve
