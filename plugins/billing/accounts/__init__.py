"""Billing's account functions: the one implementation behind `weir user|key|plan|sub|logs|
audit|holds` and the admin HTTP API ("the CLI and the API are two faces of the same
functions").

Each function is a plain coroutine over the `Store`: it takes an `Accounts` (the store, the
USD rate, who acts, the clock) and typed arguments, checks them, does the work, and returns
the wire JSON (dicts and lists) that `weir … --json` prints and the API answers. Every
refusal is one `AccountError(code, message)` with `code` `invalid`, `not_found` or
`conflict` (`status` gives 400, 404 or 409); a store that cannot be reached raises
`StoreUnavailable` (the CLI exits 3, the API answers 503).

Modules: `users`, `keys`, `plans` (plans and subscriptions), `records` (logs and audit),
`holds`; `values` (money, times, lists, names), `shapes` (the JSON), `errors`, `service`
(`Accounts` and shared lookups).
"""

from __future__ import annotations

from plugins.billing.accounts.errors import CONFLICT, INVALID, NOT_FOUND, AccountError
from plugins.billing.accounts.service import Accounts
from plugins.billing.accounts.values import Money, money_of

__all__ = ["CONFLICT", "INVALID", "NOT_FOUND", "AccountError", "Accounts", "Money", "money_of"]
