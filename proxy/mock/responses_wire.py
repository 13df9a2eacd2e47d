"""Wire bytes of the mock upstream's OpenAI Responses API (`/v1/responses`), in its real
format: a `response` object, or its event sequence with `event:` lines and sequence numbers.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.mock.text import CREATED, Plan, UsagePolicy, responses_usage, shaped
from proxy.mock.wire import Reply, Stream, named_frame


def _response(plan: Plan, status: str, output: list[Any], usage: Any, max_out: int | None) -> dict[str, Any]:
    return {
        "id": "resp_" + plan.rid,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": None,
        "max_output_tokens": max_out,
        "model": plan.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _message_item(plan: Plan, done: bool) -> dict[str, Any]:
    content = [{"type": "output_text", "text": plan.text, "annotations": [], "logprobs": []}]
    return {
        "id": "msg_" + plan.rid,
        "type": "message",
        "status": "completed" if done else "in_progress",
        "role": "assistant",
        "content": content if done else [],
    }


def _final_status(plan: Plan) -> str:
    return "incomplete" if plan.capped or plan.model.startswith("mock-incomplete") else "completed"


def responses_reply(plan: Plan, policy: UsagePolicy, max_out: int | None) -> Reply:
    """A `response` object; `incomplete` when capped or for `mock-incomplete*` models."""
    usage = shaped(responses_usage(plan), policy)
    return Reply(orjson.dumps(_response(plan, _final_status(plan), [_message_item(plan, True)], usage, max_out)))


def responses_stream(plan: Plan, policy: UsagePolicy, max_out: int | None) -> Stream:
    """The Responses event sequence, each frame with an `event:` line and a sequence number."""
    item_id = "msg_" + plan.rid
    seq = iter(range(1_000_000))
    frames = [
        named_frame(
            "response.created",
            {
                "type": "response.created",
                "sequence_number": next(seq),
                "response": _response(plan, "in_progress", [], None, max_out),
            },
        ),
        named_frame(
            "response.in_progress",
            {
                "type": "response.in_progress",
                "sequence_number": next(seq),
                "response": _response(plan, "in_progress", [], None, max_out),
            },
        ),
        named_frame(
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "sequence_number": next(seq),
                "output_index": 0,
                "item": _message_item(plan, False),
            },
        ),
    ]
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    frames.append(
        named_frame(
            "response.content_part.added",
            {"type": "response.content_part.added", "sequence_number": next(seq), **where, "part": empty},
        )
    )
    delta = b'"item_id":"%s","output_index":0,"content_index":0,"delta":' % item_id.encode()
    for piece in plan.pieces:
        frames.append(
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"sequence_number":%d,%s%s,"logprobs":[]}\n\n' % (next(seq), delta, orjson.dumps(piece))
        )
    content_end = len(frames)
    full = {**empty, "text": plan.text}
    status = _final_status(plan)
    usage = shaped(responses_usage(plan), policy)
    final = _response(plan, status, [_message_item(plan, True)], usage, max_out)
    for kind, extra in (
        ("response.output_text.done", {**where, "text": plan.text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": full}),
        ("response.output_item.done", {"output_index": 0, "item": _message_item(plan, True)}),
        ("response." + status, {"response": final}),
    ):
        frames.append(named_frame(kind, {"type": kind, "sequence_number": next(seq), **extra}))
    error = named_frame(
        "error",
        {
            "type": "error",
            "code": "server_error",
            "sequence_number": content_end,
            "message": "The server had an error while processing your request.",
            "param": None,
        },
    )
    return Stream(tuple(frames), content_end, error)
