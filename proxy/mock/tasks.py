"""The mock upstream's async task APIs: OpenAI's videos, a Midjourney-proxy style API and a
Suno style API, each backed by one `TaskBook` of scripted tasks.

A task follows a script of steps (`SCRIPTS`), one step every `step_seconds` after it was
submitted: `completed` (queued → in_progress → completed), `failed`, `forgotten` (the
upstream answers 404 once it got that far), `slow` (many in_progress steps) and `stuck`
(in_progress forever). The knobs are on the book and read at submit: `script`, `usage`
(token usage reported on completion, or None), `refuse` (the Midjourney and Suno styles
refuse the submit inside a 200 answer, as those APIs do). A prompt containing
`[mock:<script>]` picks that script for its task (the demo uses it). `finish(id, status)`
and `forget(id)` end a task at once. HTTP-level refusals use `MockBehaviour.fail_status`.

Wire shapes:
  * `POST /v1/videos` (JSON or multipart) → a video object; `GET /v1/videos/{id}`;
    `GET /v1/videos/{id}/content` (video/mp4 bytes once completed); `DELETE /v1/videos/{id}`.
  * `POST /mj/submit/imagine` → `{"code": 1, "result": id}`; `GET /mj/task/{id}/fetch` →
    `{"id", "status": NOT_START|SUBMITTED|IN_PROGRESS|SUCCESS|FAILURE, "progress": "40%",
    "failReason", ...}`.
  * `POST /suno/submit/music` → `{"code": "success", "data": id}`; `GET /suno/fetch/{id}` →
    `{"code": "success", "data": {"task_id", "status", "progress", "fail_reason", "usage"?}}`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import TYPE_CHECKING, Any

import orjson

from proxy.mock.endpoints import BadRequest
from proxy.mock.wire import Reply

if TYPE_CHECKING:
    from proxy.mock.behaviour import MockBehaviour
    from proxy.mock.upstream import ReceivedRequest

__all__ = ["SCRIPTS", "MockTask", "Step", "TaskBook"]


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a task's life: an OpenAI-style status (or `gone`) and a progress."""

    status: str
    progress: int


_Q, _GONE = Step("queued", 0), Step("gone", 0)
SCRIPTS: dict[str, tuple[Step, ...]] = {
    "completed": (_Q, Step("in_progress", 30), Step("in_progress", 70), Step("completed", 100)),
    "failed": (_Q, Step("in_progress", 40), Step("failed", 40)),
    "forgotten": (_Q, Step("in_progress", 50), _GONE),
    "slow": (_Q, *(Step("in_progress", 5 * i) for i in range(1, 20)), Step("completed", 100)),
    "stuck": (_Q, Step("in_progress", 10)),
}
_MARKER = re.compile(r"\[mock:([a-z_]+)\]")
_MJ_STATUS = {"queued": "SUBMITTED", "in_progress": "IN_PROGRESS", "completed": "SUCCESS", "failed": "FAILURE"}
_FAILURE = "the mock upstream failed this task (script 'failed')"
#: The bytes of a "video": an MP4 file-type box, then the task id.
MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"


@dataclass(slots=True)
class MockTask:
    """One submitted task."""

    id: str
    kind: str
    model: str
    prompt: str
    seconds: str
    size: str
    script: tuple[Step, ...]
    usage: dict[str, int] | None
    created_at: int
    started: float
    forced: Step | None = None
    deleted: bool = False


@dataclass(slots=True)
class TaskBook:
    """Every task the mock was given, and the knobs for the next ones."""

    script: str = "completed"
    step_seconds: float = 1.0
    usage: dict[str, int] | None = None
    refuse: str | None = None
    tasks: dict[str, MockTask] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    def step(self, task: MockTask) -> Step:
        """Where `task` is now."""
        if task.forced is not None:
            return task.forced
        at = int((self.clock() - task.started) / self.step_seconds) if self.step_seconds > 0 else len(task.script)
        return task.script[min(at, len(task.script) - 1)]

    def finish(self, task_id: str, status: str = "completed") -> None:
        """End task `task_id` now as `status` (completed, failed, or gone)."""
        self.tasks[task_id].forced = Step(status, 100 if status == "completed" else 0)

    def forget(self, task_id: str) -> None:
        """The upstream answers 404 for `task_id` from now on."""
        self.finish(task_id, "gone")

    def _new(self, kind: str, model: str, prompt: str, seconds: str = "", size: str = "") -> MockTask:
        if self.refuse is not None and kind != "video":
            raise _Refused(self.refuse)
        marker = _MARKER.search(prompt)
        name = marker.group(1) if marker and marker.group(1) in SCRIPTS else self.script
        if name not in SCRIPTS:
            raise BadRequest(f"mock: unknown task script {name!r}", 500)
        prefix = {"video": "video_", "mj": "", "suno": "suno-"}[kind]
        task_id = prefix + secrets.token_hex(12)
        task = MockTask(
            task_id,
            kind,
            model,
            prompt,
            seconds,
            size,
            SCRIPTS[name],
            dict(self.usage) if self.usage else None,
            int(time.time()),
            self.clock(),
        )
        self.tasks[task_id] = task
        return task

    def _find(self, path: str, kind: str) -> tuple[MockTask, Step]:
        ids = [p for p in path.split("/") if p in self.tasks]
        task = self.tasks.get(ids[0]) if ids else None
        if task is None or task.kind != kind or task.deleted:
            raise BadRequest("No task found with that id.", 404)
        now = self.step(task)
        if now.status == "gone":
            raise BadRequest("No task found with that id.", 404)
        return task, now

    # ---- OpenAI videos --------------------------------------------------------------------

    def create_video(self, rec: ReceivedRequest, b: MockBehaviour) -> Reply:
        """POST /v1/videos: queue a video (JSON or multipart/form-data)."""
        fields = _fields(rec)
        prompt = fields.get("prompt")
        if not prompt:
            raise BadRequest("Missing required parameter: 'prompt'.")
        seconds, size = fields.get("seconds") or "4", fields.get("size") or "720x1280"
        if seconds not in ("4", "8", "12"):
            raise BadRequest(f"Invalid value for 'seconds': {seconds!r}.")
        task = self._new("video", fields.get("model") or "sora-2", prompt, seconds, size)
        return _json(self._video(task, self.step(task)))

    def video(self, rec: ReceivedRequest, b: MockBehaviour) -> Reply:
        """GET or DELETE /v1/videos/{id}."""
        task, now = self._find(rec.path, "video")
        if rec.method == "DELETE":
            task.deleted = True
            return _json({"id": task.id, "object": "video.deleted", "deleted": True})
        return _json(self._video(task, now))

    def video_content(self, rec: ReceivedRequest, b: MockBehaviour) -> Reply:
        """GET /v1/videos/{id}/content: the MP4 bytes of a completed video."""
        task, now = self._find(rec.path, "video")
        if now.status != "completed":
            raise BadRequest(f"Video {task.id} is not ready: it is {now.status}.", 404)
        return Reply(MP4_HEAD + task.id.encode() * 64, "video/mp4")

    def _video(self, task: MockTask, now: Step) -> dict[str, Any]:
        done = now.status in ("completed", "failed")
        out: dict[str, Any] = {
            "id": task.id,
            "object": "video",
            "model": task.model,
            "status": now.status,
            "progress": now.progress,
            "created_at": task.created_at,
            "seconds": task.seconds,
            "size": task.size,
            "prompt": task.prompt,
            "completed_at": task.created_at + 60 if done else None,
            "expires_at": task.created_at + 86400 if now.status == "completed" else None,
            "error": {"code": "mock_failure", "message": _FAILURE} if now.status == "failed" else None,
            "remixed_from_video_id": None,
        }
        if now.status == "completed" and task.usage:
            out["usage"] = task.usage
        return out

    # ---- Midjourney-proxy style -------------------------------------------------------------

    def mj_submit(self, rec: ReceivedRequest, b: MockBehaviour) -> Reply:
        """POST /mj/submit/imagine: `{"code": 1, "result": id}` (or a refusal with code 4)."""
        body = _json_body(rec)
        try:
            task = self._new("mj", str(body.get("model") or "midjourney"), str(body.get("prompt") or ""))
        except _Refused as exc:
            return _json({"code": 4, "description": str(exc), "result": None, "properties": {}})
        return _json({"code": 1, "description": "Submit success", "result": task.id, "properties": {}})

    def mj_fetch(self, rec: ReceivedRequest, b: MockBehaviour) -> Reply:
        """GET /mj/task/{id}/fetch."""
        task, now = self._find(rec.path, "mj")
        out: dict[str, Any] = {
            "id": task.id,
            "action": "IMAGINE",
            "prompt": task.prompt,
            "status": "NOT_START" if now is task.script[0] else _MJ_STATUS[now.status],
            "progress": f"{now.progress}%",
            "failReason": _FAILURE if now.status == "failed" else "",
            "imageUrl": f"https://mock.weir.invalid/mj/{task.id}.png" if now.status == "completed" else "",
            "submitTime": task.created_at * 1000,
        }
        if now.status == "completed" and task.usage:
            out["usage"] = task.usage
        return _json(out)

    # ---- Suno style -------------------------------------------------------------------------

    def suno_submit(self, rec: ReceivedRequest, b: MockBehaviour) -> Reply:
        """POST /suno/submit/music: `{"code": "success", "data": id}` (or code "error")."""
        body = _json_body(rec)
        try:
            task = self._new("suno", str(body.get("mv") or "chirp-v3-5"), str(body.get("prompt") or ""))
        except _Refused as exc:
            return _json({"code": "error", "message": str(exc), "data": None})
        return _json({"code": "success", "message": "", "data": task.id})

    def suno_fetch(self, rec: ReceivedRequest, b: MockBehaviour) -> Reply:
        """GET /suno/fetch/{id}."""
        task, now = self._find(rec.path, "suno")
        data: dict[str, Any] = {
            "task_id": task.id,
            "action": "MUSIC",
            "status": _MJ_STATUS[now.status],
            "progress": f"{now.progress}%",
            "fail_reason": _FAILURE if now.status == "failed" else "",
            "submit_time": task.created_at,
            "data": [],
        }
        if now.status == "completed":
            data["data"] = [{"id": task.id + "-0", "audio_url": f"https://mock.weir.invalid/suno/{task.id}.mp3"}]
            if task.usage:
                data["usage"] = task.usage
        return _json({"code": "success", "message": "", "data": data})

    def routes(self) -> Iterator[tuple[str, str, Callable[[ReceivedRequest, MockBehaviour], Reply]]]:
        """(method, path, answer) of every task route the mock serves."""
        yield "POST", "/v1/videos", self.create_video
        yield "GET", "/v1/videos/{id}", self.video
        yield "DELETE", "/v1/videos/{id}", self.video
        yield "GET", "/v1/videos/{id}/content", self.video_content
        yield "POST", "/mj/submit/imagine", self.mj_submit
        yield "GET", "/mj/task/{id}/fetch", self.mj_fetch
        yield "POST", "/suno/submit/music", self.suno_submit
        yield "GET", "/suno/fetch/{id}", self.suno_fetch


class _Refused(Exception):
    """The book refuses submits (`TaskBook.refuse`)."""


def _json(payload: Any) -> Reply:
    return Reply(orjson.dumps(payload))


def _json_body(rec: ReceivedRequest) -> dict[str, Any]:
    if not isinstance(rec.json, dict):
        raise BadRequest("The request body must be a JSON object.")
    return rec.json


def _fields(rec: ReceivedRequest) -> dict[str, str]:
    """A JSON body's string-able fields, or a multipart/form-data body's text fields."""
    ctype = rec.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        return {k: str(v) for k, v in _json_body(rec).items() if v is not None}
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + rec.body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes) and part.get_filename() is None:
            fields[name] = payload.decode("utf-8", "replace")
    return fields
