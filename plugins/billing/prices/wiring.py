"""Billing's pricing side, as the plugin holds it: the price book, the desk behind the
pricing page and the editor, the channels' health, and their routes. Kept here so that the
plugin wires it in a few lines (`plugins.billing.plugin`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from plugins.billing.config import BillingConfig
from plugins.billing.price_data import LiteLLMPrices
from plugins.billing.prices.book import PriceBook
from plugins.billing.prices.health import ChannelHealth
from plugins.billing.prices.service import PriceDesk
from plugins.billing.store.base import Store, StoreError
from plugins.billing.web.prices_editor import prices_editor_routes
from plugins.billing.web.pricing_api import pricing_api_routes
from plugins.billing.web.pricing_page import pricing_page_routes
from proxy.host import host_of
from proxy.web import api_error, shell_of

TEMPLATES = Path(__file__).resolve().parent.parent / "web" / "pricing_templates"

log = logging.getLogger(__name__)


class Pricing:
    """The pricing side of one billing plugin."""

    def __init__(self, config: BillingConfig, reference: LiteLLMPrices) -> None:
        self.config = config
        self.reference = reference
        #: The price version charged now (read by `on_request`).
        self.book = PriceBook(config.pricing_block(), reference)
        self.health = ChannelHealth()
        self._desk: PriceDesk | None = None

    async def start(self, app: web.Application, store: Store) -> asyncio.Task[None]:
        """Seed or adopt the store's price version, put the pages on the web shell, and start
        the poll (the returned task, which the caller cancels at shutdown). An unreachable
        store leaves proxy.yaml's prices in force until a poll succeeds."""
        host = host_of(app)
        self._add_pages(app)
        try:
            await self.book.start(store)
        except StoreError as exc:
            log.error("billing: cannot read the price versions (charging proxy.yaml's prices): %s", exc)
        self._desk = PriceDesk(self.book, store, host.config, self.reference, self.health)
        return host.tasks.spawn_service(
            self.book.poll_forever(store, self.config.price_poll_every), name="billing-price-versions"
        )

    def _add_pages(self, app: web.Application) -> None:
        try:
            shell = shell_of(app)
        except KeyError:  # a lifespan run without a server (`proxy.testing.host_app`): no pages
            return
        shell.add_templates("pricing", TEMPLATES)
        if self.config.pricing_page:
            shell.add_link("Prices", "/pricing", "What each model costs, per group, with the available channels.")
        shell.add_admin_section(
            "Prices", "/admin/prices", "Edit prices, compare them with reference prices, roll back."
        )

    def desk(self) -> PriceDesk:
        """The desk (a 503 JSON error before startup finished)."""
        if self._desk is None:
            raise api_error(503, "starting", "billing is starting; try again in a moment")
        return self._desk

    def routes(self) -> list[web.RouteDef]:
        """`/pricing`, `/api/pricing`, `/admin/prices` and `/api/admin/prices...`."""
        return [
            *pricing_api_routes(self.desk, self.config.pricing_page),
            *pricing_page_routes(self.desk, self.config.pricing_page),
            *prices_editor_routes(self.desk, self.config.price_poll_every),
        ]
