"""What billing's API routes and pages share: the plugin's state they read, money shown in
USD, request inputs (times, limits, amounts) validated into JSON errors, and the caller's key.

Inputs come from JSON bodies, query strings and forms alike; each parser raises `BadInput`,
which an API route turns into a 400 JSON error and a page into a message beside the form.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from plugins.billing.accounts.values import Money
from plugins.billing.apikeys import hash_key, matches
from plugins.billing.auth import ip_allowed
from plugins.billing.store.base import ApiKey, Store, StoreUnavailable, User
from proxy.web import api_error, shell_of

#: The most rows one logs request returns (the CSV export pages through more).
MAX_LIMIT = 1000


class BadInput(Exception):
    """A request input that is wrong; the message says which and why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class OnceTokens:
    """Confirmation tokens, each usable once (a double-clicked "Confirm" moves money once).
    In memory, bounded: a token from another worker or an old page is simply unknown."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._open: OrderedDict[str, None] = OrderedDict()

    def new(self) -> str:
        """A fresh token for a confirmation page."""
        token = secrets.token_urlsafe(16)
        self._open[token] = None
        while len(self._open) > self.size:
            self._open.popitem(last=False)
        return token

    def use(self, token: str) -> bool:
        """True the first time `token` is used, False after (or for an unknown token)."""
        return self._open.pop(token, "gone") is None


@dataclass(frozen=True, slots=True)
class BillingWeb:
    """What the routes need from the billing plugin, bound when its routes are built (the
    store exists only once its lifespan has started, hence a getter)."""

    get_store: Callable[[], Store]
    money: Money
    #: The plugin's `checkpoint_every` (an open hold silent for 30 of them is stuck).
    checkpoint_every: float = 10.0
    #: The console's one-time confirmation tokens (money moves once per confirmation page).
    once: OnceTokens = field(default_factory=lambda: OnceTokens())

    @property
    def store(self) -> Store:
        """The ledger store."""
        return self.get_store()

    @property
    def quota_per_usd(self) -> int:
        """Quota units per USD (the plugin's `quota_per_usd`)."""
        return self.money.quota_per_usd

    def usd(self, quota: int) -> str:
        """Quota units as a USD Decimal string with 6 places (the CLI's `--json` shape)."""
        return self.money.usd(quota)

    def show_usd(self, quota: int) -> str:
        """Quota units for people: to the cent from a dollar up (`$1,234.50`), exact to 6
        places below (`$0.000008`, the size of one request's charge)."""
        exact = Decimal(self.usd(quota))
        if abs(exact) >= 1:
            exact = exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        sign = "-" if exact < 0 else ""
        whole, _, frac = str(abs(exact)).partition(".")
        frac = frac.rstrip("0").ljust(2, "0")
        return f"{sign}${int(whole):,}.{frac}"

    def quota_of_usd(self, value: object, field: str) -> int:
        """Quota units for a USD amount given as a number or a decimal string (never via float
        arithmetic), rounded half up."""
        try:
            usd = Decimal(str(value).strip().removeprefix("$")) if isinstance(value, (str, int, float)) else None
        except InvalidOperation:
            usd = None
        if usd is None or not usd.is_finite() or isinstance(value, bool):
            raise BadInput("invalid_amount", f"{field}: {value!r} is not a USD amount (e.g. 1.10)")
        return int((usd * self.quota_per_usd).to_integral_value(rounding=ROUND_HALF_UP))


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with a `Z`."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(value: object, field: str) -> float | None:
    """An ISO 8601 date or time (UTC when no offset) or epoch seconds; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    raise BadInput("invalid_time", f"{field}: {value!r} is not an ISO 8601 time (e.g. 2030-01-31T12:00:00Z)")


def parse_int(value: object, field: str, low: int, high: int, default: int | None = None) -> int | None:
    """An integer within [low, high] from JSON or a query string; `default` when absent."""
    if value is None or value == "":
        return default
    try:
        number = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise BadInput("invalid_number", f"{field}: expected an integer from {low} to {high}, got {value!r}")
    return number


def parse_list(value: object, field: str) -> tuple[str, ...]:
    """A list of non-empty strings, from a JSON array or a comma-separated string."""
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise BadInput("invalid_list", f"{field}: expected a list of names (or a comma-separated string)")
    return tuple(i.strip() for i in items)


def parse_cidrs(value: object, field: str = "ips") -> tuple[str, ...]:
    """Client networks, normalised (`10.0.0.7` becomes `10.0.0.7/32`)."""
    nets = []
    for item in parse_list(value, field):
        try:
            nets.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise BadInput("invalid_network", f"{field}: {item!r} is not an IP address or CIDR network") from None
    return tuple(nets)


def check_name(value: object, what: str) -> str:
    """A user, plan, key or group name: a non-empty string, no control characters, no
    surrounding blanks, at most 100 characters."""
    if (
        not isinstance(value, str)
        or not value
        or value != value.strip()
        or len(value) > 100
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise BadInput(
            "invalid_name",
            f"invalid {what} name {value!r}: 1 to 100 characters, no control characters or surrounding spaces",
        )
    return value


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (a 400 JSON error if it is not one)."""
    try:
        data = await request.json()
    except ValueError:
        raise api_error(400, "invalid_json", "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise api_error(400, "invalid_json", "the body must be a JSON object")
    return data


def unavailable() -> web.HTTPException:
    """The 503 an API route answers when the store cannot be reached."""
    return api_error(503, "store_unavailable", "the account store is unavailable; try again")


def key_problem(key: ApiKey, user: User, address: str, now: float | None = None) -> tuple[int, str, str] | None:
    """Why `key` may not sign in to its user's pages and API from `address` (status, code,
    message), or None: its user is disabled, or it is revoked or disabled, expired, or used
    outside its IP allowlist (the checks a proxied request gets)."""
    if user.disabled:
        return 403, "user_disabled", "the account this API key belongs to is disabled"
    if key.status != "active":
        return 403, "key_disabled", f"the API key is {key.status}"
    if key.expires_at is not None and key.expires_at <= (time.time() if now is None else now):
        return 403, "key_expired", "the API key has expired"
    if key.ips and not ip_allowed(address, key.ips):
        return 403, "ip_not_allowed", "this key may not be used from this address"
    return None


async def find_caller(store: Store, clear: str) -> tuple[ApiKey, User] | None:
    """The key and user for a clear API key (looked up by hash, confirmed in constant time)."""
    digest = hash_key(clear)
    key = await store.find_key(digest)
    user = await store.get_user(key.user) if key is not None else None
    if key is None or user is None or not matches(clear, digest):
        return None
    return key, user


def manages_account(key: ApiKey) -> bool:
    """Whether a key may act for its whole account (see every request, create and revoke
    keys): only a key with no limits of its own. A key with a quota, a model or IP allowlist
    was made to be handed out; it sees only its own requests."""
    return key.unlimited and not key.models and not key.ips


async def caller_of(request: web.Request, web_: BillingWeb) -> tuple[ApiKey, User]:
    """The user API's caller, from `Authorization: Bearer <API key>`, or a JSON 401/403."""
    scheme, _, clear = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not clear.strip():
        raise api_error(401, "invalid_api_key", "no API key: send Authorization: Bearer <key>")
    try:
        found = await find_caller(web_.store, clear.strip())
    except StoreUnavailable:
        raise unavailable() from None
    if found is None:
        raise api_error(401, "invalid_api_key", "the API key is not valid")
    problem = key_problem(found[0], found[1], shell_of(request.app).client_ip(request))
    if problem is not None:
        raise api_error(*problem)
    return found
