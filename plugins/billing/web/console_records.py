"""Console pages over records: the consume log (filters, paging, CSV), upstream health and
the audit. Read-only: nothing here moves money."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from aiohttp import web

from plugins.billing.store.base import StoreError
from plugins.billing.web import admin_ops as ops
from plugins.billing.web.common import BadInput, BillingWeb, parse_int
from plugins.billing.web.consoleutil import binder
from plugins.billing.web.logsearch import OUTCOMES, LogQuery, query_from
from plugins.billing.web.records import audit_json, upstreams_json
from proxy.host import host_of
from proxy.web import render, require_admin

#: The most rows one CSV export holds.
CSV_CAP = 100_000
CSV_PAGE = 1000  # rows read from the store at a time
PAGE_ROWS = 50


def csv_cell(value: Any) -> str:
    """A value for a CSV cell; text that a spreadsheet would run as a formula (=, +, -, @,
    tab, CR) is prefixed with a quote, so an exported hostile name stays text."""
    text = "" if value is None else str(value)
    if text and text[0] in "=+-@\t\r" and not _number(text):
        return "'" + text
    return text


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


async def write_csv(request: web.Request, web_: BillingWeb, query: LogQuery) -> web.StreamResponse:
    """Stream the matching log rows as CSV (newest first, at most CSV_CAP).

    The first page is read before anything is sent, so a store failure then is the route's
    error answer. A failure after that cuts the connection: the client sees a download that
    did not finish (no final chunk), never a CSV that looks whole but lacks rows."""
    page = await ops.logs(web_, query, min(CSV_PAGE, CSV_CAP), None, totals=False)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="weir-logs-{time.strftime("%Y%m%d-%H%M%S", time.gmtime())}.csv"',
        }
    )
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header: list[str] | None = None
    sent = 0
    while True:
        for data in page["logs"]:
            if header is None:
                header = list(data)
                writer.writerow(header)
            writer.writerow([csv_cell(data.get(name)) for name in header])
        sent += len(page["logs"])
        await response.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
        if page["next_before"] is None or sent >= CSV_CAP:
            break
        try:
            page = await ops.logs(web_, query, min(CSV_PAGE, CSV_CAP - sent), page["next_before"], totals=False)
        except StoreError:
            response.force_close()
            if request.transport is not None:
                request.transport.abort()
            return response
    if header is None:
        writer.writerow(["no rows matched"])
    await response.write(buffer.getvalue().encode())
    await response.write_eof()
    return response


async def logs_page(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """`/admin/logs`: the consume log with filters and paging."""
    require_admin(request)
    params = dict(request.query)
    problem, rows, next_before, totals = "", [], None, None
    try:
        query = query_from(params)
        before = parse_int(params.get("before"), "before", 1, 2**62)
        page = await ops.logs(web_, query, PAGE_ROWS, before)
        rows, next_before, totals = page["logs"], page["next_before"], page["totals"]
    except BadInput as exc:
        problem = exc.message
    keep = {k: v for k, v in params.items() if k != "before" and v}
    context = {
        "title": "Logs",
        "area": "admin",
        "rows": rows,
        "filters": params,
        "keep": keep,
        "outcomes": OUTCOMES,
        "next_before": next_before,
        "totals": totals,
        "problem": problem,
        "usd": web_.show_usd,
        "show_user": True,
        "paged": "before" in params,
    }
    return render(request, "billing/admin_logs.html", context)


async def logs_csv(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """`/admin/logs.csv`: the same filters, every matching row, as CSV."""
    require_admin(request)
    try:
        query = query_from(dict(request.query))
    except BadInput as exc:
        raise web.HTTPBadRequest(text=exc.message) from None
    return await write_csv(request, web_, query)


async def upstreams_page(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """`/admin/upstreams`: each upstream's health and what it has been used for."""
    require_admin(request)
    data = await upstreams_json(host_of(request.app), web_)
    return render(
        request,
        "billing/admin_upstreams.html",
        {"title": "Upstreams", "area": "admin", "upstreams": data["upstreams"], "usd": web_.show_usd},
    )


async def audit_page(request: web.Request, web_: BillingWeb) -> web.StreamResponse:
    """`/admin/audit`: every balance against the ledger, orphaned and stuck holds."""
    require_admin(request)
    report = await audit_json(host_of(request.app), web_)
    return render(request, "billing/admin_audit.html", {"title": "Audit", "area": "admin", "report": report})


def routes(web_: BillingWeb) -> list[web.RouteDef]:
    """The record pages of the console."""
    bind = binder(web_)
    return [
        web.get("/admin/logs", bind(logs_page)),
        web.get("/admin/logs.csv", bind(logs_csv)),
        web.get("/admin/upstreams", bind(upstreams_page)),
        web.get("/admin/audit", bind(audit_page)),
    ]
