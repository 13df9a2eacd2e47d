"""Send a request upstream with failover, then hand the answer to the relay.

Failover moves to the next candidate on a connect error, a timeout before headers, a 429
or a 5xx, as long as nothing has been relayed and attempts remain. Every path ends with
exactly one terminal hook (`run.complete` or `run.error`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from proxy.context import EndReason, Outcome, ProxyError, RequestContext, UpstreamInfo, UpstreamResponse
from proxy.metrics import Metrics
from proxy.pipeline import PluginFailed, Run
from proxy.relay import ActiveStreams, IdleWatch, pump_stream, read_body, read_chunk
from proxy.respond import CLIENT_GONE, PLUGIN_FAILED, internal_message, send_error, send_whole
from proxy.upstream import Upstream, UpstreamPool, build_body, build_headers, build_url, response_headers

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 1 << 20
MAX_RESPONSE_BODY = 64 << 20
_BINARY_PREFIXES = ("audio/", "image/", "video/", "application/octet-stream")


@dataclass(slots=True)
class Forwarder:
    """Everything forwarding needs from the app."""

    pool: UpstreamPool
    max_attempts: int
    metrics: Metrics
    active: ActiveStreams


async def forward(
    fw: Forwarder, request: web.Request, ctx: RequestContext, run: Run, candidates: list[Upstream]
) -> web.StreamResponse:
    """Try candidates in order; relay the first usable answer. Returns the sent response."""
    assert fw.pool.session is not None
    if ctx.upstream_target is not None:  # a plugin pinned the request (`ctx.send_to`)
        pinned = ctx.upstream_target.upstream
        candidates = [up for up in fw.pool.upstreams if up.name == pinned]
        if not candidates:
            fail = ProxyError(
                EndReason.UPSTREAM_ERROR, 502, "upstream_unavailable", f"upstream {pinned!r} is not configured"
            )
            return await send_error(request, ctx, run, fail)
    attempts = _admitted(candidates, fw.max_attempts)
    failure = ProxyError(EndReason.UPSTREAM_ERROR, 502, "upstream_unavailable", "no upstream could be reached")
    if not attempts:
        failure = _all_cooling(ctx, candidates)
    tried = False
    for i, up in enumerate(attempts):
        if fw.active.shutting_down:
            failure = ProxyError(EndReason.UPSTREAM_ERROR, 503, "shutting_down", "the proxy is shutting down")
            break
        if not up.breaker.acquire():  # half-open, and another request is the probe
            if not tried:
                failure = _all_cooling(ctx, candidates)
            continue
        tried = True
        last = i + 1 == len(attempts)
        model = up.map_model(ctx.model)
        ctx.upstream = UpstreamInfo(up.name, model, i + 1)
        try:
            upstream = await fw.pool.session.request(
                ctx.method,
                build_url(up, ctx, model),
                data=build_body(ctx, model) if ctx.method != "GET" else None,
                headers=build_headers(up, ctx, up.next_key()),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=up.config.connect_timeout, sock_read=up.config.read_timeout
                ),
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            _attempted(fw, up, "timeout", 599)
            failure = ProxyError(EndReason.UPSTREAM_ERROR, 504, "upstream_timeout", f"upstream {up.name} timed out")
            continue
        except (aiohttp.ClientError, OSError) as exc:
            _attempted(fw, up, "unreachable", 599)
            failure = ProxyError(
                EndReason.UPSTREAM_ERROR,
                502,
                "upstream_unavailable",
                f"upstream {up.name} unreachable ({type(exc).__name__})",
            )
            continue
        except (ValueError, TypeError) as exc:
            # aiohttp refuses what a plugin put into the request that the pipeline's checks
            # let through: a plugin failure, reported as such (the client sees no exception text).
            log.error("request %s: the upstream request could not be built: %s", ctx.request_id, exc, exc_info=exc)
            return await send_error(request, ctx, run, _plugin_failed(ctx))
        retryable = upstream.status == 429 or upstream.status >= 500
        _attempted(fw, up, str(upstream.status), upstream.status)
        if retryable and not last:
            upstream.close()
            continue
        if not 200 <= upstream.status < 300:
            return await _relay_error(request, ctx, run, upstream, up.config.read_timeout)
        return await _relay_success(fw, request, ctx, run, upstream, up.config.read_timeout)
    return await send_error(request, ctx, run, failure)


def _plugin_failed(ctx: RequestContext) -> ProxyError:
    """A plugin failed before the response started: a 500 whose message names no exception."""
    return ProxyError(EndReason.PLUGIN_FAILED, 500, PLUGIN_FAILED, internal_message(ctx.request_id))


def _admitted(candidates: list[Upstream], limit: int) -> list[Upstream]:
    """The first `limit` candidates whose circuit breaker lets them be tried."""
    if all(not up.breaker.is_open for up in candidates):  # the usual case: no copy, no clock
        return candidates[:limit]
    return [up for up in candidates if up.breaker.admits()][:limit]


def _all_cooling(ctx: RequestContext, candidates: list[Upstream]) -> ProxyError:
    wait = min(up.breaker.retry_in() for up in candidates)
    return ProxyError(
        EndReason.UPSTREAM_ERROR,
        503,
        "upstream_unavailable",
        f"every upstream serving {ctx.model or 'this request'!r} failed repeatedly and is skipped for a"
        f" cooling period (about {max(1, round(wait))} s)",
    )


def _attempted(fw: Forwarder, up: Upstream, result: str, status: int) -> None:
    """Count an attempt and tell its upstream's breaker (a 5xx or no answer is a failure)."""
    fw.metrics.attempt(up.name, result)
    if status >= 500:
        up.breaker.failure()
    else:
        up.breaker.success()


async def _relay_error(
    request: web.Request, ctx: RequestContext, run: Run, upstream: aiohttp.ClientResponse, idle: float
) -> web.StreamResponse:
    """The final upstream answer was not 2xx: relay it (credential errors are masked)."""
    status = upstream.status
    try:
        async with asyncio.timeout(idle):
            body = await upstream.content.read(MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError, OSError):
        body = b""
    finally:
        upstream.close()
    name = ctx.upstream.name if ctx.upstream else "?"
    if status in (401, 403, 407) or not body:
        # Never show a client what the upstream said about *our* credential.
        code = "upstream_auth_failed" if status in (401, 403, 407) else "upstream_error"
        failure = ProxyError(EndReason.UPSTREAM_ERROR, 502, code, f"upstream {name} answered {status}", status)
        return await send_error(request, ctx, run, failure)
    ctx.status = status
    headers = response_headers(upstream.headers)
    headers["x-request-id"] = ctx.request_id
    resp = web.Response(status=status, body=body, headers=headers)
    await send_whole(request, resp)
    run.error(
        ProxyError(EndReason.UPSTREAM_ERROR, status, "upstream_error", f"upstream {name} answered {status}", status)
    )
    return resp


async def _relay_success(
    fw: Forwarder,
    request: web.Request,
    ctx: RequestContext,
    run: Run,
    upstream: aiohttp.ClientResponse,
    idle: float,
) -> web.StreamResponse:
    name = ctx.upstream.name if ctx.upstream else "?"
    ctype = upstream.headers.get("Content-Type", "")
    streaming = ctype.startswith("text/event-stream")
    try:
        await run.response_headers(UpstreamResponse(upstream.status, upstream.headers, name, streaming))
    except PluginFailed:
        upstream.close()
        return await send_error(request, ctx, run, _plugin_failed(ctx))
    headers = response_headers(upstream.headers)
    headers.update(ctx.response_headers)
    headers["x-request-id"] = ctx.request_id
    ctx.status = upstream.status
    if streaming or ctype.startswith(_BINARY_PREFIXES):
        resp = web.StreamResponse(status=upstream.status, headers=headers)
        try:
            await resp.prepare(request)
        except CLIENT_GONE:
            upstream.close()
            run.error(ProxyError(EndReason.CLIENT_DISCONNECTED, 499, "client_disconnected", "client left"))
            return resp
        if streaming:
            outcome = await pump_stream(request, resp, upstream, ctx, run, fw.active, idle)
        else:
            outcome = await _pump_binary(request, resp, upstream, fw.active, idle)
        run.complete(outcome)
        return resp
    return await _relay_body(request, ctx, run, upstream, headers, idle)


async def _relay_body(
    request: web.Request,
    ctx: RequestContext,
    run: Run,
    upstream: aiohttp.ClientResponse,
    headers: aiohttp.typedefs.LooseHeaders,
    idle: float,
) -> web.StreamResponse:
    try:
        body = await read_body(upstream, MAX_RESPONSE_BODY, idle)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        fail = ProxyError(
            EndReason.UPSTREAM_TRUNCATED,
            502,
            "upstream_error",
            f"upstream body could not be read ({type(exc).__name__})",
            upstream.status,
        )
        return await send_error(request, ctx, run, fail)
    finally:
        upstream.close()
    if not body:
        fail = ProxyError(
            EndReason.UPSTREAM_ERROR,
            502,
            "upstream_empty_response",
            "upstream answered with an empty body",
            upstream.status,
        )
        return await send_error(request, ctx, run, fail)
    try:
        body = await run.body(body)
    except PluginFailed:
        return await send_error(request, ctx, run, _plugin_failed(ctx))
    resp = web.Response(status=upstream.status, body=body, headers=headers)
    gone = not await send_whole(request, resp)
    if not gone and ctx.first_byte_at is None:
        ctx.first_byte_at = ctx.started_at + ctx.elapsed_ms / 1000.0
    reason = EndReason.CLIENT_DISCONNECTED if gone else EndReason.COMPLETED
    run.complete(Outcome(reason, upstream.status, 0, 0 if gone else len(body)))
    return resp


async def _pump_binary(
    request: web.Request,
    resp: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    active: ActiveStreams,
    idle: float,
) -> Outcome:
    """Relay a non-JSON body (audio, images) as it arrives, without body hooks. Shutdown and
    the stall watch end it like a stream."""
    sent = 0
    reason = EndReason.COMPLETED
    watch = IdleWatch(upstream, idle)
    relaying = active.open(upstream, request.transport)
    try:
        while chunk := await read_chunk(upstream.content, watch):
            relaying.writes += 1
            await resp.write(chunk)
            relaying.writes += 1
            if relaying.stopped is not None:
                break
            sent += len(chunk)
        if relaying.stopped is None:
            relaying.writes += 1
            await resp.write_eof()
    except CLIENT_GONE:
        reason = EndReason.CLIENT_DISCONNECTED
    except (TimeoutError, aiohttp.ClientError, OSError):
        reason = EndReason.UPSTREAM_TRUNCATED
    finally:
        active.close(relaying)
        watch.cancel()
        upstream.close()
    return Outcome(relaying.stopped or reason, upstream.status, 0, sent)
