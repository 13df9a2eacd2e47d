"""What the console's and the dashboard's pages share: the context every page gets, form
reading, the POST-redirect-GET answer, store failures shown as error pages, and binding a
handler to the billing web state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from plugins.billing.store.base import StoreError, StoreUnavailable
from plugins.billing.web.common import BillingWeb
from proxy.web import error_page, flash

Page = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: A page handler that also takes the billing web state.
WebPage = Callable[[web.Request, BillingWeb], Awaitable[web.StreamResponse]]


def page(title: str, web_: BillingWeb, **context: Any) -> dict[str, Any]:
    """A console page's context: its title, the admin area, and `usd` to show money."""
    return {"title": title, "area": "admin", "usd": web_.show_usd, **context}


def form_dict(form: MultiDictProxy[str], names: Iterable[str]) -> dict[str, str]:
    """The named fields of a form that were filled in (an empty field is "not given")."""
    return {name: form[name].strip() for name in names if form.get(name, "").strip()}


def back_to(request: web.Request, path: str, **message: Any) -> web.Response:
    """Redirect to `path` (303), handing `message` to that page (`flash`)."""
    response = web.Response(status=303, headers={"Location": path})
    if message:
        flash(request, response, **message)
    return response


def guarded(handler: Page) -> Page:
    """A page whose store failures become error pages (503 unreachable, 409 refused)."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreUnavailable:
            raise error_page(request, 503, "Try again shortly", "The account store is unavailable.") from None
        except StoreError as exc:
            raise error_page(request, 409, "Not done", str(exc)) from None

    return run


def binder(web_: BillingWeb) -> Callable[[WebPage], Page]:
    """What turns a `(request, web_)` handler into a guarded route handler bound to `web_`."""

    def bind(handler: WebPage) -> Page:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await handler(request, web_)

        return guarded(handle)

    return bind
