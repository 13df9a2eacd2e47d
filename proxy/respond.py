"""How the core answers a client when something went wrong: one module, one error value.

Every error answer the core writes goes through here, in the dialect of the endpoint
(the shapes are in `proxy.dialects`):
  * before the response started: a JSON error body with its status (`error_response`,
    `send_error`);
  * after a stream's headers went out: an error event in the dialect, so that the official
    SDKs raise instead of ending quietly (`stream_error`);
  * a path or a method Weir does not serve: a JSON 404 or 405 in the dialect the path
    implies, OpenAI's by default (`unmatched`, the app's catch-all route).

The one error value is `ProxyError` (reason, status, code, message, upstream status): what
the client is told, and what `on_error` receives. Plugins raise `Reject` to refuse a
request; the core raises it too for input it refuses before any plugin runs.

A client never sees an exception's text: a failure inside the proxy is answered with a
generic sentence and the request id (`internal_message`); the log line under that id has
the plugin, the hook and the traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from proxy.context import Dialect, EndReason, ProxyError, RequestContext
from proxy.dialects import error_body, error_event
from proxy.plugin import Reject

if TYPE_CHECKING:
    from proxy.pipeline import Run

__all__ = [
    "CLIENT_GONE",
    "error_response",
    "internal_message",
    "path_dialect",
    "reject_response",
    "rejected",
    "send_error",
    "send_whole",
    "stream_error",
    "unmatched",
]

#: Errors writing to a client that went away.
CLIENT_GONE = (ConnectionError, aiohttp.ClientConnectionResetError)

#: The code of every answer that a plugin's failure caused.
PLUGIN_FAILED = "plugin_failed"


def internal_message(request_id: str, what: str = "a proxy plugin failed") -> str:
    """What a client is told about a failure inside the proxy: no exception text, only a
    sentence and the request id that the proxy's log lines carry."""
    return f"{what}; the proxy's log has the details under request id {request_id}"


def error_response(
    dialect: Dialect, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A complete JSON error response in `dialect`'s shape."""
    return web.Response(
        status=status,
        body=error_body(dialect, status, code, message),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def rejected(exc: Reject) -> ProxyError:
    """The error value of a `Reject` (what the plugins that entered hear in `on_error`)."""
    return ProxyError(EndReason.REJECTED, exc.status, exc.code, exc.message)


def reject_response(dialect: Dialect, exc: Reject, request_id: str) -> web.Response:
    """The answer to a refused request: the `Reject`'s status, code, message and headers."""
    return error_response(dialect, exc.status, exc.code, exc.message, {**exc.headers, "x-request-id": request_id})


async def send_whole(request: web.Request, resp: web.Response) -> bool:
    """Send a complete response now (so terminal hooks run after the client has it);
    False when the client had already left."""
    try:
        await resp.prepare(request)
        await resp.write_eof()
    except CLIENT_GONE:
        return False
    return True


async def send_error(
    request: web.Request, ctx: RequestContext, run: Run, error: ProxyError, headers: Mapping[str, str] | None = None
) -> web.StreamResponse:
    """Answer with `error` in the dialect's shape before any byte was sent, then deliver
    `on_error` to the plugins that entered."""
    ctx.status = error.status
    resp = error_response(
        ctx.dialect, error.status, error.code, error.message, {**(headers or {}), "x-request-id": ctx.request_id}
    )
    await send_whole(request, resp)
    run.error(error)
    return resp


async def stream_error(resp: web.StreamResponse, ctx: RequestContext, code: str, message: str) -> bool:
    """End a stream whose headers went out with an error event in the dialect (a 500 in
    its body); False when the client had left. The caller ends the response after it."""
    try:
        await resp.write(error_event(ctx.endpoint, ctx.dialect, 500, code, message))
    except CLIENT_GONE:
        return False
    return True


def path_dialect(path: str) -> Dialect:
    """The dialect a path implies, for paths no route serves: Gemini under `/v1beta/`,
    Anthropic under `/v1/messages`, OpenAI otherwise."""
    if path.startswith("/v1beta/"):
        return Dialect.GEMINI
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return Dialect.ANTHROPIC
    return Dialect.OPENAI


async def unmatched(request: web.Request) -> web.Response:
    """The catch-all route: 405 (with `Allow`) when another route serves this path with
    other methods, else 404; both as JSON in the dialect the path implies.

    Only unmatched requests get here, so looking through the routes costs nothing on the
    paths Weir serves."""
    own = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not own:
            _, methods = await resource.resolve(request)
            allowed |= methods
    path = request.path if len(request.path) <= 200 else request.path[:200] + "..."
    dialect = path_dialect(request.path)
    if allowed:
        allow = ", ".join(sorted(allowed))
        message = f"method {request.method} is not allowed on {path} (allowed: {allow})"
        return error_response(dialect, 405, "method_not_allowed", message, {"Allow": allow})
    return error_response(dialect, 404, "not_found", f"no such path: {path}")
