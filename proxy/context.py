"""The values that flow through the plugin pipeline.

`RequestContext` is the only mutable object: one per proxied request. Everything else
is a frozen value. Plugins import these names from `proxy.plugin`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

T = TypeVar("T")


class Dialect(StrEnum):
    """The wire format of an endpoint: decides error shapes and usage fields."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"


class Endpoint(StrEnum):
    """Which API operation a request is."""

    CHAT = "chat.completions"
    COMPLETIONS = "completions"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    MODELS = "models"
    IMAGES = "images.generations"
    IMAGE_EDITS = "images.edits"
    IMAGE_VARIATIONS = "images.variations"
    AUDIO = "audio"
    SPEECH = "audio.speech"
    MODERATIONS = "moderations"
    MESSAGES = "messages"
    COUNT_TOKENS = "messages.count_tokens"
    GEMINI_GENERATE = "generateContent"
    GEMINI_STREAM = "streamGenerateContent"
    GEMINI_COUNT_TOKENS = "countTokens"
    GEMINI_EMBED = "embedContent"
    GEMINI_BATCH_EMBED = "batchEmbedContents"
    VIDEOS = "videos"  # POST /v1/videos: submit a video task
    VIDEO = "videos.retrieve"  # GET /v1/videos/{id}
    VIDEO_CONTENT = "videos.content"  # GET /v1/videos/{id}/content
    VIDEO_DELETE = "videos.delete"  # DELETE /v1/videos/{id}
    TASK_SUBMIT = "tasks.submit"  # the submit route of a task API declared in proxy.yaml
    TASK_FETCH = "tasks.fetch"  # its fetch route


class EndReason(StrEnum):
    """Why a response ended. Carried by `Outcome` and `ProxyError`."""

    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client_disconnected"
    UPSTREAM_TRUNCATED = "upstream_truncated"
    UPSTREAM_ERROR = "upstream_error"
    PLUGIN_FAILED = "plugin_failed"
    SHUTDOWN = "shutdown"
    CLIENT_STALLED = "client_stalled"
    REJECTED = "rejected"


class StateKey(Generic[T]):
    """A typed key into `RequestContext.state`, so plugins never collide on strings.

    Create one at module level (a key is an identity, not state)::

        COUNT = StateKey[int]("mypkg.count")
        ctx.state[COUNT] = 1
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StateKey({self.name!r})"


class RequestState(dict[StateKey[Any], Any]):
    """Per-request plugin state, indexed by `StateKey` and typed by it.

    A dict underneath, without Python-level methods: plugins read it on every hook and
    every relayed event, where a method call per lookup showed in the profiles."""

    __slots__ = ()

    if TYPE_CHECKING:

        def __getitem__(self, key: StateKey[T]) -> T: ...

        def __setitem__(self, key: StateKey[T], value: T) -> None: ...

        def get(self, key: StateKey[T], default: T | None = None) -> T | None:
            """Return the value for `key`, or `default` when it was never set."""


_UNPARSED: Any = object()


class SSEEvent:
    """One server-sent event.

    `raw` holds the exact bytes received (including the blank line that ends the event),
    and is what the relay forwards when no plugin replaced the event. `json` parses
    `data` once, lazily, and caches it; it is None when `data` is not JSON (e.g. `[DONE]`).
    To change an event, build a new one with `replace()` or `with_json()`.
    """

    __slots__ = ("event", "data", "id", "retry", "raw", "_json")

    def __init__(
        self,
        data: str,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        raw: bytes | None = None,
    ) -> None:
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry
        self.raw = raw if raw is not None else _serialise(event, data, id, retry)
        self._json: Any = _UNPARSED

    @property
    def json(self) -> Any:
        """The parsed JSON payload (parsed at most once), or None if `data` is not JSON."""
        if self._json is _UNPARSED:
            try:
                self._json = orjson.loads(self.data) if self.data else None
            except orjson.JSONDecodeError:
                self._json = None
        return self._json

    def replace(self, *, data: str | None = None, event: str | None = None) -> SSEEvent:
        """A copy with a new `data` and/or `event` field, serialised afresh."""
        return SSEEvent(
            data=self.data if data is None else data,
            event=self.event if event is None else event,
            id=self.id,
            retry=self.retry,
        )

    def with_json(self, payload: Any) -> SSEEvent:
        """A copy whose data is `payload` serialised as compact JSON."""
        new = self.replace(data=orjson.dumps(payload).decode())
        new._json = payload
        return new

    def __repr__(self) -> str:
        return f"SSEEvent(event={self.event!r}, data={self.data[:60]!r})"


def _serialise(event: str | None, data: str, id: str | None, retry: int | None) -> bytes:
    parts: list[str] = []
    if event is not None:
        parts.append(f"event: {event}\n")
    if id is not None:
        parts.append(f"id: {id}\n")
    if retry is not None:
        parts.append(f"retry: {retry}\n")
    for line in data.split("\n"):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode()


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a started response ended; given to `on_complete`.

    `reason` is one of completed, client_disconnected, upstream_truncated,
    upstream_error (an error event mid-stream), plugin_failed, shutdown or client_stalled
    (the client accepted nothing for `server.client_write_timeout` seconds).
    `drained` is True when the upstream was read to its end after the client left.
    """

    reason: EndReason
    status: int
    events: int = 0
    bytes_relayed: int = 0
    drained: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ProxyError:
    """Why nothing was delivered; given to `on_error`.

    `status` and `code` are what the client was answered with. `upstream_status` is the
    upstream's own status when one answered. `reason` says which kind of failure it was.
    """

    reason: EndReason
    status: int
    code: str
    message: str
    upstream_status: int | None = None


@dataclass(slots=True)
class UpstreamInfo:
    """The upstream a request was sent to (set once an attempt has been chosen)."""

    name: str
    model: str | None
    attempt: int


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where a plugin pinned a request (`RequestContext.send_to`): the upstream's name, and
    the path to send instead of the client's (None keeps the client's)."""

    upstream: str
    path: str | None = None


@dataclass(slots=True)
class RequestContext:
    """Everything Weir knows about one proxied request. Mutable; owned by one request.

    Plugins may, in `on_request`: replace the body (`set_json`/`set_body`), add upstream
    headers (`upstream_headers`), add response headers (`response_headers`), set
    `drain_on_disconnect`, pin the upstream and the path (`send_to`), and keep their own
    data in `state`.

    `form` holds the text fields of a `multipart/form-data` body (image edits, audio
    uploads) as received, without the file parts; None for other bodies.
    """

    request_id: str
    dialect: Dialect
    endpoint: Endpoint
    method: str
    path: str
    query: MultiMapping[str]
    headers: CIMultiDictProxy[str]
    client_ip: str
    body: bytes
    json: dict[str, Any] | None
    model: str | None
    stream: bool
    api_key: str | None = field(default=None, repr=False)
    form: dict[str, str] | None = None
    state: RequestState = field(default_factory=RequestState)
    upstream_headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    response_headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    metadata: dict[str, str] = field(default_factory=dict)
    upstream: UpstreamInfo | None = None
    drain_on_disconnect: bool = False
    drain_timeout: float = 60.0
    drain_max_bytes: int = 8 * 1024 * 1024
    started_at: float = field(default_factory=time.monotonic)
    first_byte_at: float | None = None
    status: int | None = None
    end_reason: str = ""
    events_relayed: int = 0
    upstream_target: UpstreamTarget | None = None

    def send_to(self, upstream: str, path: str | None = None) -> None:
        """Send this request to the upstream named `upstream` only (no model routing, no
        failover), and, with `path`, to that path instead of the client's (the query string
        is kept; the version prefix is handled as for the client's path). For state that
        lives on one upstream, such as an async task created there."""
        self.upstream_target = UpstreamTarget(upstream, path)

    def set_json(self, payload: dict[str, Any]) -> None:
        """Replace the JSON request body that will be sent upstream."""
        self.json = payload
        self.body = orjson.dumps(payload)

    def set_body(self, body: bytes) -> None:
        """Replace the raw request body (non-JSON endpoints such as audio uploads)."""
        self.body = body
        self.json = None

    @property
    def elapsed_ms(self) -> float:
        """Milliseconds since the request arrived."""
        return (time.monotonic() - self.started_at) * 1000.0

    @property
    def ttft_ms(self) -> float | None:
        """Milliseconds from arrival to the first relayed byte, if any was relayed."""
        if self.first_byte_at is None:
            return None
        return (self.first_byte_at - self.started_at) * 1000.0


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """The upstream's status line and headers, as seen before any byte is relayed."""

    status: int
    headers: CIMultiDictProxy[str]
    upstream: str
    streaming: bool
