"""Users and their wallets: list, add, show, change, top up, adjust, and the ledger."""

from __future__ import annotations

from typing import Any

from plugins.billing.accounts.errors import conflict, invalid, refused_as_conflict
from plugins.billing.accounts.service import Accounts, user_of
from plugins.billing.accounts.shapes import entry_json, subscription_json, user_json
from plugins.billing.accounts.values import check_name, check_note
from plugins.billing.store.base import Preference

PREFERENCES = tuple(p.value for p in Preference)
MAX_ENTRIES = 10_000
"""The most ledger entries one call returns."""


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
    acc: Accounts,
    name: str,
    *,
    group: str = "default",
    preference: str = Preference.SUBSCRIPTION_FIRST.value,
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
    """Credit a wallet with a positive amount (a `credit` entry recording the note and who).
    A debit is refused: it is an `adjust`, which must say why."""
    if quota == 0:
        raise invalid("a top-up must move a non-zero amount")
    if quota < 0:
        raise invalid(
            f"a top-up cannot be negative: to take quota away, say why with"
            f" weir user adjust {name} --quota {quota} --note '...'"
        )
    text = "top-up" if note is None or not note.strip() else check_note(note)
    return await _move(acc, name, quota, text)


async def adjust(acc: Accounts, name: str, quota: int, note: str) -> dict[str, Any]:
    """Take quota away from a wallet (a negative `credit` entry) with the reason and who;
    to add funds, top up. The wallet may go below zero: that is what was asked."""
    if quota >= 0:
        raise invalid("an adjustment takes quota away: give a negative amount (to add funds, top up)")
    return await _move(acc, name, quota, check_note(note))


async def _move(acc: Accounts, name: str, quota: int, note: str) -> dict[str, Any]:
    await user_of(acc, name)
    with refused_as_conflict():
        user = await acc.store.credit(name, quota, note, actor=acc.actor)
    data = user_json(user, acc.money)
    data["credited_quota"] = quota
    data["credited_usd"] = acc.money.usd(quota)
    data["note"] = note
    data["actor"] = acc.actor
    return data


async def set_user(
    acc: Accounts,
    name: str,
    *,
    group: str | None = None,
    preference: str | None = None,
    disabled: bool | None = None,
) -> dict[str, Any]:
    """Change a user's group, billing preference or disabled flag (None keeps each). A
    disabled user's keys are refused (403 `user_disabled`) within the billing plugin's
    `auth_cache_ttl` seconds; their money stays as it is."""
    group = None if group is None else check_name(group, "group")
    pref = None if preference is None else preference_of(preference)
    if group is None and pref is None and disabled is None:
        raise invalid("nothing to change: give a group, a preference, or disable/enable")
    await user_of(acc, name)
    with refused_as_conflict():
        user = await acc.store.set_user(name, group=group, preference=pref, disabled=disabled)
    return user_json(user, acc.money)


async def ledger(
    acc: Accounts, name: str, *, limit: int = 50, before: int | None = None, everything: bool = False
) -> dict[str, Any]:
    """A user's ledger, oldest first: by default the wallet entries that moved its balance
    (top-ups, adjustments, charges, overages), each with the balance right after it; with
    `everything`, every entry of the user's accounts (holds, releases, keys, subscriptions).
    The newest `limit` entries below id `before`; `next_before` pages on (null: no more)."""
    if not 1 <= limit <= MAX_ENTRIES:
        raise invalid(f"limit must be between 1 and {MAX_ENTRIES}")
    user = await user_of(acc, name)
    page = await acc.store.ledger_entries(name, limit=limit, before_id=before, everything=everything)
    wallet, balance = f"wallet:{name}", page.balance
    entries = []
    for entry in page.entries:  # newest first: the balance after each, walking back
        mine = entry.account == wallet
        entries.append(entry_json(entry, acc.money, balance if mine else None))
        balance -= entry.d_balance if mine else 0
    entries.reverse()
    return {
        "user": name,
        "balance_quota": user.balance,
        "balance_usd": acc.money.usd(user.balance),
        "entries": entries,
        "next_before": page.entries[-1].id if len(page.entries) == limit else None,
    }
