"""Account commands of `weir`: users, keys, plans, subscriptions, logs and audit.

What the account commands share: money conversion, time parsing, list and CIDR
validation, and opening the configured store around one async function. The commands
themselves live beside it (`users`, `keys`, `plans`, `records`, `holds`); the package's
`register` adds them to the `weir` parser.

Money: quota units are integers; `--usd` amounts are parsed as `Decimal` (never float) and
converted with the billing plugin's `quota_per_usd`, rounded half up. USD figures are shown
as Decimal strings with 6 places.

Exit codes: 0 success; 1 a user error (unknown user, bad input) or a failed audit; 2 a
config error; 3 the store could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, TypeVar

from proxy.cli_frame import CLIError
from plugins.billing.config import billing_config, billing_index
from plugins.billing.pricing import DEFAULT_QUOTA_PER_USD
from proxy.host import Config, ConfigError
from plugins.billing.store.base import Store, StoreError, StoreUnavailable
from plugins.billing.store.factory import make_store

T = TypeVar("T")

UNAVAILABLE_EXIT = 3
_USD_PLACES = Decimal("0.000001")
@dataclass(frozen=True, slots=True)
class Money:
    """Conversion between USD and quota units at one `quota_per_usd` rate."""

    quota_per_usd: int = DEFAULT_QUOTA_PER_USD

    def quota(self, text: str, flag: str = "--usd") -> int:
        """Quota units for a USD amount written as text, rounded half up (never via float)."""
        try:
            usd = Decimal(text.strip().removeprefix("$"))
        except InvalidOperation:
            raise CLIError(f"{flag}: {text!r} is not a USD amount (e.g. 1.10)") from None
        if not usd.is_finite():
            raise CLIError(f"{flag}: {text!r} is not a finite USD amount")
        return int((usd * self.quota_per_usd).to_integral_value(rounding=ROUND_HALF_UP))

    def usd(self, quota: int) -> str:
        """A quota amount in USD, as a Decimal string with 6 places."""
        return str((Decimal(quota) / self.quota_per_usd).quantize(_USD_PLACES, rounding=ROUND_HALF_UP))


def money_of(config: Config) -> Money:
    """The USD rate of the billing plugin listed in proxy.yaml, else the default 500 000."""
    index = billing_index(config)
    if index is None:
        return Money()
    rate = billing_config(config).quota_per_usd
    if rate <= 0:
        raise ConfigError(f"plugins[{index}].config.quota_per_usd", f"expected a positive integer, got {rate!r}")
    return Money(rate)


def amount_from(args: argparse.Namespace, money: Money) -> int | None:
    """The quota given by `--usd X` or `--quota N` (None when neither was given)."""
    if getattr(args, "usd", None) is not None:
        return money.quota(args.usd)
    quota: int | None = getattr(args, "quota", None)
    return quota


def parse_time(text: str, flag: str) -> float:
    """Epoch seconds of an ISO 8601 date or date-time; a time without offset is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CLIError(f"{flag}: {text!r} is not an ISO 8601 date or time (e.g. 2030-01-31T12:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC with a `Z` (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def split_list(text: str | None, flag: str) -> tuple[str, ...]:
    """A comma-separated option as a tuple; an empty item is an error."""
    if text is None:
        return ()
    items = tuple(part.strip() for part in text.split(","))
    if any(not item for item in items):
        raise CLIError(f"{flag}: empty item in {text!r}")
    return items


def parse_cidrs(text: str | None) -> tuple[str, ...]:
    """`--ips` as normalised networks (`10.0.0.7` becomes `10.0.0.7/32`)."""
    nets = []
    for item in split_list(text, "--ips"):
        try:
            nets.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise CLIError(f"--ips: {item!r} is not an IP address or CIDR network") from None
    return tuple(nets)


def check_name(name: str, what: str) -> str:
    """A user, plan or group name: non-empty, no surrounding blanks or control characters."""
    if not name or name != name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise CLIError(f"invalid {what} name {name!r}: it must be non-empty, without control characters or surrounding spaces")
    return name


def now() -> float:
    """The wall clock, as the stores see it."""
    return time.time()


def with_store(config: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open the configured store, run `work` on it in a fresh event loop, close the store.

    Store errors become `CLIError`s: bad input exits 1, an unreachable store exits 3.
    """

    async def run() -> T:
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
        return asyncio.run(run())
    except StoreUnavailable as exc:
        raise CLIError(f"store unavailable: {exc}", UNAVAILABLE_EXIT) from None
    except StoreError as exc:
        raise CLIError(str(exc)) from None


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

