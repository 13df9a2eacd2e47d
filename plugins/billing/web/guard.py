"""The admin check and JSON errors of billing's price API.

Stand-ins with the contract of the web shell's `proxy.web.require_admin_api` and
`api_error` (docs/design.md: Bearer `admin.token`, 404 without one, errors as
`{"error": {"code", "message"}}`), used until the shell is on this branch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

from proxy.host import host_of

__all__ = ["api_error", "require_admin_api"]


_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 404: web.HTTPNotFound, 409: web.HTTPConflict,
    413: web.HTTPRequestEntityTooLarge, 422: web.HTTPUnprocessableEntity, 503: web.HTTPServiceUnavailable,
}


def api_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.HTTPException:
    """A JSON error (OpenAI shape) to raise from a handler."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    cls = _ERRORS.get(status, web.HTTPBadRequest)
    if cls is web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(0, 0, text=body, content_type="application/json", headers=headers)
    return cls(text=body, content_type="application/json", headers=headers)


def require_admin_api(request: web.Request) -> None:
    """`Authorization: Bearer <admin.token>`, or a JSON error: 404 without `admin.token`,
    401 without or with a wrong token (compared in constant time by the host)."""
    host = host_of(request.app)
    if not host.admin_enabled:
        raise api_error(404, "not_found", "no such route")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise api_error(401, "admin_token_required", "send the admin token: Authorization: Bearer <admin.token>")
    if not host.is_admin_token(token.strip()):
        raise api_error(401, "invalid_admin_token", "the admin token is not valid")
