"""Backend-neutral rules of the account edits (pure functions, no I/O), so that SQLite and
Redis refuse the same changes with the same words.

- A key update names only real statuses, a non-negative quota, and not both a quota and
  `unlimited`, nor both an expiry and `no_expiry`.
- A plan is deleted only when no subscription to it is still running or yet to start.
"""

from __future__ import annotations

from collections.abc import Sequence

from plugins.billing.store.base import KeyChanges, StoreError
from plugins.billing.store.rules import KEY_STATUSES


def check_key_changes(changes: KeyChanges) -> None:
    """StoreError for a key update that cannot be applied whatever the key's state."""
    if changes.status is not None and changes.status not in KEY_STATUSES:
        raise StoreError(f"unknown key status {changes.status!r}")
    if changes.quota is not None and changes.quota < 0:
        raise StoreError("a key quota must be >= 0")
    if changes.quota is not None and changes.unlimited:
        raise StoreError("a key cannot get a quota and be unlimited at once")
    if changes.expires_at is not None and changes.no_expiry:
        raise StoreError("a key cannot get an expiry and lose it at once")


def plan_in_use(name: str, users: Sequence[str]) -> str:
    """Why a plan cannot be deleted: the users still subscribed to it."""
    shown = ", ".join(sorted(users)[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
    return (
        f"plan {name!r} has subscriptions that have not ended ({shown}): cancel them first"
        " (weir sub cancel ID), or wait until they end"
    )


def unlimited_refused(key_id: str, reserved: int) -> str:
    """Why a key cannot drop its quota now."""
    return (
        f"key {key_id} has {reserved} of its quota held by requests in flight: make it unlimited once they have ended"
    )
