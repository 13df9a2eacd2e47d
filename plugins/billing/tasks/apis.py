"""The task APIs billing understands: OpenAI's videos API, built in, and every `task_apis:`
entry of proxy.yaml (a Midjourney-proxy or Suno style API). Each says where its answers keep
a task's id, status, progress, failure and usage (JSON pointers, RFC 6901) and how its
statuses map to `queued`, `in_progress`, `completed` and `failed`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from plugins.billing.usage import Usage, from_openai, from_openai_responses
from proxy.host import TaskApiConfig
from proxy.plugin import Endpoint, RequestContext

__all__ = ["VIDEOS", "Observation", "TaskApi", "TaskApis", "pointer_get", "pointer_set"]

#: The four states every API's statuses map to.
STATES = ("queued", "in_progress", "completed", "failed")
_MISSING = object()


def _tokens(pointer: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def pointer_get(doc: Any, pointer: str) -> Any:
    """The value at `pointer` in `doc`, or None when there is none."""
    if not pointer:
        return None
    for token in _tokens(pointer):
        if isinstance(doc, dict):
            doc = doc.get(token, _MISSING)
        elif isinstance(doc, list) and token.isdigit() and int(token) < len(doc):
            doc = doc[int(token)]
        else:
            return None
        if doc is _MISSING:
            return None
    return doc


def pointer_set(doc: Any, pointer: str, value: Any) -> bool:
    """Replace the value at `pointer` (which must exist) with `value`; False when absent."""
    tokens = _tokens(pointer) if pointer else []
    if not tokens:
        return False
    parent = (
        pointer_get(doc, "/" + "/".join(t.replace("~", "~0").replace("/", "~1") for t in tokens[:-1]))
        if len(tokens) > 1
        else doc
    )
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        parent[last] = value
        return True
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        parent[int(last)] = value
        return True
    return False


@dataclass(frozen=True, slots=True)
class Observation:
    """What one read of a task said: its state (one of `STATES`; None when the answer had no
    status), the upstream's own status word, progress (0-100), why it failed, and the token
    usage it reported (None when none)."""

    state: str | None
    status: str
    progress: int
    failure: str
    usage: Usage | None


def _progress(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return max(0, min(100, int(value)))
    if isinstance(value, str):
        m = re.search(r"\d+", value)
        return max(0, min(100, int(m.group()))) if m else 0
    return 0


def _usage(value: Any) -> Usage | None:
    """OpenAI-style usage: chat's prompt/completion tokens, responses' input/output tokens,
    or only a total (counted as input). None when absent or all zero."""
    if not isinstance(value, dict):
        return None
    if "prompt_tokens" in value or "completion_tokens" in value:
        usage = from_openai(value)
    elif "input_tokens" in value or "output_tokens" in value:
        usage = from_openai_responses(value)
    elif isinstance(value.get("total_tokens"), int) and value["total_tokens"] > 0:
        usage = Usage(input=value["total_tokens"])
    else:
        return None
    return None if usage.is_zero else usage


@dataclass(frozen=True, slots=True)
class TaskApi:
    """One task API: its name, the prefix of the ids Weir gives its tasks, its fetch path
    template (client side, with `{id}`), and where its answers keep the task's facts."""

    name: str
    prefix: str
    fetch: str
    submit_id: str
    fetch_id: str
    status: str
    progress: str
    failure: str
    usage: str
    statuses: Mapping[str, str] = field(default_factory=dict)
    seconds_field: str = ""
    n_field: str = ""
    default_seconds: int = 0

    @classmethod
    def declared(cls, c: TaskApiConfig) -> TaskApi:
        """The billing view of a `task_apis:` entry."""
        return cls(
            c.name,
            "task_",
            c.fetch,
            c.task_id,
            c.fetch_id,
            c.status,
            c.progress,
            c.failure,
            c.usage,
            dict(c.statuses),
            c.seconds_field,
            c.n_field,
        )

    def fetch_path(self, task_id: str) -> str:
        """The fetch path for `task_id` (the client's id or the upstream's)."""
        return self.fetch.replace("{id}", task_id)

    def observe(self, doc: Any) -> Observation:
        """Read a fetch answer."""
        raw = pointer_get(doc, self.status)
        status = raw if isinstance(raw, str) else "" if raw is None else str(raw)
        state = self.statuses.get(status, status if status in STATES else "in_progress") if status else None
        failure = pointer_get(doc, self.failure)
        if isinstance(failure, dict):
            failure = failure.get("message") or failure.get("code")
        return Observation(
            state,
            status,
            _progress(pointer_get(doc, self.progress)),
            str(failure) if failure else "",
            _usage(pointer_get(doc, self.usage)),
        )


VIDEOS = TaskApi(
    "videos",
    "video_",
    "/v1/videos/{id}",
    "/id",
    "/id",
    "/status",
    "/progress",
    "/error",
    "/usage",
    seconds_field="seconds",
    default_seconds=4,
)
"""OpenAI's videos API: `seconds` defaults to 4, as OpenAI's does."""

_VIDEO_PATHS = {
    Endpoint.VIDEO: "/v1/videos/{id}",
    Endpoint.VIDEO_DELETE: "/v1/videos/{id}",
    Endpoint.VIDEO_CONTENT: "/v1/videos/{id}/content",
}


class TaskApis:
    """Every task API of this proxy, and which one a request belongs to."""

    def __init__(self, declared: tuple[TaskApiConfig, ...]) -> None:
        self.declared = {c.submit: TaskApi.declared(c) for c in declared}
        self.by_name = {VIDEOS.name: VIDEOS, **{api.name: api for api in self.declared.values()}}
        self._fetch = [(_template(api.fetch), api) for api in self.declared.values()]

    def submitted_to(self, ctx: RequestContext) -> TaskApi | None:
        """The API a submit request is for."""
        return VIDEOS if ctx.endpoint is Endpoint.VIDEOS else self.declared.get(ctx.path)

    def read_of(self, ctx: RequestContext) -> tuple[TaskApi, str, str] | None:
        """(API, the client's task id, the path template of this read) of a task read."""
        template = _VIDEO_PATHS.get(ctx.endpoint)
        if template is not None:
            found = _template(template).match(ctx.path)
            return (VIDEOS, found.group(1), template) if found else None
        for pattern, api in self._fetch:
            found = pattern.match(ctx.path)
            if found:
                return api, found.group(1), api.fetch
        return None


def _template(template: str) -> re.Pattern[str]:
    head, _, tail = template.partition("{id}")
    return re.compile(f"^{re.escape(head)}([^/]+){re.escape(tail)}$")


def submit_fields(ctx: RequestContext) -> Mapping[str, Any]:
    """A submit's fields: the JSON body, or a multipart/form-data body's text fields (the
    core parsed them into `ctx.form`)."""
    if ctx.json is not None:
        return ctx.json
    return ctx.form or {}
