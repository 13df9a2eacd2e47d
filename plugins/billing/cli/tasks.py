"""`weir tasks list|show|settle`: async tasks, and ending a stuck one by hand (docs/tasks.md).

A task ends by itself when its upstream says so, after two 404s in a row, or after
`tasks.max_age`. An operator who knows better (an upstream that lost the task but still
answers, a dispute settled outside Weir) ends it with `weir tasks settle ID --capture` (the
price that was held) or `--release` (a full refund), and a note. It is the same
compare-and-set as every other end: a task that has ended is left as it is, and the log row
says `resolved_by_hand` with the note.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from plugins.billing.accounts.holds import ago
from plugins.billing.accounts.values import Money, iso, money_of
from plugins.billing.cli.accounts import now, table, with_store
from plugins.billing.store.base import Store
from plugins.billing.store.rules import HAND_RESOLVED
from plugins.billing.store.tasks import Task, TaskEnd, TaskState
from plugins.billing.tasks.engine import task_details
from plugins.billing.tasks.terms import TaskTerms
from proxy.cli_frame import CLIError, emit
from proxy.host import Config

MAX_NOTE = 500
STATES = ("open", "ended")


def task_json(task: Task, money: Money, at: float) -> dict[str, Any]:
    """A task as wire JSON, with its money in quota units and USD."""
    return {
        "id": task.id,
        "user": task.user,
        "key_id": task.key_id,
        "key_name": task.key_name,
        "api": task.api,
        "model": task.model,
        "upstream": task.upstream,
        "upstream_model": task.upstream_model,
        "upstream_id": task.upstream_id,
        "seconds": task.seconds,
        "group": task.group,
        "state": task.state.value,
        "status": task.status,
        "progress": task.progress,
        "held": task.amount,
        "held_usd": money.usd(task.amount),
        "charge": task.charge,
        "charge_usd": None if task.charge is None else money.usd(task.charge),
        "end_reason": task.end_reason or None,
        "note": task.note or None,
        "created_at": iso(task.created_at),
        "age_s": round(at - task.created_at, 3),
        "ended_at": iso(task.ended_at),
        "polls": task.polls,
        "misses": task.misses,
        "failures": task.failures,
        "next_poll_at": iso(task.next_poll_at) if task.open else None,
        "terms": json.loads(TaskTerms.from_json(task.terms).to_json()),
    }


def _matches(task: Task, status: str | None) -> bool:
    return status is None or status in (task.state.value, task.status, task.end_reason)


def _list(args: argparse.Namespace, config: Config) -> int:
    if not 1 <= args.limit <= 10_000:
        raise CLIError("--limit must be between 1 and 10000")
    money, at = money_of(config), now()
    state = TaskState(args.status) if args.status in STATES else None

    async def work(store: Store) -> list[Task]:
        if args.user is not None and await store.get_user(args.user) is None:
            raise CLIError(f"unknown user {args.user!r}")
        found = await store.list_tasks(
            user=args.user, state=state, limit=args.limit if state or not args.status else 10_000
        )
        return [t for t in found if _matches(t, args.status)][: args.limit]

    tasks = with_store(config, work)
    data = [task_json(t, money, at) for t in tasks]
    rows = [["TASK", "USER", "MODEL", "SECONDS", "STATUS", "END", "HELD", "CHARGE", "AGE"]] if data else []
    rows += [
        [
            t.id,
            t.user,
            t.model,
            str(t.seconds),
            f"{t.status} {t.progress}%" if t.open else t.status,
            t.end_reason or "-",
            str(t.amount),
            "-" if t.charge is None else str(t.charge),
            ago(at - t.created_at),
        ]
        for t in tasks
    ]
    emit(args, data, table(rows, "no tasks"))
    return 0


def _show(args: argparse.Namespace, config: Config) -> int:
    money, at = money_of(config), now()
    task = with_store(config, lambda store: store.get_task(args.task_id))
    if task is None:
        raise CLIError(f"unknown task {args.task_id!r}")
    data = task_json(task, money, at)
    lines = [f"{k:15} {v}" for k, v in data.items() if v is not None]
    emit(args, data, "\n".join(lines))
    return 0


def _check_note(note: str) -> str:
    note = note.strip()
    if not note:
        raise CLIError("--note must say why the task is settled by hand")
    if len(note) > MAX_NOTE or any(ord(c) < 32 for c in note):
        raise CLIError(f"--note must be one line of at most {MAX_NOTE} characters")
    return note


async def _settle_one(store: Store, task_id: str, capture: bool, note: str) -> tuple[Task, TaskEnd]:
    task = await store.get_task(task_id)
    if task is None:
        raise CLIError(f"unknown task {task_id!r}")
    details = task_details(task, HAND_RESOLVED, "task" if capture else "none", note, now())
    charge = task.amount if capture else None
    return task, await store.end_task(task_id, charge, details, task.status, HAND_RESOLVED, note)


def _settle(args: argparse.Namespace, config: Config) -> int:
    note, money = _check_note(args.note), money_of(config)
    task, end = with_store(config, lambda store: _settle_one(store, args.task_id, args.capture, note))
    data = {
        "id": task.id,
        "user": task.user,
        "settled_now": end.first,
        "already_ended": not end.first,
        "end_reason": end.task.end_reason,
        "state": end.resolution.state.value,
        "charged": end.resolution.charged,
        "charged_usd": money.usd(end.resolution.charged),
        "held": task.amount,
        "note": end.task.note or None,
    }
    if not end.first:
        text = (
            f"task {task.id} had already ended ({end.task.end_reason}, charged {end.resolution.charged}): nothing done"
        )
    elif args.capture:
        text = f"settled task {task.id} (user {task.user}) by hand: charged {end.resolution.charged}; note: {note}"
    else:
        text = f"settled task {task.id} (user {task.user}) by hand: released all {task.amount} held; note: {note}"
    emit(args, data, text)
    return 0


def register(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    """Add `weir tasks list|show|settle`."""
    text = "async tasks (videos, images, music): list them, show one, settle a stuck one by hand"
    group = sub.add_parser("tasks", help=text, description=text)
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    lister = actions.add_parser("list", parents=[common], help="tasks, newest first")
    lister.add_argument("--user", help="only this user's tasks")
    lister.add_argument(
        "--status",
        help="open, ended, or a status or end reason (queued, in_progress,"
        " completed, failed, deleted, unknown, expired, ...)",
    )
    lister.add_argument("--limit", type=int, default=50, help="tasks to show (default 50)")
    commands["tasks list"] = _list
    show = actions.add_parser("show", parents=[common], help="one task: its state, money, terms and polls")
    show.add_argument("task_id", metavar="ID")
    commands["tasks show"] = _show
    settle = actions.add_parser(
        "settle", parents=[common], help="end an open task by hand: charge what was held, or release it all"
    )
    settle.add_argument("task_id", metavar="ID")
    how = settle.add_mutually_exclusive_group(required=True)
    how.add_argument("--capture", action="store_true", help="charge the price that was held")
    how.add_argument("--release", action="store_true", help="charge nothing: a full refund")
    settle.add_argument("--note", required=True, help="why (kept in the task, its log row and the ledger entry)")
    commands["tasks settle"] = _settle
