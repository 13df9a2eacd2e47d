"""The web shell: one per app. A Jinja2 environment any plugin adds templates to, the
signer for sessions and CSRF, the sign-in limiter, and the console's sections.

`proxy.web.console.mount` (called by `create_app`) builds it. Plugins reach it with
`shell_of(app)` (from `lifespan`) or `shell_of(request.app)` (from a handler).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
from aiohttp import web

from proxy.config import Config
from proxy.forwarded import TrustedProxies, client_address
from proxy.web.attempts import SignInLimiter
from proxy.web.sessions import Signer

__all__ = ["AdminCard", "AdminSection", "SHELL", "WebShell", "shell_of"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC_URL = "/static/weir"
#: How long a console sign-in lasts: a working day, then the token is asked again.
ADMIN_SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class AdminSection:
    """A console page a plugin adds to the admin navigation and home page."""

    title: str
    href: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class AdminCard:
    """A figure on the console's home page (e.g. "Users: 12"); `ok` False shows it as a
    problem, True as healthy, None as neutral."""

    title: str
    value: str
    href: str = ""
    note: str = ""
    ok: bool | None = None


#: Computes a plugin's cards for the console home page, per request.
CardSource = Callable[[web.Request], Awaitable[list[AdminCard]]]


def _asset_version() -> str:
    # A content hash in the stylesheet URL, so a browser never keeps an old one after an upgrade.
    digest = hashlib.sha256()
    for path in sorted((HERE / "static").iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


class WebShell:
    """The pages' machinery for one app. See docs/plugins.md, "Pages"."""

    def __init__(self, config: Config) -> None:
        self.signer = Signer.for_token(config.admin.token)
        self.limiter = SignInLimiter()
        self.trusted = TrustedProxies.from_config(config.server.trusted_proxies)
        self.sections: list[AdminSection] = []
        self.links: list[AdminSection] = []
        self._cards: list[CardSource] = []
        self._loaders: dict[str, jinja2.BaseLoader] = {"weir": jinja2.FileSystemLoader(HERE / "templates")}
        self.env = jinja2.Environment(
            loader=jinja2.PrefixLoader(self._loaders),
            # Every variable is HTML-escaped unless a template says otherwise: a user named
            # `<script>` renders as text.
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            enable_async=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals["stylesheet"] = f"{STATIC_URL}/weir.css?v={_asset_version()}"

    def add_templates(self, prefix: str, folder: str | Path) -> None:
        """Serve the templates in `folder` as `prefix/NAME` (one loader per plugin package:
        billing's are `billing/...`); they may extend `weir/base.html`."""
        if prefix in self._loaders:
            raise ValueError(f"templates under {prefix!r} are already registered")
        self._loaders[prefix] = jinja2.FileSystemLoader(Path(folder))

    def add_admin_section(self, title: str, href: str, description: str = "") -> None:
        """List a console page in the admin navigation and on the console's home page."""
        self.sections.append(AdminSection(title, href, description))

    def add_link(self, title: str, href: str, description: str = "") -> None:
        """List a public page (a user's dashboard, a price list) on Weir's front page `/`."""
        self.links.append(AdminSection(title, href, description))

    def add_admin_cards(self, source: CardSource) -> None:
        """Show the figures `source(request)` returns on the console's home page."""
        self._cards.append(source)

    async def cards(self, request: web.Request) -> list[AdminCard]:
        """Every plugin's cards for this request (a failing source shows as a problem card)."""
        found: list[AdminCard] = []
        for source in self._cards:
            try:
                found.extend(await source(request))
            except Exception:
                log.exception("web: a console card source failed")
                found.append(AdminCard("Unavailable", "—", note="a plugin could not compute its figures", ok=False))
        return found

    def client_ip(self, request: web.Request) -> str:
        """The browser's address (through `server.trusted_proxies`), for the sign-in limit."""
        peer = request.remote or ""
        return client_address(peer, request.headers.getall("X-Forwarded-For", ()), self.trusted)


SHELL = web.AppKey("weir.web_shell", WebShell)


def shell_of(app: web.Application) -> WebShell:
    """The web shell of `app`."""
    return app[SHELL]
