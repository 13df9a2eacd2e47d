"""`Accounts`: what every account function works with, and the lookups they share.

An `Accounts` bundles the store, the USD rate, who is acting (recorded on the money they
move: the OS user for the CLI, "admin" for the admin API) and the clock. The functions in
`users`, `keys`, `plans`, `records` and `holds` take one as their first argument and return
the wire JSON that `weir … --json` prints and the admin API answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from plugins.billing.accounts.errors import not_found
from plugins.billing.accounts.values import Money
from plugins.billing.store.base import ApiKey, Plan, Store, User


@dataclass(frozen=True, slots=True)
class Accounts:
    """The store and the context an account function runs in."""

    store: Store
    money: Money = Money()
    actor: str = ""
    clock: Callable[[], float] = time.time

    def now(self) -> float:
        """The wall clock, as the stores see it."""
        return self.clock()


async def user_of(acc: Accounts, name: str) -> User:
    """The user `name`, or `not_found`."""
    user = await acc.store.get_user(name)
    if user is None:
        raise not_found(f"unknown user {name!r}")
    return user


async def key_of(acc: Accounts, key_id: str) -> ApiKey:
    """The key `key_id`, or `not_found`."""
    key = await acc.store.get_key(key_id)
    if key is None:
        raise not_found(f"unknown key {key_id!r}")
    return key


async def plan_of(acc: Accounts, name: str) -> Plan:
    """The plan `name`, or `not_found`."""
    plan = await acc.store.get_plan(name)
    if plan is None:
        raise not_found(f"unknown plan {name!r}")
    return plan
