"""API keys: create (the clear key is returned once), show, list, edit, and status changes.

The clear key exists only inside `create_key`: it is generated, hashed, returned once and
dropped. Nothing else derived from it (not the hash, not a hint) is ever returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plugins.billing.accounts.errors import invalid, refused_as_conflict
from plugins.billing.accounts.service import Accounts, key_of, user_of
from plugins.billing.accounts.shapes import key_json
from plugins.billing.accounts.values import check_items, check_name, cidrs
from plugins.billing.apikeys import generate_key
from plugins.billing.store.base import KeyChanges

STATUS_OF_ACTION = {"revoke": "revoked", "disable": "disabled", "enable": "active"}
"""The status each of `weir key revoke | disable | enable` sets."""


def check_expiry(acc: Accounts, expires_at: float | None) -> float | None:
    """An expiry, which must lie in the future."""
    if expires_at is not None and expires_at <= acc.now():
        raise invalid("expires: the time is in the past")
    return expires_at


async def create_key(
    acc: Accounts,
    user: str,
    *,
    name: str = "",
    quota: int | None = None,
    models: Sequence[str] = (),
    ips: Sequence[str] = (),
    group: str | None = None,
    expires_at: float | None = None,
) -> dict[str, Any]:
    """Create a key for `user`: unlimited when `quota` is None. The answer carries the clear
    key under "key": the only time it is ever shown."""
    if quota is not None and quota < 0:
        raise invalid("a key quota cannot be negative")
    options: dict[str, Any] = {
        "name": name or "",
        "quota": quota,
        "models": check_items(models, "models"),
        "ips": cidrs(ips),
        "group": None if group is None else check_name(group, "group"),
        "expires_at": check_expiry(acc, expires_at),
    }
    await user_of(acc, user)
    clear, digest, _hint = generate_key()  # no hint is stored: not even a fragment of the key is kept
    with refused_as_conflict():
        key = await acc.store.create_key(user, digest, **options)
    data = key_json(key, acc.money, acc.now())
    return {"id": data["id"], "key": clear, **data}


async def show_key(acc: Accounts, key_id: str) -> dict[str, Any]:
    """One key."""
    return key_json(await key_of(acc, key_id), acc.money, acc.now())


async def list_keys(acc: Accounts, user: str) -> list[dict[str, Any]]:
    """A user's keys, oldest first."""
    await user_of(acc, user)
    at = acc.now()
    return [key_json(k, acc.money, at) for k in await acc.store.list_keys(user)]


async def set_key_status(acc: Accounts, key_id: str, status: str) -> dict[str, Any]:
    """Set a key "active", "disabled" or "revoked" (final: a revoked key stays revoked)."""
    if status not in STATUS_OF_ACTION.values():
        raise invalid(f"status: {status!r} is not one of active, disabled, revoked")
    await key_of(acc, key_id)
    with refused_as_conflict():
        key = await acc.store.set_key_status(key_id, status)
    return key_json(key, acc.money, acc.now())


async def update_key(
    acc: Accounts,
    key_id: str,
    *,
    name: str | None = None,
    quota: int | None = None,
    unlimited: bool = False,
    models: Sequence[str] | None = None,
    ips: Sequence[str] | None = None,
    group: str | None = None,
    expires_at: float | None = None,
    no_expiry: bool = False,
    enabled: bool | None = None,
) -> dict[str, Any]:
    """Change a key; None (and False) leave a field as it is.

    `quota` sets the key's remaining quota to that many units (a `credit` entry of the
    difference on the key's ledger account, recording who); `unlimited` drops the key's own
    quota (refused while requests in flight hold some of it). `models` and `ips` replace the
    allowlists (empty: any), `group` "" removes the key's group, `no_expiry` its expiry;
    `enabled` True or False enables or disables it. A revoked key cannot change."""
    if quota is not None and unlimited:
        raise invalid("give a quota or unlimited, not both")
    if quota is not None and quota < 0:
        raise invalid("a key quota cannot be negative")
    if expires_at is not None and no_expiry:
        raise invalid("give an expiry or none, not both")
    changes = KeyChanges(
        name=name,
        status=None if enabled is None else ("active" if enabled else "disabled"),
        quota=quota,
        unlimited=unlimited,
        models=None if models is None else check_items(models, "models"),
        ips=None if ips is None else cidrs(ips),
        group=None if group is None else group and check_name(group, "group"),
        expires_at=check_expiry(acc, expires_at),
        no_expiry=no_expiry,
    )
    if changes == KeyChanges():
        raise invalid(
            "nothing to change: give at least one of name, quota, unlimited, models, ips, group,"
            " expires, enable or disable"
        )
    await key_of(acc, key_id)
    with refused_as_conflict():
        key = await acc.store.update_key(key_id, changes, actor=acc.actor)
    return key_json(key, acc.money, acc.now())
