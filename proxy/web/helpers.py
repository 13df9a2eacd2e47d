"""What a plugin's handlers call: render a page, require the admin (page or API), require a
signed-in user of the plugin's own realm, check a form's CSRF token, answer a JSON error.

Every function takes the request; the shell is found from `request.app`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web
from markupsafe import Markup
from multidict import MultiDict, MultiDictProxy

from proxy.context import Dialect
from proxy.dialects import error_body
from proxy.host import HOST
from proxy.web.sessions import CSRF_COOKIE, CSRF_FIELD, Session, is_secure
from proxy.web.shell import ADMIN_SESSION_SECONDS, shell_of

__all__ = [
    "api_error",
    "checked_form",
    "end_session",
    "error_page",
    "flash",
    "local_path",
    "render",
    "require_admin",
    "require_admin_api",
    "require_session",
    "session_of",
    "start_session",
    "take_flash",
]

FLASH_COOKIE = "weir_flash"
#: A flash message waits at most this long for the page that shows it.
FLASH_SECONDS = 300

#: Pages never load anything from elsewhere, run no script, and cannot be framed.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # A page may show a key once: it must not be kept in a cache or the back-forward history.
    "Cache-Control": "no-store",
}
#: The CSRF cookie value this request created (to be set on its response).
_FRESH_CSRF: Any = web.RequestKey("weir.csrf_cookie", str) if hasattr(web, "RequestKey") else "weir.csrf_cookie"
_FLASH_TAKEN: Any = web.RequestKey("weir.flash_taken", bool) if hasattr(web, "RequestKey") else "weir.flash_taken"
_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    405: web.HTTPMethodNotAllowed,
    409: web.HTTPConflict,
    413: web.HTTPRequestEntityTooLarge,
    415: web.HTTPUnsupportedMediaType,
    422: web.HTTPUnprocessableEntity,
    429: web.HTTPTooManyRequests,
    500: web.HTTPInternalServerError,
    503: web.HTTPServiceUnavailable,
}


def _exception(
    status: int, body: bytes | str, content_type: str, headers: Mapping[str, str] | None
) -> web.HTTPException:
    cls = _ERRORS.get(status, web.HTTPBadRequest if status < 500 else web.HTTPInternalServerError)
    extra = dict(headers or {})
    if cls is web.HTTPMethodNotAllowed:
        return web.HTTPMethodNotAllowed(
            "", extra.pop("Allow", "").split(","), headers=extra, body=body, content_type=content_type
        )
    return cls(headers=extra, body=body if isinstance(body, bytes) else body.encode(), content_type=content_type)


def api_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.HTTPException:
    """A JSON error to raise from an API handler: `{"error": {"code", "message", ...}}` in
    the OpenAI shape, with `status`."""
    return _exception(status, error_body(Dialect.OPENAI, status, code, message), "application/json", headers)


def _csrf_cookie(request: web.Request) -> tuple[str, bool]:
    """The browser's CSRF cookie value, and whether it is new (to be set on the response)."""
    fresh = request.get(_FRESH_CSRF)
    if isinstance(fresh, str):
        return fresh, True
    value = request.cookies.get(CSRF_COOKIE)
    if value and 20 <= len(value) <= 100:
        return value, False
    value = secrets.token_urlsafe(24)
    request[_FRESH_CSRF] = value
    return value, True


def _set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int | None) -> None:
    shell = shell_of(request.app)
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=is_secure(request, shell.trusted),
    )


def _finish(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Security headers on every page, and the CSRF cookie if this request made one."""
    response.headers.update(_PAGE_HEADERS)
    fresh = request.get(_FRESH_CSRF)
    if isinstance(fresh, str):
        _set_cookie(request, response, CSRF_COOKIE, fresh, None)
    if request.get(_FLASH_TAKEN):
        response.del_cookie(
            FLASH_COOKIE,
            path="/",
            samesite="Strict",
            httponly=True,
            secure=is_secure(request, shell_of(request.app).trusted),
        )
    return response


def _context(request: web.Request, context: Mapping[str, Any] | None) -> dict[str, Any]:
    shell = shell_of(request.app)
    cookie, _ = _csrf_cookie(request)
    token = shell.signer.csrf_token(cookie)
    admin = session_of(request, "admin", ADMIN_SESSION_SECONDS) if request.app[HOST].admin_enabled else None
    base: dict[str, Any] = {
        "csrf_token": token,
        "csrf_field": Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, token),
        "admin_signed_in": admin is not None,
        "admin_sections": shell.sections,
        "path": request.path,
        "title": "",
        "area": "",
    }
    base.update(context or {})
    return base


def render(
    request: web.Request, template: str, context: Mapping[str, Any] | None = None, *, status: int = 200
) -> web.Response:
    """Render `template` (e.g. `billing/dashboard.html`) with `context`, plus what the base
    layout needs (`csrf_field` for forms, the admin navigation), with the pages' security
    headers (CSP, no-store, no framing)."""
    response = aiohttp_jinja2.render_template(template, request, _context(request, context), status=status)
    _finish(request, response)
    return response


def error_page(
    request: web.Request, status: int, title: str, message: str, headers: Mapping[str, str] | None = None
) -> web.HTTPException:
    """An HTML error page to raise from a page handler."""
    page = render(request, "weir/error.html", {"title": title, "message": message, "status": status}, status=status)
    exc = _exception(status, page.body if isinstance(page.body, bytes) else b"", "text/html", headers)
    for name, value in page.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            exc.headers.add(name, value)
    return exc


def flash(request: web.Request, response: web.StreamResponse, **data: Any) -> None:
    """Hand `data` (small, JSON) to the next page this browser renders, across a redirect
    (POST, then redirect, then GET: a reload never repeats the POST). A signed cookie, kept in
    memory by the browser only and deleted by the page that takes it; at most 5 minutes old."""
    sealed = shell_of(request.app).signer.seal("flash", data)
    _set_cookie(request, response, FLASH_COOKIE, sealed, None)


def take_flash(request: web.Request) -> dict[str, Any] | None:
    """What `flash` handed to this page (the cookie is deleted by `render`), or None."""
    value = request.cookies.get(FLASH_COOKIE)
    if not value:
        return None
    request[_FLASH_TAKEN] = True
    found = shell_of(request.app).signer.unseal("flash", value, FLASH_SECONDS)
    return None if found is None else found[0]


def local_path(target: str | None, default: str) -> str:
    """`target` when it is a path on this site (for `?next=` redirects), else `default`: never
    an open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def session_of(request: web.Request, realm: str, max_age: float) -> Session | None:
    """The browser's signed-in session of `realm` (cookie `weir_<realm>`), or None."""
    value = request.cookies.get(f"weir_{realm}")
    return shell_of(request.app).signer.verify(value, realm, max_age) if value else None


def start_session(request: web.Request, response: web.StreamResponse, realm: str, subject: str, max_age: int) -> None:
    """Sign the browser in to `realm` as `subject` (HttpOnly, SameSite=Strict, Secure over
    TLS), and give it a fresh CSRF cookie (no token from before the sign-in stays valid)."""
    shell = shell_of(request.app)
    _set_cookie(request, response, f"weir_{realm}", shell.signer.issue(realm, subject), max_age)
    request[_FRESH_CSRF] = secrets.token_urlsafe(24)
    _set_cookie(request, response, CSRF_COOKIE, request[_FRESH_CSRF], None)


def end_session(request: web.Request, response: web.StreamResponse, realm: str) -> None:
    """Sign the browser out of `realm`."""
    response.del_cookie(
        f"weir_{realm}",
        path="/",
        samesite="Strict",
        httponly=True,
        secure=is_secure(request, shell_of(request.app).trusted),
    )


def _to_sign_in(login: str, request: web.Request) -> web.HTTPException:
    return web.HTTPSeeOther(f"{login}?next={quote(request.path_qs, safe='/')}")


def require_session(request: web.Request, realm: str, login: str, max_age: float) -> Session:
    """The browser's session of `realm`; without one, a redirect to `login?next=<this page>`."""
    found = session_of(request, realm, max_age)
    if found is None:
        raise _to_sign_in(login, request)
    return found


def require_admin(request: web.Request) -> Session:
    """For a console page: the admin's session. Without `admin.token` the page answers 404;
    without a session, a redirect to the sign-in page."""
    if not request.app[HOST].admin_enabled:
        raise error_page(request, 404, "Not found", "There is no page here.")
    return require_session(request, "admin", "/admin/login", ADMIN_SESSION_SECONDS)


def require_admin_api(request: web.Request) -> None:
    """For an admin API route: `Authorization: Bearer <admin.token>` or a JSON error (404
    without `admin.token`, 401 without or with a wrong token, 429 after too many wrong ones
    from the caller's address). A user's API key is a wrong token."""
    host = request.app[HOST]
    if not host.admin_enabled:
        raise api_error(404, "not_found", "no such route")
    shell = shell_of(request.app)
    address = shell.client_ip(request)
    wait = shell.limiter.retry_after(address)
    if wait:
        raise api_error(
            429,
            "too_many_attempts",
            "too many wrong admin tokens from this address; try later",
            {"Retry-After": str(int(wait) + 1)},
        )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise api_error(401, "admin_token_required", "send the admin token: Authorization: Bearer <admin.token>")
    if not host.is_admin_token(token.strip()):
        shell.limiter.failed(address)
        raise api_error(401, "invalid_admin_token", "the admin token is not valid")


async def checked_form(request: web.Request) -> MultiDictProxy[str]:
    """The POSTed form, once its CSRF token is checked (constant time); a 403 page if not."""
    form = await request.post()
    presented = form.get(CSRF_FIELD)
    if not shell_of(request.app).signer.csrf_ok(request.cookies.get(CSRF_COOKIE), presented):
        raise error_page(
            request,
            403,
            "Form expired",
            "This form's security token is missing or out of date. Go back, reload the page and try again.",
        )
    return MultiDictProxy(MultiDict((k, v) for k, v in form.items() if isinstance(v, str)))
