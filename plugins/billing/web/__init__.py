"""Billing's pages and HTTP API, on the public web shell (`proxy.web`).

  * the user API (`/api/me`, `/api/me/logs`, `/api/me/keys`) with the user's API key;
  * the admin API (`/api/admin/...`) with the admin token (`api_admin`, over `admin_ops`);
  * `/dashboard`, a user's page, signed in with an API key;
  * the console's pages under `/admin` (`console_*`);
  * the price list and editor (`pricing_*`, `prices_editor`; wired by `plugins.billing.prices`).

`routes(web_)` gives the routes (the plugin's `routes()`); `install(app)` registers the
templates and links in the plugin's `lifespan`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from plugins.billing.web import (
    api_admin,
    api_user,
    console_keys,
    console_records,
    console_users,
    dashboard,
)
from plugins.billing.web.common import BillingWeb
from proxy.host import host_of
from proxy.web import AdminCard, shell_of

__all__ = ["BillingWeb", "install", "routes"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: The console's sections billing adds, in the navigation's order.
SECTIONS = (
    ("Users", "/admin/users", "Add users, top up or adjust wallets, manage their keys and subscriptions."),
    ("Keys", "/admin/keys", "Every key: its limits and use; enable, disable or revoke."),
    ("Plans", "/admin/plans", "Subscription plans and who has them."),
    ("Logs", "/admin/logs", "Every billed request: filter by user, key, model, outcome and time; export CSV."),
    ("Upstreams", "/admin/upstreams", "Each upstream's recent errors and latency, and what it served."),
    ("Audit", "/admin/audit", "Check every balance against the ledger; find orphaned and stuck holds."),
)


def routes(web_: BillingWeb) -> list[web.RouteDef]:
    """Every route billing serves besides the proxied APIs."""
    return [
        *api_user.routes(web_),
        *api_admin.routes(web_),
        *dashboard.routes(web_),
        *console_users.routes(web_),
        *console_keys.routes(web_),
        *console_records.routes(web_),
    ]


def _when(ts: float | None) -> str:
    """Epoch seconds as `2030-01-31 12:00` (UTC), for tables."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


async def _cards(request: web.Request, web_: BillingWeb) -> list[AdminCard]:
    """The console home's figures: users, money in wallets, requests, upstream health."""
    users = await web_.store.list_users()
    ups = host_of(request.app).upstreams()
    healthy = sum(1 for u in ups if u.healthy)
    return [
        AdminCard("Users", f"{len(users):,}", "/admin/users"),
        AdminCard(
            "In wallets",
            web_.show_usd(sum(u.balance for u in users)),
            "/admin/users",
            f"{web_.show_usd(sum(u.reserved for u in users))} reserved now",
        ),
        AdminCard(
            "Requests",
            f"{sum(u.request_count for u in users):,}",
            "/admin/logs",
            f"{web_.show_usd(sum(u.used for u in users))} billed in all",
        ),
        AdminCard("Upstreams healthy", f"{healthy} of {len(ups)}", "/admin/upstreams", ok=healthy == len(ups)),
    ]


def install(app: web.Application, web_: BillingWeb) -> None:
    """Register billing's templates (`billing/…`), filters, console sections and home figures,
    and front-page link on the shell (nothing to do on an app without one, such as
    `proxy.testing.host_app`)."""
    try:
        shell = shell_of(app)
    except KeyError:
        return
    shell.add_templates("billing", TEMPLATES)
    shell.env.filters["when"] = _when
    for title, href, description in SECTIONS:
        shell.add_admin_section(title, href, description)

    async def cards(request: web.Request) -> list[AdminCard]:
        return await _cards(request, web_)

    shell.add_admin_cards(cards)
    shell.add_link(
        "Your dashboard",
        "/dashboard",
        "Your balance, what you spent, your requests and keys (sign in with your API key).",
    )
