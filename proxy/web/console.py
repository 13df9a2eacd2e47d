"""The shell's own pages: the console's sign-in and sign-out and its home page, and
`mount`, which `create_app` calls to put the shell on the app."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from proxy.config import Config
from proxy.host import HOST
from proxy.web.helpers import (
    checked_form,
    end_session,
    error_page,
    local_path,
    render,
    require_admin,
    session_of,
    start_session,
)
from proxy.web.sessions import is_secure
from proxy.web.shell import ADMIN_SESSION_SECONDS, HERE, SHELL, STATIC_URL, WebShell, shell_of

__all__ = ["mount"]


def mount(app: web.Application, config: Config) -> WebShell:
    """Put the web shell on `app`: the Jinja2 environment (aiohttp-jinja2's too), the static
    files under `/static/weir/`, and `/`, `/admin`, `/admin/login`, `/admin/logout`."""
    shell = WebShell(config)
    app[SHELL] = shell
    app[aiohttp_jinja2.APP_KEY] = shell.env
    app.router.add_static(STATIC_URL, HERE / "static")
    app.router.add_get("/", _front)
    app.router.add_get("/admin", _home)
    app.router.add_get("/admin/login", _login_form)
    app.router.add_post("/admin/login", _login)
    app.router.add_post("/admin/logout", _logout)
    return shell


def _disabled(request: web.Request) -> None:
    if not request.app[HOST].admin_enabled:
        raise error_page(request, 404, "Not found", "There is no page here.")


async def _front(request: web.Request) -> web.StreamResponse:
    """Weir's front page: the pages plugins list for everyone, and the console."""
    shell = shell_of(request.app)
    scheme = "https" if is_secure(request, shell.trusted) else "http"
    context = {
        "title": "",
        "links": shell.links,
        "console": request.app[HOST].admin_enabled,
        "request_base": f"{scheme}://{request.host}",
    }
    return render(request, "weir/front.html", context)


async def _home(request: web.Request) -> web.StreamResponse:
    """The console's home: each plugin's figures and sections."""
    require_admin(request)
    cards = await shell_of(request.app).cards(request)
    return render(request, "weir/admin_home.html", {"title": "Console", "area": "admin", "cards": cards})


async def _login_form(request: web.Request) -> web.StreamResponse:
    """The sign-in form (straight to `next` when already signed in)."""
    _disabled(request)
    target = local_path(request.query.get("next"), "/admin")
    if session_of(request, "admin", ADMIN_SESSION_SECONDS) is not None:
        raise web.HTTPSeeOther(target)
    return render(request, "weir/admin_login.html", {"title": "Sign in", "next": target, "problem": ""})


async def _login(request: web.Request) -> web.StreamResponse:
    """Check the token (constant time, limited per address); on success set the session."""
    _disabled(request)
    shell = shell_of(request.app)
    address = shell.client_ip(request)
    wait = shell.limiter.retry_after(address)
    if wait:
        raise error_page(
            request,
            429,
            "Too many attempts",
            f"Too many wrong tokens from your address. Try again in {int(wait) + 1} seconds.",
            {"Retry-After": str(int(wait) + 1)},
        )
    form = await checked_form(request)
    target = local_path(form.get("next"), "/admin")
    if not request.app[HOST].is_admin_token(form.get("token", "").strip()):
        shell.limiter.failed(address)
        context = {"title": "Sign in", "next": target, "problem": "That is not the admin token."}
        return render(request, "weir/admin_login.html", context, status=401)
    shell.limiter.succeeded(address)
    response = web.Response(status=303, headers={"Location": target})
    start_session(request, response, "admin", "admin", ADMIN_SESSION_SECONDS)
    return response


async def _logout(request: web.Request) -> web.StreamResponse:
    """Sign out (a POST with the CSRF token, so another site cannot sign you out)."""
    _disabled(request)
    await checked_form(request)
    response = web.Response(status=303, headers={"Location": "/admin/login"})
    end_session(request, response, "admin")
    return response
