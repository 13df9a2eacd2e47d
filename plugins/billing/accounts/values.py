"""Values shared by the account functions: money, times, lists, names, networks.

Money: quota units are integers; a USD amount is parsed as `Decimal` (never float) and
converted with the billing plugin's `quota_per_usd`, rounded half up once. USD figures are
shown as Decimal strings with 6 places. Every parser raises `AccountError("invalid", …)`
naming the field it read.
"""

from __future__ import annotations

import getpass
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from plugins.billing.accounts.errors import invalid
from plugins.billing.config import billing_config, billing_index
from plugins.billing.pricing import DEFAULT_QUOTA_PER_USD
from proxy.host import Config, ConfigError

_USD_PLACES = Decimal("0.000001")
MAX_NOTE = 500
"""The longest note (top-ups, adjustments, hand resolutions) kept in the ledger."""


@dataclass(frozen=True, slots=True)
class Money:
    """Conversion between USD and quota units at one `quota_per_usd` rate."""

    quota_per_usd: int = DEFAULT_QUOTA_PER_USD

    def quota(self, text: str, field: str = "usd") -> int:
        """Quota units for a USD amount written as text, rounded half up (never via float)."""
        try:
            usd = Decimal(str(text).strip().removeprefix("$"))
        except InvalidOperation:
            raise invalid(f"{field}: {text!r} is not a USD amount (e.g. 1.10)") from None
        if not usd.is_finite():
            raise invalid(f"{field}: {text!r} is not a finite USD amount")
        return int((usd * self.quota_per_usd).to_integral_value(rounding=ROUND_HALF_UP))

    def usd(self, quota: int) -> str:
        """A quota amount in USD, as a Decimal string with 6 places."""
        return str((Decimal(quota) / self.quota_per_usd).quantize(_USD_PLACES, rounding=ROUND_HALF_UP))

    def amount(self, usd: str | None, quota: int | None) -> int | None:
        """The quota given as a USD string or as units (None when neither; both is invalid)."""
        if usd is not None and quota is not None:
            raise invalid("give an amount in usd or in quota units, not both")
        if usd is not None:
            return self.quota(usd)
        return quota


def money_of(config: Config) -> Money:
    """The USD rate of the billing plugin listed in proxy.yaml, else the default 500 000."""
    index = billing_index(config)
    if index is None:
        return Money()
    rate = billing_config(config).quota_per_usd
    if rate <= 0:
        raise ConfigError(f"plugins[{index}].config.quota_per_usd", f"expected a positive integer, got {rate!r}")
    return Money(rate)


def parse_time(text: str, field: str) -> float:
    """Epoch seconds of an ISO 8601 date or date-time; a time without offset is UTC."""
    try:
        moment = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise invalid(f"{field}: {text!r} is not an ISO 8601 date or time (e.g. 2030-01-31T12:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC with a `Z` (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def split_list(text: str | None, field: str) -> tuple[str, ...]:
    """A comma-separated option as a tuple (None and "" are empty); an empty item is invalid."""
    if text is None or not text.strip():
        return ()
    return check_items(tuple(part.strip() for part in text.split(",")), field)


def check_items(items: Sequence[str], field: str) -> tuple[str, ...]:
    """A list of non-empty strings (globs), as a tuple."""
    if any(not isinstance(item, str) or not item.strip() for item in items):
        raise invalid(f"{field}: empty item in {list(items)!r}")
    return tuple(item.strip() for item in items)


def cidrs(items: Sequence[str], field: str = "ips") -> tuple[str, ...]:
    """IP addresses or CIDR networks, normalised (`10.0.0.7` becomes `10.0.0.7/32`)."""
    nets = []
    for item in check_items(items, field):
        try:
            nets.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise invalid(f"{field}: {item!r} is not an IP address or CIDR network") from None
    return tuple(nets)


def check_name(name: str, what: str) -> str:
    """A user, plan or group name: non-empty, no surrounding blanks or control characters."""
    if not isinstance(name, str) or not name or name != name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise invalid(
            f"invalid {what} name {name!r}: it must be non-empty, without control characters or surrounding spaces"
        )
    return name


def check_note(note: str, field: str = "note") -> str:
    """A note kept in the ledger or the log: one non-empty line of at most MAX_NOTE characters."""
    note = str(note).strip()
    if not note:
        raise invalid(f"{field} must say why")
    if len(note) > MAX_NOTE or any(ord(c) < 32 for c in note):
        raise invalid(f"{field} must be one line of at most {MAX_NOTE} characters")
    return note


def os_actor() -> str:
    """Who runs the CLI: the OS user's name, else "cli" (recorded on money it moves)."""
    try:
        return getpass.getuser() or "cli"
    except (OSError, KeyError):
        return "cli"
