"""The console's record pages over HTTP: the log with filters, paging and CSV; upstream
health; the audit. Each needs the admin session."""

from __future__ import annotations

import csv
import io
import re

from tests.web.conftest import ConsoleFactory, admin_client, browser_session


async def test_record_pages_need_the_admin(console: ConsoleFactory) -> None:
    c = await console()
    async with browser_session() as s:
        for path in ("/admin/logs", "/admin/logs.csv", "/admin/upstreams", "/admin/audit"):
            async with s.get(c.url + path, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"].startswith("/admin/login?next="), path
    plain = await console(admin=False)
    async with browser_session() as s:
        async with s.get(plain.url + "/admin/logs", allow_redirects=False) as r:
            assert r.status == 404


async def test_logs_filter_page_and_export(console: ConsoleFactory) -> None:
    c = await console()
    alice, bob = await c.user("alice"), await c.user('=HYPERLINK("x")')
    assert await c.chat(alice) == 200
    assert await c.chat(alice, model="mock-claude") == 200
    assert await c.chat(bob) == 200
    c.upstream.behaviour.fail_status = 500
    c.upstream.behaviour.fail_times = 1
    assert await c.chat(alice) == 500
    c.upstream.behaviour.fail_status = 0
    s = await admin_client(c.url)
    async with s:
        async with s.get(c.url + "/admin/logs") as r:
            html = await r.text()
        assert html.count("<tr>") == 5  # a header and four requests
        async with s.get(c.url + "/admin/logs", params={"user": "alice", "model": "mock-c*"}) as r:
            html = await r.text()
        assert html.count("<tr>") == 2 and "mock-claude" in html
        async with s.get(c.url + "/admin/logs", params={"outcome": "upstream_error"}) as r:
            html = await r.text()
        assert html.count("<tr>") == 2 and "upstream_error" in html
        key_id = (await c.store.list_keys("alice"))[0].id
        async with s.get(c.url + "/admin/logs", params={"key": key_id}) as r:
            assert (await r.text()).count("<tr>") == 4
        async with s.get(c.url + "/admin/logs", params={"since": "not a time"}) as r:
            assert "is not an ISO 8601 time" in await r.text()
        async with s.get(c.url + "/admin/logs.csv") as r:
            assert r.status == 200 and r.content_type == "text/csv"
            rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert len(rows) == 4
    assert {row["user"] for row in rows} == {"alice", '\'=HYPERLINK("x")'}  # no formula in a spreadsheet
    assert {row["end_reason"] for row in rows} == {"completed", "upstream_error"}


async def test_logs_page_through_older_rows(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice")
    for _ in range(3):
        assert await c.chat(key) == 200
    from plugins.billing.web import console_records

    console_records.PAGE_ROWS, saved = 2, console_records.PAGE_ROWS
    try:
        s = await admin_client(c.url)
        async with s:
            async with s.get(c.url + "/admin/logs") as r:
                html = await r.text()
            older = re.search(r'href="(/admin/logs\?before=\d+)"', html)
            assert html.count("<tr>") == 3 and older
            async with s.get(c.url + older.group(1)) as r:
                html = await r.text()
            assert html.count("<tr>") == 2 and "← Newest" in html
    finally:
        console_records.PAGE_ROWS = saved


async def test_upstreams_and_audit(console: ConsoleFactory) -> None:
    c = await console()
    key = await c.user("alice")
    assert await c.chat(key) == 200
    s = await admin_client(c.url)
    async with s:
        async with s.get(c.url + "/admin/upstreams") as r:
            html = await r.text()
        assert "fake" in html and "healthy" in html and "0 / 1" in html
        async with s.get(c.url + "/admin/audit") as r:
            html = await r.text()
        assert "The ledger is clean" in html
