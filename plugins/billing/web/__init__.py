"""Billing's pages and HTTP API, on the public web shell (`proxy.web`).

  * the user API (`/api/me`, `/api/me/logs`, `/api/me/keys`) with the user's API key;
  * the admin API (`/api/admin/...`) with the admin token (`api_admin`, over `admin_ops`);
  * `/dashboard`, a user's page, signed in with an API key;
  * the console's pages under `/admin` (`console_*`).

`routes(web_)` gives the routes (the plugin's `routes()`); `install(app)` registers the
templates and links in the plugin's `lifespan`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from plugins.billing.web import api_admin, api_user, console_records, dashboard
from plugins.billing.web.common import BillingWeb
from proxy.web import shell_of

__all__ = ["BillingWeb", "install", "routes"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: The console's sections billing adds, in the navigation's order.
SECTIONS = (
    ("Logs", "/admin/logs", "Every billed request: filter by user, key, model, outcome and time; export CSV."),
    ("Upstreams", "/admin/upstreams", "Each upstream's recent errors and latency, and what it served."),
    ("Audit", "/admin/audit", "Check every balance against the ledger; find orphaned and stuck holds."),
)


def routes(web_: BillingWeb) -> list[web.RouteDef]:
    """Every route billing serves besides the proxied APIs."""
    return [*api_user.routes(web_), *api_admin.routes(web_), *dashboard.routes(web_), *console_records.routes(web_)]


def _when(ts: float | None) -> str:
    """Epoch seconds as `2030-01-31 12:00` (UTC), for tables."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def install(app: web.Application) -> None:
    """Register billing's templates (`billing/…`), filters and front-page link on the shell
    (nothing to do on an app without one, such as `proxy.testing.host_app`)."""
    try:
        shell = shell_of(app)
    except KeyError:
        return
    shell.add_templates("billing", TEMPLATES)
    shell.env.filters["when"] = _when
    for title, href, description in SECTIONS:
        shell.add_admin_section(title, href, description)
    shell.add_link("Your dashboard", "/dashboard", "Your balance, what you spent, your requests and keys "
                                                   "(sign in with your API key).")
