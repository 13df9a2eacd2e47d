"""What the mock upstream does with a request: its standing knobs and per-request scripts.

`MockBehaviour` holds the knobs read at the start of every request (mutable on purpose: a
test flips them). A `Script` says what to answer to the next request(s) only: a reply
text, raw events, usage counts, an error status, a fault or a delay. The mock takes scripts
in the order they were queued (`MockUpstream.script`), or one from a request's
`x-mock-script` header (JSON with the same field names), and lays each over the standing
knobs for that one request (`Script.apply`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = ["Event", "MockBehaviour", "SCRIPT_HEADER", "Script", "ScriptError", "Usage", "UsageMode"]

SCRIPT_HEADER = "x-mock-script"
"""A request header whose JSON value is a `Script` for that request alone."""

UsageMode = Literal["omit", "zero", "repeat"]
Event = bytes | str | Mapping[str, Any] | Sequence[Any]
"""A scripted SSE event: bytes are written as they are (a whole frame, blank line included);
a str becomes `data: <str>`; a dict or list becomes `data: <its JSON>`."""


class ScriptError(ValueError):
    """A script the mock cannot follow (a bad `x-mock-script` header, a wrong field)."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts to report instead of the counted ones; None keeps the counted value.

    `input` is the whole prompt: OpenAI `prompt_tokens`, Anthropic `input_tokens` plus the
    cache reads and writes, Gemini `promptTokenCount`. `output` is the visible output of one
    choice; `cached` the part of `input` read from cache; `reasoning` hidden reasoning tokens
    reported on top of `output` (not by Anthropic).
    """

    input: int | None = None
    output: int | None = None
    cached: int | None = None
    reasoning: int | None = None


@dataclass(slots=True)
class MockBehaviour:
    """Standing knobs, read at the start of each request. Mutable on purpose: tests flip them.

    `reply` (a text split into one word per streamed event, or the exact pieces, one event
    each), `events` (raw SSE events sent instead of the dialect's stream), `usage` (counts
    to report) and `headers` (added to every answer) are what a `Script` usually sets for
    one request; set here, they hold for every request.
    """

    fail_status: int | None = None
    fail_times: int = 0
    fail_message: str | None = None
    stall_before_headers: float = 0.0
    stall_first_byte: float = 0.0
    pace: float = 0.0
    truncate_after: int | None = None
    reset_after: int | None = None
    error_event_after: int | None = None
    omit_usage: bool = False
    zero_usage: bool = False
    repeat_usage: bool = False
    never_close: bool = False
    words: int = 12
    gzip: bool = False
    empty_body: bool = False
    require_key: str | None = None
    reply: str | tuple[str, ...] | None = None
    events: tuple[Event, ...] | None = None
    usage: Usage | None = None
    headers: dict[str, str] = field(default_factory=dict)


# Script fields copied onto the behaviour under the same name when set (not None / False).
_SAME = (
    "reply",
    "events",
    "usage",
    "truncate_after",
    "reset_after",
    "error_event_after",
    "stall_before_headers",
    "stall_first_byte",
    "pace",
    "words",
)
_FLAGS = ("never_close", "gzip", "empty_body")


@dataclass(frozen=True, slots=True)
class Script:
    """What the mock answers to the next `times` requests; None leaves a knob as it stands.

    - `reply`: the answer. A str is split into words, one streamed content event each (the
      first word bare, the others with a leading space); a sequence gives the pieces exactly,
      one event each, e.g. `["Write to bob@exa", "mple.com"]`. The request's `max_tokens`
      does not cut a scripted reply; usage counts one output token per piece.
    - `events`: raw SSE events sent instead of the dialect's stream, for any POST (see `Event`).
    - `usage`: a `Usage` with the counts to report, or "omit" (no usage at all), "zero"
      (every count 0) or "repeat" (cumulative usage on every chunk).
    - `status` (with `message`): answer this error status in the endpoint's error shape.
    - `headers`: response headers added to the answer (success or error).
    - faults: `truncate_after` / `reset_after` / `error_event_after` N frames (a clean end, a
      TCP reset, the dialect's error event), `never_close` (stop before the terminal events
      and hang), `empty_body`, `gzip`.
    - delays (seconds): `stall_before_headers`, `stall_first_byte`, `pace` (between events).
    """

    reply: str | tuple[str, ...] | None = None
    events: tuple[Event, ...] | None = None
    usage: Usage | UsageMode | None = None
    status: int | None = None
    message: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    truncate_after: int | None = None
    reset_after: int | None = None
    error_event_after: int | None = None
    never_close: bool = False
    empty_body: bool = False
    gzip: bool = False
    stall_before_headers: float | None = None
    stall_first_byte: float | None = None
    pace: float | None = None
    words: int | None = None
    times: int = 1

    def __post_init__(self) -> None:
        if self.times < 1:
            raise ScriptError(f"times must be at least 1, got {self.times}")
        if isinstance(self.usage, str) and self.usage not in ("omit", "zero", "repeat"):
            raise ScriptError(f"usage must be a Usage or one of omit, zero, repeat, got {self.usage!r}")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ScriptError(f"status must be an HTTP status, got {self.status}")

    def apply(self, standing: MockBehaviour) -> MockBehaviour:
        """The behaviour for one request: `standing` with this script's settings laid over it."""
        changes: dict[str, Any] = {name: getattr(self, name) for name in _SAME if getattr(self, name) is not None}
        changes.update({name: True for name in _FLAGS if getattr(self, name)})
        if isinstance(self.usage, str):
            changes.pop("usage")
            changes[f"{self.usage}_usage"] = True
        if self.status is not None:
            # A scripted error is this request's alone: the standing failure count is untouched.
            changes.update(fail_status=self.status, fail_times=0, fail_message=self.message)
        if self.headers:
            changes["headers"] = {**standing.headers, **self.headers}
        return dataclasses.replace(standing, **changes)

    @classmethod
    def of(cls, **fields: Any) -> Script:
        """A script from keyword fields, as a test writes them: lists become tuples, a
        `usage` mapping becomes a `Usage`; a wrong field is a `ScriptError` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ScriptError(f"unknown script field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        for name in ("reply", "events"):
            if isinstance(fields.get(name), list):
                fields[name] = tuple(fields[name])
        try:
            if isinstance(fields.get("usage"), Mapping):
                fields["usage"] = Usage(**fields["usage"])
            return cls(**fields)
        except TypeError as exc:
            raise ScriptError(f"bad script: {exc}") from exc

    @classmethod
    def from_json(cls, raw: str | bytes) -> Script:
        """A script from the JSON of an `x-mock-script` header (the same field names, except
        `times`: a header scripts its own request only)."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ScriptError(f"{SCRIPT_HEADER} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ScriptError(f"{SCRIPT_HEADER} must be a JSON object")
        if "times" in data:
            raise ScriptError(f"{SCRIPT_HEADER}: 'times' has no meaning in a header (it scripts its own request)")
        try:
            return cls.of(**data)
        except ScriptError as exc:
            raise ScriptError(f"{SCRIPT_HEADER}: {exc}") from exc
