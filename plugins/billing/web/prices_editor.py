"""`/admin/prices`: the price editor (seed 004), server-rendered, without script.

`GET` shows the current version. Every change is a `POST` of the one editor form, which
carries the draft (the models block being edited, as JSON), the version it is based on,
and the action of the button pressed: edit a model (per token or per request: the other
mode's fields are cleared), add, remove, adopt the reference price (one model, the
selected ones, or every model now priced by reference), edit the whole block as JSON,
import a new-api/one-api ratio export, start a rollback to an old version, or save. Each
step answers the same page with the draft: its diff against the current version and its
conflicts, before anything is saved. A save asks for confirmation while there are
conflicts, is impossible while a model is priced both ways, and is refused when someone
saved first (the draft stays on the page, now compared with the newer version).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from plugins.billing.prices import editing
from plugins.billing.prices.service import PriceDesk
from plugins.billing.ratios import convert_ratios
from plugins.billing.store.base import PriceConflict
from proxy.host import ConfigError
from proxy.web import checked_form, render, require_admin

__all__ = ["prices_editor_routes"]

_SOURCES = {"editor", "rollback", "import"}


class _Step:
    """One POST: the draft it carried, and what the page says about it."""

    def __init__(self, form: MultiDictProxy[str], desk: PriceDesk) -> None:
        self.form = form
        self.desk = desk
        self.notices: list[tuple[str, str]] = []
        origin = form.get("origin", "editor")
        self.origin = origin if origin in _SOURCES else "editor"
        self.note = form.get("note", "")[:500]
        try:
            self.base = int(form.get("base", "0"))
            self.draft = editing.load(form.get("draft", "{}"))
        except ValueError as exc:
            self.base = desk.book.current.number
            self.draft = editing.load(desk.book.current.models)
            self.notices.append(("bad", f"The editor's form was damaged ({exc}); it was reset to the current prices."))

    def fields(self, prefix: str) -> dict[str, str]:
        """The price inputs named `<prefix>:<field>`."""
        return {f: self.form.get(f"{prefix}:{f}", "") for f in (*editing.TOKEN_FIELDS, "per_request")}

    def mode(self, prefix: str) -> Any:
        return "request" if self.form.get(f"{prefix}:mode") == "request" else "tokens"


def _reference(desk: PriceDesk, model: str) -> Any:
    found = desk.reference.lookup(model)
    return None if found is None else found[0]


def _act(step: _Step, action: str, target: str) -> None:
    """Apply one editing action to `step.draft` (notices say what happened)."""
    d, desk = step.draft, step.desk
    if action == "edit":
        step.draft = editing.edit(d, target, step.mode(f"e:{target}"), step.fields(f"e:{target}"))
    elif action == "add":
        step.draft = editing.edit(d, step.form.get("new:model", ""), step.mode("new"), step.fields("new"))
    elif action == "remove":
        step.draft = editing.remove(d, target)
    elif action == "adopt":
        ref = _reference(desk, target)
        if ref is None:
            raise ValueError(f"{target} has no reference price")
        step.draft = editing.adopt(d, target, ref)
    elif action in ("adopt_selected", "adopt_reference"):
        names = (
            step.form.getall("pick", [])
            if action == "adopt_selected"
            else [r["model"] for r in desk.rows_for(d) if r["source"] == "reference" and not r["pattern"]]
        )
        adopted = [n for n in names if _reference(desk, n) is not None]
        for name in adopted:
            step.draft = editing.adopt(step.draft, name, _reference(desk, name))
        step.notices.append(
            (
                "good",
                f"Reference prices adopted for {len(adopted)} models."
                if adopted
                else "No selected model has a reference price.",
            )
        )
    elif action == "replace":
        step.draft = editing.load(step.form.get("json", "{}"))
    elif action == "import":
        _import(step)
    elif action == "rollback":
        step.origin, step.note = "rollback", f"rollback to version {target}"
    elif action != "review":
        raise ValueError(f"unknown action {action!r}")


def _import(step: _Step) -> None:
    try:
        export = json.loads(step.form.get("export", ""), parse_float=Decimal)
        result = convert_ratios(export, step.desk.book.config.quota_per_usd)
    except ValueError as exc:
        raise ValueError(f"the ratio export could not be read: {exc}") from None
    imported = editing.load(result.config["pricing"]["models"])
    step.draft = {**step.draft, **imported}
    step.origin = "import"
    step.notices.append(("good", f"Imported {len(imported)} models from the ratio export; review and save."))
    step.notices += [("warn", w) for w in result.warnings]


async def _save(request: web.Request, step: _Step) -> web.StreamResponse | None:
    """Save the draft, or say why not (None: render the page with the reason)."""
    conflicts = step.desk.conflicts_of(step.draft)
    if any(c.blocking for c in conflicts):
        step.notices.append(("bad", "Not saved: a model is priced both per token and per request. Choose one."))
        return None
    if conflicts and step.form.get("confirm") != "yes":
        step.notices.append(("warn", "Not saved: confirm the conflicts below first."))
        return None
    try:
        saved = await step.desk.save(step.base, step.draft, step.origin, step.note)
    except ConfigError as exc:
        step.notices.append(("bad", f"Not saved: {exc}"))
        return None
    if isinstance(saved, PriceConflict):
        step.notices.append(
            (
                "bad",
                f"Not saved: version {saved.head} was saved meanwhile. Your draft is below, now "
                f"compared with version {saved.head}; check the changes and save again.",
            )
        )
        step.base = saved.head
        return None
    raise web.HTTPSeeOther(f"/admin/prices?saved={saved.number}")


async def _page(
    request: web.Request,
    desk: PriceDesk,
    draft: Mapping[str, Mapping[str, str]],
    base: int,
    origin: str,
    note: str,
    notices: list[tuple[str, str]],
) -> web.StreamResponse:
    cur = desk.book.current
    preview = desk.preview(draft)
    history = [
        {
            "number": v.number,
            "source": v.source,
            "note": v.note,
            "digest": v.digest,
            "when": datetime.fromtimestamp(v.created_at, UTC).strftime("%Y-%m-%d %H:%M UTC"),
        }
        for v in await desk.store().list_price_versions(50)
    ]
    context = {
        "title": "Prices",
        "area": "admin",
        "cur": cur,
        "base": base,
        "origin": origin,
        "note": note,
        "draft_json": editing.dumps({k: dict(v) for k, v in draft.items()}),
        "draft_pretty": json.dumps(draft, indent=2, sort_keys=True, ensure_ascii=False),
        "pending": dict(draft) != cur.models or base != cur.number,
        "preview": preview,
        "rows": desk.rows_for(draft),
        "reference": desk.reference_info(),
        "notices": notices,
        "history": history,
        "token_fields": editing.TOKEN_FIELDS,
        "blocking": any(c["blocking"] for c in preview["conflicts"]),
    }
    return render(request, "pricing/editor.html", context)


def prices_editor_routes(desk: Callable[[], PriceDesk], poll_every: float) -> list[web.RouteDef]:
    """`GET` and `POST /admin/prices` (`poll_every`: how soon other instances charge a save)."""

    async def show(request: web.Request) -> web.StreamResponse:
        require_admin(request)
        d = desk()
        notices: list[tuple[str, str]] = []
        saved = request.query.get("saved", "")
        if saved.isdigit():
            notices.append(
                (
                    "good",
                    f"Saved as price version {saved}. Every instance charges it within "
                    f"{poll_every:g} s; this one does already.",
                )
            )
        cur = d.book.current
        return await _page(request, d, cur.models, cur.number, "editor", "", notices)

    async def post(request: web.Request) -> web.StreamResponse:
        require_admin(request)
        form = await checked_form(request)
        d = desk()
        step = _Step(form, d)
        action, _, target = form.get("action", "review").partition(":")
        if action == "rollback" and target.isdigit():
            version = await d.store().get_price_version(int(target))
            if version is not None:
                step.draft = editing.load(version.document)
        try:
            if action == "save":
                done = await _save(request, step)
                if done is not None:
                    return done
            else:
                _act(step, action, target)
        except ValueError as exc:
            step.notices.append(("bad", str(exc)))
        return await _page(request, d, step.draft, step.base, step.origin, step.note, step.notices)

    return [web.get("/admin/prices", show), web.post("/admin/prices", post)]
