"""Users and their wallets: list, add, show, top up, adjust."""

from __future__ import annotations

from typing import Any

from plugins.billing.accounts.errors import conflict, invalid, refused_as_conflict
from plugins.billing.accounts.service import Accounts, user_of
from plugins.billing.accounts.shapes import subscription_json, user_json
from plugins.billing.accounts.values import check_name
from plugins.billing.store.base import Preference

PREFERENCES = tuple(p.value for p in Preference)


def preference_of(value: str) -> Preference:
    """A billing preference by name, or `invalid` listing the choices."""
    try:
        return Preference(value)
    except ValueError:
        raise invalid(f"preference: {value!r} is not one of {', '.join(PREFERENCES)}") from None


async def list_users(acc: Accounts) -> list[dict[str, Any]]:
    """Every user, by name."""
    return [user_json(u, acc.money) for u in await acc.store.list_users()]


async def add_user(
    acc: Accounts, name: str, *, group: str = "default", preference: str = Preference.SUBSCRIPTION_FIRST.value,
    quota: int | None = None,
) -> dict[str, Any]:
    """Create a user, with an optional starting balance (a `credit` entry, "initial balance")."""
    name, group = check_name(name, "user"), check_name(group, "group")
    pref = preference_of(preference)
    if quota is not None and quota < 0:
        raise invalid("the initial balance cannot be negative")
    if await acc.store.get_user(name) is not None:
        raise conflict(f"user {name!r} already exists")
    with refused_as_conflict():
        user = await acc.store.create_user(name, group, pref)
        if quota:
            user = await acc.store.credit(name, quota, "initial balance")
    return user_json(user, acc.money)


async def show_user(acc: Accounts, name: str) -> dict[str, Any]:
    """A user's totals, subscriptions (each with its current period) and key count."""
    user = await user_of(acc, name)
    subs = await acc.store.list_subscriptions(name)
    n_keys = len(await acc.store.list_keys(name))
    at = acc.now()
    data = user_json(user, acc.money)
    data["subscriptions"] = [subscription_json(s, acc.money, at) for s in subs]
    data["keys"] = n_keys
    return data


async def topup(acc: Accounts, name: str, quota: int, note: str | None = None) -> dict[str, Any]:
    """Credit a wallet (a negative amount is an adjustment), with a `credit` ledger entry."""
    if quota == 0:
        raise invalid("a top-up must move a non-zero amount")
    text = note if note is not None else ("top-up" if quota > 0 else "adjustment")
    await user_of(acc, name)
    with refused_as_conflict():
        user = await acc.store.credit(name, quota, text)
    data = user_json(user, acc.money)
    data["credited_quota"] = quota
    data["credited_usd"] = acc.money.usd(quota)
    return data
