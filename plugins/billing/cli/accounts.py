"""What billing's `weir` commands share: running an account function on the configured store,
turning its refusals into CLI errors, and parsing the options every command uses.

The commands themselves (`users`, `keys`, `plans`, `records`, `holds`) are thin: they parse
their arguments, call the account functions of `plugins.billing.accounts` (the same ones
the admin API calls) and print the JSON those return, or a text rendering of it.

Exit codes: 0 success; 1 a user error (unknown user, bad input, a refused change) or a
failed audit; 2 a config error; 3 the store could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from plugins.billing.accounts import AccountError, Accounts, money_of
from plugins.billing.accounts.values import Money, os_actor, parse_time
from plugins.billing.store.base import Store, StoreError, StoreUnavailable
from plugins.billing.store.factory import make_store
from proxy.cli_frame import CLIError
from proxy.host import Config

T = TypeVar("T")

UNAVAILABLE_EXIT = 3
# "expires: 'x' is not …", "note must say why": a message that starts with an option's name.
_FIELD = re.compile(r"^([a-z][a-z_-]*)(?=:| must)")


def flagged(message: str, args: argparse.Namespace) -> str:
    """An account error's message with the field it starts with written as the option
    (`expires: …` becomes `--expires: …`) when the command has that option."""
    match = _FIELD.match(message)
    if match and hasattr(args, match.group(1).replace("-", "_")):
        return "--" + message
    return message


def run(config: Config, args: argparse.Namespace, work: Callable[[Accounts], Awaitable[T]]) -> T:
    """Open the configured store, run `work` on an `Accounts` over it (the OS user acting)
    in a fresh event loop, close the store. Account errors and store refusals exit 1, an
    unreachable store exits 3."""
    money = money_of(config)

    async def go() -> T:
        store = make_store(config)
        try:
            await store.open()
        except StoreError as exc:
            raise CLIError(f"store unavailable: {exc}", UNAVAILABLE_EXIT) from None
        try:
            return await work(Accounts(store, money, os_actor()))
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except AccountError as exc:
        raise CLIError(flagged(exc.message, args)) from None
    except StoreUnavailable as exc:
        raise CLIError(f"store unavailable: {exc}", UNAVAILABLE_EXIT) from None
    except StoreError as exc:
        raise CLIError(str(exc)) from None


def now() -> float:
    """The wall clock, as the stores see it."""
    return time.time()


def with_store(config: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open the configured store, run `work` on the bare store in a fresh event loop, close
    it (for the commands that are not account functions: pricing, tasks). Store refusals
    exit 1, an unreachable store exits 3."""

    async def go() -> T:
        store = make_store(config)
        try:
            await store.open()
        except StoreError as exc:
            raise CLIError(f"store unavailable: {exc}", UNAVAILABLE_EXIT) from None
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StoreUnavailable as exc:
        raise CLIError(f"store unavailable: {exc}", UNAVAILABLE_EXIT) from None
    except StoreError as exc:
        raise CLIError(str(exc)) from None


def checked(args: argparse.Namespace, parse: Callable[[], T]) -> T:
    """`parse()`, with an account error (bad input) turned into a CLI error."""
    try:
        return parse()
    except AccountError as exc:
        raise CLIError(flagged(exc.message, args)) from None


def amount_from(args: argparse.Namespace, money: Money) -> int | None:
    """The quota given by `--usd X` or `--quota N` (None when neither was given)."""
    return checked(args, lambda: money.amount(getattr(args, "usd", None), getattr(args, "quota", None)))


def time_from(args: argparse.Namespace, name: str) -> float | None:
    """The epoch seconds of an ISO 8601 option (None when not given)."""
    text: str | None = getattr(args, name)
    if text is None:
        return None
    return checked(args, lambda: parse_time(text, name))


def table(rows: Sequence[Sequence[str]], empty: str) -> str:
    """Left-aligned columns, or `empty` when there are no rows."""
    if not rows:
        return empty
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def group_parser(sub: Any, name: str, help_text: str) -> Any:
    """A `weir <name> <action>` command group; its actions store their name in `args.action`."""
    parser = sub.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")
