"""A built-in mock LLM upstream: a real aiohttp server speaking OpenAI, Anthropic and Gemini.

Answers are deterministic (see `proxy.mock.text` for the counting rules) and the wire bytes
are the real formats (`proxy.mock.wire`). `MockBehaviour` injects faults: error statuses,
stalls, pacing, truncation, resets, error events, odd usage, gzip, empty bodies, a required
key. Fault counts (`truncate_after`, `reset_after`, `error_event_after`) count SSE frames of
any kind from the first one, so `truncate_after=0` ends a stream before its first event.
A `Script` (`MockUpstream.script`, or a request's `x-mock-script` header) sets the reply,
events, usage, error, faults and delays of the next request(s) only
(`proxy.mock.behaviour`).

Used by `upstreams: [{name: mock, type: mock}]`, by the `fake_upstream` test fixture and by
the benchmark. Run by hand with `python -m proxy.mock.upstream --port 9000 [--pace 0.02]`
(README "Running the mock upstream").
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from proxy.context import Dialect
from proxy.mock import endpoints as ep
from proxy.mock.behaviour import SCRIPT_HEADER, MockBehaviour, Script, ScriptError, Usage
from proxy.mock.tasks import TaskBook
from proxy.mock.text import error_body, request_id
from proxy.mock.wire import JSON, Reply, Stream, scripted_stream

__all__ = ["MockBehaviour", "MockUpstream", "ReceivedRequest", "Script", "Usage", "build_mock_app", "main"]


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the mock saw it. Header names are lower-cased."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    key: str | None
    request_id: str = field(default="")


class MockUpstream:
    """A mock upstream server on loopback; `requests` records the requests received.

    Only the newest `keep_requests` are kept (None: all), so a long benchmark run does not
    grow without bound.
    """

    def __init__(self, behaviour: MockBehaviour | None = None, *, keep_requests: int | None = 10_000) -> None:
        self.behaviour = behaviour if behaviour is not None else MockBehaviour()
        #: The async task APIs' tasks and knobs (`proxy.mock.tasks`).
        self.tasks = TaskBook()
        self.requests: list[ReceivedRequest] = []
        self.keep_requests = keep_requests
        self._scripts: deque[list[Any]] = deque()  # [script, uses left], oldest first
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    def script(self, script: Script | None = None, /, **fields: Any) -> Script:
        """Queue what to answer to the next request(s): a `Script`, or its fields as keywords.

        `fake_upstream.script(reply=["Write to bob@exa", "mple.com"])` streams those two
        pieces to the next request; `script(status=429, headers={"retry-after": "1"},
        times=2)` refuses the next two. Scripts are used in the order queued, each for
        `times` requests (whatever their path), laid over `behaviour`; with none left, the
        standing `behaviour` answers.
        """
        chosen = script if script is not None else Script.of(**fields)
        if script is not None and fields:
            raise TypeError("pass a Script or its fields, not both")
        self._scripts.append([chosen, chosen.times])
        return chosen

    @property
    def pending_scripts(self) -> int:
        """How many scripted requests are still to come."""
        return sum(left for _, left in self._scripts)

    def next_script(self) -> Script | None:
        """Take one use of the oldest queued script, or None when none is queued."""
        if not self._scripts:
            return None
        head = self._scripts[0]
        head[1] -= 1
        if head[1] <= 0:
            self._scripts.popleft()
        chosen: Script = head[0]
        return chosen

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0 picks a free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("mock upstream already started")
        # A short shutdown timeout: a stop must not wait for streams told to hang.
        runner = web.AppRunner(build_mock_app(self), access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        self._runner = runner
        self._url = f"http://{bound[0]}:{bound[1]}" if ":" not in bound[0] else f"http://[{bound[0]}]:{bound[1]}"
        return self._url

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def url(self) -> str:
        """The base URL (no version prefix), available once started."""
        if self._url is None:
            raise RuntimeError("mock upstream not started")
        return self._url


Answer = Callable[[ReceivedRequest, MockBehaviour], Reply | Stream]


def build_mock_app(mock: MockUpstream) -> web.Application:
    """The mock's aiohttp application; requests are recorded into `mock.requests`."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    server = _Server(mock)
    oa, an, ge = Dialect.OPENAI, Dialect.ANTHROPIC, Dialect.GEMINI
    post: list[tuple[str, Dialect, Answer]] = [
        ("/v1/chat/completions", oa, ep.chat),
        ("/v1/completions", oa, ep.completions),
        ("/v1/responses", oa, ep.responses),
        ("/v1/embeddings", oa, ep.embeddings),
        ("/v1/images/generations", oa, ep.images),
        ("/v1/images/edits", oa, ep.image_edits),
        ("/v1/images/variations", oa, ep.image_edits),
        ("/v1/moderations", oa, ep.moderations),
        ("/v1/audio/transcriptions", oa, ep.transcription),
        ("/v1/audio/translations", oa, ep.transcription),
        ("/v1/audio/speech", oa, ep.speech),
        ("/v1/messages", an, ep.messages),
        ("/v1/messages/count_tokens", an, ep.count_tokens),
        ("/v1beta/models/{name}", ge, ep.gemini),
        ("/v1/models/{name}", ge, ep.gemini),
    ]
    for path, dialect, answer in post:
        app.router.add_post(path, server.handler(dialect, answer))
    app.router.add_get("/v1/models", server.handler(oa, ep.list_models))
    for method, path, task_answer in mock.tasks.routes():
        app.router.add_route(method, path, server.handler(oa, task_answer))
    app.router.add_get("/v1/models/{name}", server.handler(oa, ep.get_model))
    return app


def _key_of(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key") or request.headers.get("x-goog-api-key") or request.query.get("key")


def _canonical(parsed: Any, body: bytes) -> bytes:
    """The body as hashed for ids: independent of JSON spacing and key order, and of
    `stream_options` (which a proxy may force), so "through a proxy" matches "direct"."""
    if not isinstance(parsed, dict):
        return body
    kept = {k: v for k, v in parsed.items() if k != "stream_options"}
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


class _Server:
    """Request handling shared by every route: record, refuse, answer, misbehave."""

    def __init__(self, mock: MockUpstream) -> None:
        self.mock = mock

    def handler(self, dialect: Dialect, answer: Answer) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """An aiohttp handler for one route."""

        async def handle(request: web.Request) -> web.StreamResponse:
            """Serve one request on this route."""
            return await self.serve(request, dialect, answer)

        return handle

    async def serve(self, request: web.Request, dialect: Dialect, answer: Answer) -> web.StreamResponse:
        """Record the request, then answer it as its script and the behaviour say."""
        rec = await self._record(request)
        headers = {"x-request-id": "req_" + rec.request_id, "request-id": "req_" + rec.request_id}
        try:
            script = self._script_for(request)
        except ScriptError as exc:
            body = error_body(dialect, 400, str(exc))
            return web.Response(status=400, body=body, headers={**headers, "Content-Type": JSON})
        standing = self.mock.behaviour
        b = standing if script is None else script.apply(standing)
        headers.update(b.headers)
        if b.stall_before_headers > 0:
            await asyncio.sleep(b.stall_before_headers)
        refusal = self._refusal(dialect, rec, b, counted=script is None or script.status is None)
        if refusal is not None:
            return web.Response(status=refusal[0], body=refusal[1], headers={**headers, "Content-Type": JSON})
        if b.empty_body:
            return web.Response(status=200, body=b"", headers={**headers, "Content-Type": JSON})
        try:
            out = scripted_stream(b.events, dialect) if b.events is not None else answer(rec, b)
        except ep.BadRequest as exc:
            body = error_body(dialect, exc.status, str(exc))
            return web.Response(status=exc.status, body=body, headers={**headers, "Content-Type": JSON})
        if isinstance(out, Stream):
            return await _send_stream(request, out, b, headers)
        return await _send_reply(request, out, b, headers)

    def _script_for(self, request: web.Request) -> Script | None:
        """The request's own `x-mock-script`, else the next queued script, else None."""
        raw = request.headers.get(SCRIPT_HEADER)
        if raw is not None:
            return Script.from_json(raw)
        return self.mock.next_script()

    async def _record(self, request: web.Request) -> ReceivedRequest:
        body = await request.read()
        parsed: Any = None
        if body and not request.content_type.startswith("multipart/"):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
        rec = ReceivedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            json=parsed,
            key=_key_of(request),
            request_id=request_id(request.path, _canonical(parsed, body)),
        )
        kept, cap = self.mock.requests, self.mock.keep_requests
        kept.append(rec)
        if cap is not None and len(kept) > cap:
            del kept[: len(kept) - cap]
        return rec

    def _refusal(
        self, dialect: Dialect, rec: ReceivedRequest, b: MockBehaviour, counted: bool
    ) -> tuple[int, bytes] | None:
        """The error to answer, if any; `counted`: a standing failure, which `fail_times` counts."""
        if b.require_key is not None and rec.key != b.require_key:
            return 401, error_body(dialect, 401, "Incorrect API key provided.")
        if b.fail_status is None:
            return None
        status = b.fail_status
        standing = self.mock.behaviour
        if counted and standing.fail_times > 0:
            standing.fail_times -= 1
            if standing.fail_times == 0:
                standing.fail_status = None
        return status, error_body(dialect, status, b.fail_message or f"Mock upstream failure ({status}).")


async def _send_reply(
    request: web.Request, out: Reply, b: MockBehaviour, headers: dict[str, str]
) -> web.StreamResponse:
    data = out.data
    headers = {**headers, "Content-Type": out.content_type}
    if b.gzip:
        data = gzip.compress(data, mtime=0)
        headers["Content-Encoding"] = "gzip"
    if b.stall_first_byte <= 0 and not b.never_close:
        return web.Response(status=out.status, body=data, headers=headers)
    resp = web.StreamResponse(status=out.status, headers=headers)
    resp.content_length = len(data)
    try:
        await resp.prepare(request)
        if b.never_close:
            await _hang(request)
            return resp
        await asyncio.sleep(b.stall_first_byte)
        await resp.write(data)
        await resp.write_eof()
    except ConnectionError:
        pass  # the client gave up waiting; aiohttp notes the disconnect itself
    return resp


async def _send_stream(
    request: web.Request, out: Stream, b: MockBehaviour, headers: dict[str, str]
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={**headers, "Content-Type": out.content_type, "Cache-Control": "no-cache"})
    try:
        await resp.prepare(request)
        await _pump(request, resp, out, b)
    except ConnectionError:
        pass  # the client went away mid-stream
    return resp


async def _pump(request: web.Request, resp: web.StreamResponse, out: Stream, b: MockBehaviour) -> None:
    """Write the frames, stopping where a fault knob says so."""
    if b.stall_first_byte > 0:
        await asyncio.sleep(b.stall_first_byte)
    frames = out.frames
    cut, action = len(frames), "end"
    for at, what in ((b.truncate_after, "truncate"), (b.reset_after, "reset"), (b.error_event_after, "error")):
        if at is not None and max(0, at) < cut:
            cut, action = max(0, at), what
    if b.never_close and out.content_end < cut:
        cut, action = out.content_end, "hang"
    await _write_frames(resp, frames[:cut], b.pace)
    if action == "reset":
        _reset(request)
    elif action == "hang":
        await _hang(request)
    else:
        if action == "error":
            if b.pace > 0 and cut > 0:
                await asyncio.sleep(b.pace)
            await resp.write(out.error_frame)
        await resp.write_eof()  # "end" and "truncate" both close cleanly; they differ in frames


async def _write_frames(resp: web.StreamResponse, frames: tuple[bytes, ...], pace: float) -> None:
    if not frames:
        return
    if pace <= 0:
        # Unpaced (the benchmark's instant mode): one write, one syscall.
        await resp.write(b"".join(frames))
        return
    for i, frame in enumerate(frames):
        if i:
            await asyncio.sleep(pace)
        await resp.write(frame)


def _reset(request: web.Request) -> None:
    """Abort the connection with a TCP RST rather than a FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _hang(request: web.Request) -> None:
    """Send nothing, forever, until the peer closes or the server stops."""
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(0.05)


async def _run(host: str, port: int, behaviour: MockBehaviour) -> None:
    mock = MockUpstream(behaviour)
    url = await mock.start(host, port)
    print(f"mock upstream listening on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await mock.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m proxy.mock.upstream`: serve the mock until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m proxy.mock.upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between streamed events")
    parser.add_argument("--words", type=int, default=12, help="answer length in content events")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run(args.host, args.port, MockBehaviour(pace=args.pace, words=args.words)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
