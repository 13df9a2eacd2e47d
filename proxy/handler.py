"""The API handler: read and check the body, build the context, run `on_request`, forward.

Every refusal here answers in the endpoint's dialect (through `proxy.respond`) and happens
before any plugin runs (bad input, raised as a `Reject` like a plugin's) or is reported to
the plugins that entered (a `Reject` or a plugin failure).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from proxy.access_log import AccessLog
from proxy.context import Dialect, Endpoint, EndReason, Outcome, ProxyError, RequestContext
from proxy.dialects import Route, client_credential
from proxy.forward import Forwarder, forward
from proxy.forwarded import TrustedProxies, client_address
from proxy.metrics import Metrics
from proxy.models import list_models, one_model
from proxy.multipart import form_fields
from proxy.pipeline import Pipeline, PluginFailed, Run
from proxy.plugin import Reject
from proxy.respond import PLUGIN_FAILED, error_response, internal_message, reject_response, rejected, send_error

log = logging.getLogger(__name__)

_JSON_TYPES = ("application/json", "text/plain", "")
# An enum member's `.value` is a Python-level property call, and looking a member up on its
# class costs about as much: both are done once here, not per request.
_MODELS = Endpoint.MODELS
_GEMINI_STREAM = Endpoint.GEMINI_STREAM
_ENDPOINT_TEXT = {endpoint: endpoint.value for endpoint in Endpoint}


class RequestIds:
    """Unique request ids: 64 random bits drawn once per handler, then a counter.

    Unique across instances sharing a store (the random part) and cheap per request
    (`secrets.token_hex` per request is a getrandom system call that showed in profiles).
    A process's first 2**32 ids sort in the order they were made, so SQLite appends new
    holds at the end of the `holds` B-tree: random ids cost ~45% more SQL per billed
    request (bench/RESULTS.md).
    """

    __slots__ = ("_prefix", "_count")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def next(self) -> str:
        """The next id: 16 hex digits of prefix, then 8 or more of counter."""
        return f"{self._prefix}{next(self._count):08x}"


@dataclass(slots=True)
class Handler:
    """The per-app API handler."""

    pipeline: Pipeline
    forwarder: Forwarder
    metrics: Metrics
    max_body: int
    access: AccessLog | None  # None: `server.access_log: false`
    body_timeout: float = 30.0
    trusted: TrustedProxies | None = None  # None unless `server.trusted_proxies` lists some
    ids: RequestIds = field(default_factory=lambda: RequestIds())
    #: Requests being served now: shutdown's grace waits for them (not only for relays), and
    #: `weir_inflight_requests` reads it when scraped.
    in_flight: int = 0

    def __post_init__(self) -> None:
        self.metrics.inflight.set_function(lambda: self.in_flight)

    async def handle(self, request: web.Request, route: Route, model_in_path: str | None = None) -> web.StreamResponse:
        """Serve one proxied API request."""
        # Always our own id: it is the hold's idempotency key, so a client must never choose it.
        rid = self.ids.next()
        try:
            ctx = await self._context(request, route, rid, model_in_path)
        except Reject as exc:  # input refused before any plugin sees it
            return reject_response(route.dialect, exc, rid)
        self.in_flight += 1
        try:
            resp = await self._run(request, ctx)
        finally:
            self.in_flight -= 1
            self._record(ctx)
        return resp

    async def _run(self, request: web.Request, ctx: RequestContext) -> web.StreamResponse:
        candidates = []
        if ctx.endpoint is not _MODELS:
            candidates = self.forwarder.pool.candidates(ctx.dialect, ctx.model)
            if not candidates:
                ctx.status = 404
                return error_response(
                    ctx.dialect,
                    404,
                    "model_not_found",
                    f"no upstream serves model {ctx.model!r}",
                    {"x-request-id": ctx.request_id},
                )
        run = self.pipeline.start(ctx)
        try:
            await run.request()
        except Reject as exc:
            return await send_error(request, ctx, run, rejected(exc), exc.headers)
        except PluginFailed:
            message = internal_message(ctx.request_id, "a proxy plugin failed; the request was not sent")
            return await send_error(request, ctx, run, ProxyError(EndReason.PLUGIN_FAILED, 500, PLUGIN_FAILED, message))
        try:
            if ctx.endpoint is _MODELS:
                return await self._models(request, ctx, run)
            return await forward(self.forwarder, request, ctx, run, candidates)
        except BaseException as exc:
            _end_abandoned(run, ctx, exc)
            raise

    async def _models(self, request: web.Request, ctx: RequestContext, run: Run) -> web.StreamResponse:
        body = orjson.dumps({"object": "list", "data": await list_models(self.forwarder.pool)})
        try:
            # Plugins see the list as any JSON answer: billing keeps what the caller's key may use.
            body = await run.body(body)
        except PluginFailed:
            message = internal_message(ctx.request_id)
            return await send_error(request, ctx, run, ProxyError(EndReason.PLUGIN_FAILED, 500, PLUGIN_FAILED, message))
        if ctx.model is not None:  # GET /v1/models/{model}: one entry of that list
            found = one_model(body, ctx.model)
            if found is None:
                fail = ProxyError(EndReason.REJECTED, 404, "model_not_found", f"the model {ctx.model!r} does not exist")
                return await send_error(request, ctx, run, fail)
            body = found
        ctx.status = 200
        resp = web.Response(body=body, content_type="application/json", headers={"x-request-id": ctx.request_id})
        await resp.prepare(request)
        await resp.write_eof()
        run.complete(Outcome(EndReason.COMPLETED, 200, 0, len(body)))
        return resp

    async def _context(self, request: web.Request, route: Route, rid: str, model_in_path: str | None) -> RequestContext:
        body = await _read_body(request, self.max_body, self.body_timeout)
        payload: dict[str, Any] | None = None
        form: dict[str, str] | None = None
        model = model_in_path
        if route.json_body and not (route.form_ok and request.content_type == "multipart/form-data"):
            payload = _parse_json(request, body)
            if model is None:
                model = _model_field(payload, route.needs_model and route.default_model is None, route.model_field)
        elif body:
            form = form_fields(request.headers.get("Content-Type", ""), body)
            if form is not None and route.needs_model:
                model = _model_field(form, required=False)
        if model is None:
            model = route.default_model
        stream = route.endpoint is _GEMINI_STREAM
        if payload is not None and "stream" in payload:
            if not isinstance(payload["stream"], bool):
                raise Reject(400, "invalid_request_error", "'stream' must be a boolean")
            stream = stream or payload["stream"]
        client_ip = request.remote or ""
        if self.trusted is not None:  # the hot path when no proxy is trusted: this one check
            client_ip = client_address(client_ip, request.headers.getall("X-Forwarded-For", ()), self.trusted)
        return RequestContext(
            request_id=rid,
            dialect=route.dialect,
            endpoint=route.endpoint,
            method=request.method,
            path=request.path,
            query=request.query,
            headers=request.headers,
            client_ip=client_ip,
            body=body,
            json=payload,
            model=model,
            stream=stream,
            api_key=client_credential(request.headers, request.query),
            form=form,
        )

    def _record(self, ctx: RequestContext) -> None:
        upstream = ctx.upstream.name if ctx.upstream else ""
        seconds = ctx.elapsed_ms / 1000.0
        ttft = ctx.ttft_ms
        status = ctx.status or 0
        outcome = ctx.end_reason or "refused"
        self.metrics.observe(
            _ENDPOINT_TEXT[ctx.endpoint],
            upstream,
            status,
            outcome,
            seconds,
            None if ttft is None else ttft / 1000.0,
            ctx.events_relayed,
        )
        if self.access is not None:
            self.access.add(
                (
                    time.time(),
                    ctx.request_id,
                    ctx.client_ip or "-",
                    ctx.method,
                    ctx.path,
                    ctx.model,
                    upstream,
                    status,
                    ctx.stream,
                    outcome,
                    ctx.events_relayed,
                    seconds * 1000,
                    ttft,
                )
            )


def _end_abandoned(run: Run, ctx: RequestContext, exc: BaseException) -> None:
    """The handler is leaving without a terminal hook: cancelled (aiohttp's shutdown timeout
    ran out), or an unexpected error (a bug, or a plugin that handed the relay something it
    cannot send). Deliver one now, so that the plugins still settle the request (settlement
    runs in a tracked task, which the cancellation does not reach): `shutdown` for a
    cancellation, `plugin_failed` otherwise; billed as a broken stream when something was
    relayed, else as a failure before any answer."""
    if run.finished:
        return
    cancelled = isinstance(exc, asyncio.CancelledError)
    reason = EndReason.SHUTDOWN if cancelled else EndReason.PLUGIN_FAILED
    if not cancelled:
        log.error("request %s failed inside the proxy: %s", ctx.request_id, type(exc).__name__)
    if ctx.first_byte_at is not None:
        error = None if cancelled else f"internal error: {type(exc).__name__}"
        run.complete(Outcome(reason, ctx.status or 0, ctx.events_relayed, error=error))
    elif cancelled:
        run.error(ProxyError(reason, 503, "shutting_down", "the proxy shut down before answering"))
    else:
        run.error(
            ProxyError(reason, 500, "internal_error", f"the request failed inside the proxy: {type(exc).__name__}")
        )


async def _read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise Reject(413, "request_too_large", f"request body exceeds {limit} bytes")
    try:
        if request.content.is_eof():
            # All of it has arrived (a small body comes with its headers): nothing to wait
            # for, so no timer to arm and cancel on every request.
            return await request.read()
        # A client trickling (or withholding) its body must not hold a handler forever.
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Reject(413, "request_too_large", f"request body exceeds {limit} bytes") from None
    except TimeoutError:
        raise Reject(408, "request_timeout", f"the request body did not arrive within {timeout:g} s") from None


def _parse_json(request: web.Request, body: bytes) -> dict[str, Any]:
    ctype = request.content_type if request.headers.get("Content-Type") else ""
    if ctype not in _JSON_TYPES and not ctype.endswith("+json"):
        raise Reject(415, "invalid_request_error", f"expected a JSON body, got Content-Type {ctype!r}")
    if not body:
        raise Reject(400, "invalid_request_error", "the request body is empty; expected a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Reject(400, "invalid_request_error", f"the request body is not valid JSON: {exc.msg}") from None
    if not isinstance(payload, dict):
        raise Reject(400, "invalid_request_error", "the request body must be a JSON object")
    return payload


def _model_field(payload: Mapping[str, Any], required: bool, name: str = "model") -> str | None:
    model = payload.get(name)
    if model is None:
        if required:
            raise Reject(400, "invalid_request_error", f"'{name}' is required")
        return None
    if not isinstance(model, str) or not model.strip() or len(model) > 256:
        raise Reject(400, "invalid_request_error", f"'{name}' must be a non-empty string")
    return model


__all__ = ["Dialect", "Handler", "RequestIds"]
