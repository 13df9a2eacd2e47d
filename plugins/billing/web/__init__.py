"""Billing's pages and HTTP API, on the public web shell (`proxy.web`).

  * the user API (`/api/me`, `/api/me/logs`, `/api/me/keys`) with the user's API key;
  * `/dashboard`, a user's page, signed in with an API key.

`routes(web_)` gives the routes (the plugin's `routes()`); `install(app)` registers the
templates and links in the plugin's `lifespan`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from plugins.billing.web import api_user, dashboard
from plugins.billing.web.common import BillingWeb
from proxy.web import shell_of

__all__ = ["BillingWeb", "install", "routes"]

TEMPLATES = Path(__file__).resolve().parent / "templates"


def routes(web_: BillingWeb) -> list[web.RouteDef]:
    """Every route billing serves besides the proxied APIs."""
    return [*api_user.routes(web_), *dashboard.routes(web_)]


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
    shell.add_link("Your dashboard", "/dashboard", "Your balance, what you spent, your requests and keys "
                                                   "(sign in with your API key).")
