"""Async task APIs: OpenAI's videos routes, and the task APIs proxy.yaml declares.

An async task is submitted with one request and read with later ones (a video, an image, a
song that takes minutes). The core only relays them: `POST /v1/videos`, `GET
/v1/videos/{id}`, `GET /v1/videos/{id}/content` and `DELETE /v1/videos/{id}`, plus, for
every `task_apis:` entry, its submit route (POST) and its fetch route (GET, a template with
`{id}`). What a task's id maps to, who may read it and what it costs is a plugin's business
(billing's): it pins the upstream and rewrites the path with `RequestContext.send_to`.

A declared API also names where its answers keep the task's facts, as JSON pointers
(RFC 6901: `/data/status`), and how its statuses map to `queued`, `in_progress`,
`completed` and `failed`. The core checks them (with their YAML paths) but never reads them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.context import Dialect, Endpoint
from proxy.dataclass_builder import ConfigError
from proxy.dialects import Route

__all__ = ["TaskApiConfig", "TaskStatus", "check_task_apis", "task_routes"]

TaskStatus = Literal["queued", "in_progress", "completed", "failed"]
"""What a task's upstream status means (the OpenAI videos API's own four)."""

VIDEOS_CREATE = Route(Dialect.OPENAI, Endpoint.VIDEOS, form_ok=True, default_model="sora-2")
VIDEO_RETRIEVE = Route(Dialect.OPENAI, Endpoint.VIDEO, json_body=False, needs_model=False)
VIDEO_CONTENT = Route(Dialect.OPENAI, Endpoint.VIDEO_CONTENT, json_body=False, needs_model=False)
VIDEO_DELETE = Route(Dialect.OPENAI, Endpoint.VIDEO_DELETE, json_body=False, needs_model=False)
TASK_FETCH = Route(Dialect.OPENAI, Endpoint.TASK_FETCH, json_body=False, needs_model=False)

_PATH = re.compile(r"^/[A-Za-z0-9_\-./{}]*$")
_BUILT_IN_PREFIXES = ("/v1/", "/v1beta/", "/api/", "/admin", "/healthz", "/metrics")


def _pointer(value: str, what: str) -> None:
    if value and not value.startswith("/"):
        raise ValueError(f"{what}: a JSON pointer starts with '/' (e.g. /data/status), got {value!r}")


@dataclass(frozen=True, slots=True)
class TaskApiConfig:
    """One `task_apis:` entry: a task API that is not OpenAI's (Midjourney-proxy, Suno, ...).

    `submit` is the POST path, `fetch` the GET path with `{id}` where the task id goes.
    `model` is the model a submit is routed and priced as when the body's `model_field` key
    does not name one. The pointers say where the answers keep the task's facts: `task_id`
    in the submit answer; in the fetch answer `fetch_id` (rewritten to the id the client
    knows), `status`, `progress`, `failure` (why it failed) and `usage` (token usage, when
    the upstream reports it). `seconds_field` and `n_field` name the submit body's keys for
    a duration and a count, where the API has them. `statuses` maps each upstream status to
    one of queued, in_progress, completed, failed (an unmapped one counts as in_progress).
    """

    name: str
    submit: str
    fetch: str
    model: str
    model_field: str = "model"
    task_id: str = "/id"
    fetch_id: str = ""
    status: str = "/status"
    progress: str = ""
    failure: str = ""
    usage: str = ""
    seconds_field: str = ""
    n_field: str = ""
    statuses: dict[str, TaskStatus] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("name: must not be empty")
        for key, path in (("submit", self.submit), ("fetch", self.fetch)):
            if not _PATH.match(path) or path.startswith(_BUILT_IN_PREFIXES):
                raise ValueError(
                    f"{key}: expected a path such as /mj/submit/imagine outside Weir's own routes, got {path!r}"
                )
        if "{" in self.submit:
            raise ValueError(f"submit: a submit path has no placeholder, got {self.submit!r}")
        if self.fetch.count("{id}") != 1 or self.fetch.replace("{id}", "").count("{"):
            raise ValueError(f"fetch: expected one {{id}} placeholder (e.g. /mj/task/{{id}}/fetch), got {self.fetch!r}")
        if not self.model.strip():
            raise ValueError("model: must not be empty")
        for key in ("task_id", "fetch_id", "status", "progress", "failure", "usage"):
            _pointer(getattr(self, key), key)
        if not self.task_id or not self.status:
            raise ValueError("task_id and status: the pointers to the task's id and status are required")


def check_task_apis(apis: tuple[TaskApiConfig, ...]) -> None:
    """Names and routes must be unique; raises ConfigError with the entry's YAML path."""
    names: set[str] = set()
    paths: set[str] = set()
    for i, api in enumerate(apis):
        where = f"task_apis[{i}]"
        if api.name in names:
            raise ConfigError(f"{where}.name", f"duplicate task API name {api.name!r}")
        names.add(api.name)
        for key, path in (("submit", api.submit), ("fetch", api.fetch)):
            if path in paths:
                raise ConfigError(f"{where}.{key}", f"{path!r} is already a task API route")
            paths.add(path)


def task_routes(apis: tuple[TaskApiConfig, ...]) -> Iterator[tuple[str, str, Route]]:
    """(method, path, route) of every task route: OpenAI's videos, then the declared APIs."""
    yield "POST", "/v1/videos", VIDEOS_CREATE
    yield "GET", "/v1/videos/{video_id}", VIDEO_RETRIEVE
    yield "GET", "/v1/videos/{video_id}/content", VIDEO_CONTENT
    yield "DELETE", "/v1/videos/{video_id}", VIDEO_DELETE
    for api in apis:
        submit = Route(Dialect.OPENAI, Endpoint.TASK_SUBMIT, default_model=api.model, model_field=api.model_field)
        yield "POST", api.submit, submit
        yield "GET", api.fetch, TASK_FETCH


def add_task_routes(add: Callable[[str, str, Route], Any], apis: tuple[TaskApiConfig, ...]) -> None:
    """Register every task route with `add(method, path, route)`."""
    for method, path, route in task_routes(apis):
        add(method, path, route)
